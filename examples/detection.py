"""Watch a detector's boxes on the same validation images evolve, epoch after epoch.

The batches and the step's output are torchvision-style: images and a list of one dict per image
with ``boxes`` (``xyxy`` pixels), ``labels`` and, for predictions, ``scores``. ``LogPredictionSamples``
draws the ground-truth and the predicted boxes on each image in W&B (predictions scoring below
``score_threshold`` left out), uploads the images and ground-truth boxes once in the inputs table,
and logs each epoch's boxes per class and ``matches@0.5`` (predictions matching a ground-truth box
of their class at IoU >= 0.5). Synthetic shapes, offline by default; ``--online`` logs to W&B,
``--fast`` (or ``LW_EXAMPLE_FAST=1``) trains a few batches only.

    python examples/detection.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
import os

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from lw_callbacks import LogPredictionSamples
from lw_callbacks.demo_tasks import SHAPE_NAMES, Shapes, ShapesDetector, detection_collate
from lw_callbacks.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 5)

    train = DataLoader(
        Shapes(512, size=48, mode="detection", seed=1), batch_size=32, shuffle=True, collate_fn=detection_collate
    )
    val = DataLoader(Shapes(128, size=48, mode="detection", seed=2), batch_size=32, collate_fn=detection_collate)
    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    callback = LogPredictionSamples(num_samples=8, class_names=SHAPE_NAMES, key="detection", score_threshold=0.3)
    trainer = Trainer(
        logger=logger,
        callbacks=[callback],
        max_epochs=epochs,
        limit_train_batches=4 if args.fast else None,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(ShapesDetector(), train, val)
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"detection samples logged in {run_dir}:")
    (inputs,) = records.tables("detection/inputs")
    boxes = sum(len(row["image"]["boxes"]["ground_truth"]) for row in inputs.rows)
    print(f"  inputs table (once): {len(inputs.rows)} images with {boxes} ground-truth boxes")
    for table in records.tables("detection/table"):
        found = sum(row["matches@0.5"] for row in table.rows)
        predicted = sum(row["predicted boxes"] for row in table.rows)
        print(f"  epoch table: {found} of {boxes} ground-truth boxes matched at IoU 0.5; {predicted} boxes predicted")


if __name__ == "__main__":
    main()
