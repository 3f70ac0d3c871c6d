"""ShareRunDir under a multi-process launch: every rank reports what it was told.

usage: run_dir_ddp.py STRATEGY   (ddp | ddp_spawn | torchrun)
"""

from __future__ import annotations

import os
import sys

from _report import report
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks import ShareRunDir
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule


class Report(Callback):
    """Reports at fit end, on every rank, what ShareRunDir and ModelCheckpoint hold."""

    def __init__(self, share: ShareRunDir, ckpt: ModelCheckpoint, user_dir_ckpt: ModelCheckpoint) -> None:
        self.share, self.ckpt, self.user_dir_ckpt = share, ckpt, user_dir_ckpt

    def on_fit_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        import wandb

        report(
            trainer.global_rank,
            world_size=trainer.world_size,
            run_dir=str(self.share.run_dir),
            files_dir=str(self.share.files_dir),
            run_id=self.share.run_id,
            run_name=self.share.run_name,
            wandb_dir_env=os.environ.get("WANDB_DIR"),
            ckpt_dirpath=self.ckpt.dirpath,
            best_model_path=self.ckpt.best_model_path,
            user_dir_ckpt_dirpath=self.user_dir_ckpt.dirpath,
            has_wandb_run=wandb.run is not None,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


class UseSharedDir(Callback):
    """User code that builds a ModelCheckpoint dirpath from the shared run folder on every rank."""

    def __init__(self, share: ShareRunDir, ckpt: ModelCheckpoint) -> None:
        self.share, self.ckpt = share, ckpt

    def setup(self, trainer, pl_module, stage):  # type: ignore[no-untyped-def]
        self.ckpt.dirpath = str(self.share.run_dir / "user-checkpoints")


def main() -> None:
    strategy = sys.argv[1]
    share = ShareRunDir(checkpoints_in_run_dir=True)
    ckpt = ModelCheckpoint(monitor="val_acc", mode="max")  # no dirpath: goes into the run folder
    # The recipe that used to hang DDP: a dirpath built from the run's folder on every rank.
    user_dir_ckpt = ModelCheckpoint(filename="user-{epoch}", save_last=False)
    callbacks = [share, UseSharedDir(share, user_dir_ckpt), ckpt, user_dir_ckpt, Report(share, ckpt, user_dir_ckpt)]
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp" if strategy == "torchrun" else strategy,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=WandbLogger(project="lw-tests", save_dir="runs"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))


if __name__ == "__main__":
    main()
