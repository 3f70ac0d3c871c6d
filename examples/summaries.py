"""Keep the best (not the last) value of chosen metrics in the W&B runs table, and when it happened.

Runs offline by default (no account needed) on scikit-learn's digits; pass ``--online`` to log to
W&B. ``--fast`` (or ``LW_EXAMPLE_FAST=1``) trains for a few batches only.

    python examples/summaries.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
import os

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import read_run
from lw_callbacks.summaries import MetricSummaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 8)

    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    trainer = Trainer(
        logger=logger,
        callbacks=[
            # Its monitor alone gives val_acc a "max" summary (and val_acc.best_step / .best_epoch).
            ModelCheckpoint(monitor="val_acc", mode="max"),
            MetricSummaries({"val_loss": "min", "train_*": "mean", "train_loss": ["min", "last"]}),
        ],
        max_epochs=epochs,
        limit_train_batches=5 if args.fast else None,
        limit_val_batches=3 if args.fast else None,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=64))
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"run summary of {run_dir}:")
    for key in sorted(records.summary):
        if not key.startswith("_") and (key.startswith(("val_", "train_"))):
            print(f"  {key}: {records.summary[key]}")


if __name__ == "__main__":
    main()
