"""An FSDP fit (Lightning's FSDP needs CUDA) whose validation_step returns no predictions.

Running the module's forward on rank 0 alone would wait for the other rank's parameter shards;
LogPredictionSamples must refuse at the first (sanity-check) batch, on every rank, instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.predictions import LogPredictionSamples


class NoPredictions(DigitsClassifier):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")


if __name__ == "__main__":
    os.makedirs("runs", exist_ok=True)
    torch.manual_seed(0)
    trainer = Trainer(
        logger=WandbLogger(project="lw-tests", save_dir="runs"),
        callbacks=[LogPredictionSamples(num_samples=4)],
        strategy="fsdp",
        accelerator="gpu",
        devices=min(2, torch.cuda.device_count()),
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir="lightning",
    )
    trainer.fit(NoPredictions(), datamodule=DigitsDataModule(batch_size=16))
