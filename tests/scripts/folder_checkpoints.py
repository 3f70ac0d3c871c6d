"""Checkpoints that are folders, as sharded strategies save them (FSDP ``state_dict_type="sharded"``,
DeepSpeed, ``torch.distributed.checkpoint``), reproduced on CPU: a ``CheckpointIO`` that writes a folder
per checkpoint, each rank its own shard, and a DDP strategy that saves on every rank.

Usage: python folder_checkpoints.py SAVE_DIR   (2-process DDP: fit, restore the best folder, resume from it)
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class FolderCheckpointIO(TorchCheckpointIO):
    """Writes ``<path>/shard-<rank>.pt`` (this rank's share of the weights) on every rank, and
    ``<path>/meta.pt`` (everything else) on rank 0; loads them back into one checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        rank, world = _rank_and_world()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        weights = checkpoint["state_dict"]
        mine = {k: v for i, (k, v) in enumerate(sorted(weights.items())) if i % world == rank}
        torch.save({"world": world, "state_dict": mine}, folder / f"shard-{rank}.pt")
        if rank == 0:
            torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, folder / "meta.pt")

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        folder = Path(path)
        checkpoint = torch.load(folder / "meta.pt", map_location="cpu", weights_only=False)
        weights: dict[str, Any] = {}
        for shard in sorted(folder.glob("shard-*.pt")):
            weights.update(torch.load(shard, map_location="cpu", weights_only=False)["state_dict"])
        checkpoint["state_dict"] = weights
        return checkpoint


class ShardedDDP(DDPStrategy):
    """DDP whose checkpoints every rank writes (its shard), as sharded strategies do."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        filepath = self.broadcast(filepath)
        self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        self.barrier("ShardedDDP.save_checkpoint")


def md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def listing(folder: str | Path) -> dict[str, str]:
    """Relative path -> md5 of every file in a checkpoint folder."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def main(save_dir: str) -> None:
    import wandb
    from _report import report
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.checkpoints import UploadCheckpoints
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
    from lw_callbacks.records import find_runs, read_run

    def trainer_for(callbacks: list[Any], epochs: int, run_dir: str) -> Trainer:
        return Trainer(
            logger=WandbLogger(save_dir=run_dir, project="lw-tests"), callbacks=callbacks,
            strategy=ShardedDDP(), plugins=[FolderCheckpointIO()], accelerator="cpu", devices=2,
            max_epochs=epochs, limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=os.path.join(save_dir, "lightning"),
        )

    ckpts = os.path.join(save_dir, "ckpts")
    mc = ModelCheckpoint(dirpath=ckpts, monitor="val_acc", mode="max", save_top_k=-1, filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = trainer_for([upload, mc], 2, os.path.join(save_dir, "a"))
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    rank = trainer.global_rank
    restored = upload.restore("best", root=os.path.join(save_dir, f"restored-{rank}"))
    assert restored is not None
    data: dict[str, Any] = {
        "names": upload.collection_names,
        "best_model_path": mc.best_model_path,
        "restored": str(restored),
        "restored_files": listing(restored),
        "saved": {p: listing(p) for p in mc.best_k_models},
        "best_global_step": torch.load(Path(mc.best_model_path) / "meta.pt", weights_only=False)["global_step"],
    }
    if rank == 0:
        wandb.finish()
        records = read_run(find_runs(os.path.join(save_dir, "a"))[0])
        data["versions"] = [
            {"aliases": v.aliases, "digest": v.digest, "metadata": v.metadata,
             "entries": {e.path: e.digest for e in v.entries}}
            for v in records.artifacts(upload.collection_names[0], type="model")
        ]
    # Resume a new run from the restored folder: one more epoch, starting where that checkpoint ended.
    starts: list[int] = []

    class Start(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
            starts.append(trainer.global_step)

    resumed = trainer_for([Start()], 3, os.path.join(save_dir, "b"))
    resumed.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32), ckpt_path=str(restored))
    data["resumed_start"] = starts[0]
    data["resumed_end"] = resumed.global_step
    if rank == 0:
        wandb.finish()
    report(rank, **data)


if __name__ == "__main__":
    main(sys.argv[1])
