"""Watch the model's predictions on the same 16 validation digits evolve, epoch after epoch.

Logs captioned images (``Ground Truth: 3 - Prediction: 8``) and a W&B Table per epoch whose images
are uploaded once. The LightningModule is unchanged: its ``validation_step`` returns predicted
labels, as in the W&B guide. Runs offline by default (no account needed) on scikit-learn's digits;
pass ``--online`` to log to W&B. ``--fast`` (or ``LW_EXAMPLE_FAST=1``) trains for a few batches only.

    python examples/predictions.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
import os

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import CLASS_NAMES, DigitsClassifier, DigitsDataModule
from lw_callbacks.predictions import LogPredictionSamples
from lw_callbacks.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 6)

    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    trainer = Trainer(
        logger=logger,
        callbacks=[LogPredictionSamples(num_samples=16, class_names=CLASS_NAMES)],
        max_epochs=epochs,
        limit_train_batches=5 if args.fast else None,
        limit_val_batches=3 if args.fast else None,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=64))
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"predictions logged in {run_dir}:")
    for step, panel in records.series("predictions/images"):
        pairs = [c.removeprefix("Ground Truth: ").split(" - Prediction: ") for c in panel["captions"]]
        right = sum(truth == pred for truth, pred in pairs)
        print(f"  step {step}: {right}/{len(pairs)} right; first caption {panel['captions'][0]!r}")
    ids = [[row["id"] for row in table.rows] for table in records.tables("predictions/table")]
    print(f"  {len(ids)} prediction tables; the same sample ids every epoch: {all(i == ids[0] for i in ids)}")


if __name__ == "__main__":
    main()
