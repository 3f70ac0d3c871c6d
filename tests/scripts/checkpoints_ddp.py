"""UploadCheckpoints under 2-process DDP on CPU: one upload per file, restore on every rank, no hang.

Usage: python checkpoints_ddp.py SAVE_DIR
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys

from _report import report


def md5(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(hashlib.md5(fh.read()).digest()).decode()


def main(save_dir: str) -> None:
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
    from lw_callbacks.records import find_runs, read_run

    mc = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=-1, filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = Trainer(
        logger=WandbLogger(save_dir=save_dir, project="lw-tests"),
        callbacks=[upload, mc],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=os.path.join(save_dir, "lightning"),
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    rank = trainer.global_rank
    name = upload.collection_names[0]
    # Every rank asks for the best checkpoint: rank 0 from its live run, rank 1 by finding the run
    # under WANDB_DIR / the working directory. No collective is involved.
    restored = restore_checkpoint(f"{name}:best", root=os.path.join(save_dir, "restored"))
    data: dict = {
        "names": upload.collection_names,
        "restored": str(restored),
        "restored_md5": md5(str(restored)),
        "best_model_path": os.path.realpath(mc.best_model_path),
        "uploader_alive": upload.publisher.uploader is not None,
    }
    if rank == 0:
        data["files"] = {os.path.realpath(p): md5(p) for p in mc.best_k_models}
        wandb.finish()
        records = read_run(find_runs(save_dir)[0])
        data["versions"] = [
            {"name": v.name, "aliases": v.aliases, "digest": v.entries[0].digest,
             "original_path": v.metadata["original_path"], "score": v.metadata["score"]}
            for v in records.artifacts(type="model")
        ]
        data["artifact_records"] = len(records.artifact_log)
    report(rank, **data)


if __name__ == "__main__":
    main(sys.argv[1])
