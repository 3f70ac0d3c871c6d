"""Disk kept by an offline run: checkpoints ModelCheckpoint keeps beside W&B's staged copies.

Run: ``python benchmarks/disk_cost.py [PAD_MB] [EPOCHS]``. For each ``save_top_k``, one offline fit of
the digits model padded to about PAD_MB per checkpoint, a checkpoint every epoch, then prints the MB
in the checkpoint folder, in W&B's staging folder (``$WANDB_DATA_DIR/artifacts/staging``, kept until
``wandb sync``) and in ours (``.upload-staging``, empty once the run finished).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main() -> None:
    pad_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    import torch
    import wandb
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks import UploadCheckpoints
    from lw_callbacks.core.publish import wait_for_cleanups
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    class Padded(DigitsClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("pad", torch.randn(pad_mb * 2**20 // 4))

        def on_train_epoch_start(self) -> None:
            self.pad.add_(1.0)  # every checkpoint's bytes differ, as real weights do

    print("| `save_top_k` | epochs | checkpoints kept | W&B staged copies (until `wandb sync`) | ratio |")
    print("|---|---|---|---|---|")
    for top_k in (2, -1):
        root = Path(tempfile.mkdtemp(prefix="lw-disk-"))
        os.environ["WANDB_DATA_DIR"] = str(root / "wandb-data")
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_SILENT"] = "true"
        seed_everything(0)
        mc = ModelCheckpoint(dirpath=root / "ckpts", monitor="val_loss", save_top_k=top_k, filename="{epoch}")
        trainer = Trainer(
            logger=WandbLogger(save_dir=str(root), project="disk"),
            callbacks=[mc, UploadCheckpoints(progress_bar=False)],
            max_epochs=epochs, limit_train_batches=4, limit_val_batches=2, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", default_root_dir=str(root),
        )
        trainer.fit(Padded(), datamodule=DigitsDataModule(batch_size=32))
        wandb.finish()
        wait_for_cleanups()
        kept = size_mb(root / "ckpts")
        staged = size_mb(root / "wandb-data" / "artifacts" / "staging")
        ours = size_mb(root / "ckpts" / ".upload-staging") if (root / "ckpts" / ".upload-staging").exists() else 0.0
        assert ours == 0.0, f"our staging folder still holds {ours} MB"
        label = "all" if top_k == -1 else str(top_k)
        print(f"| {label} | {epochs} | {kept:.0f} MB | {staged:.0f} MB | {staged / kept:.1f}x |")


if __name__ == "__main__":
    main()
