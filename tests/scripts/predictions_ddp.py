"""Two-process DDP fit with LogPredictionSamples: one run, rank 0's samples logged once per epoch, no hang."""

from __future__ import annotations

import os

from _report import report
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.predictions import LogPredictionSamples

if __name__ == "__main__":
    os.makedirs("runs", exist_ok=True)
    callback = LogPredictionSamples(num_samples=6)
    trainer = Trainer(
        logger=WandbLogger(project="lw-tests", save_dir="runs"),
        callbacks=[callback],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=3,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir="lightning",
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=16))
    state = callback._core.states["validation"]
    report(
        trainer.global_rank,
        global_step=trainer.global_step,
        positions=state.positions,
        ids=[state.ids[p] for p in state.positions or []],
        world_size=trainer.world_size,
    )
