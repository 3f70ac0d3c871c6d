"""Watch a segmentation model's masks on the same validation images evolve, epoch after epoch.

``LogPredictionSamples`` tells the task from the batch (images and ``(N, H, W)`` class-id masks) and
the step's output (``(N, C, H, W)`` logits): each image in W&B carries the ground-truth and the
predicted mask (toggle them in the media panel), the inputs table holds the pixels and the
ground-truth masks once, and each epoch's table holds the predicted mask and its IoU. Synthetic
shapes (a disc and a square per image), offline by default; ``--online`` logs to W&B, ``--fast`` (or
``LW_EXAMPLE_FAST=1``) trains a few batches only.

    python examples/segmentation.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
import os

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from lw_callbacks import LogPredictionSamples
from lw_callbacks.demo_tasks import SHAPE_NAMES, Shapes, ShapesSegmenter
from lw_callbacks.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 5)

    train = DataLoader(Shapes(512, size=48, seed=1), batch_size=32, shuffle=True)
    val = DataLoader(Shapes(128, size=48, seed=2), batch_size=32)
    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    trainer = Trainer(
        logger=logger,
        callbacks=[LogPredictionSamples(num_samples=8, class_names=SHAPE_NAMES, key="segmentation")],
        max_epochs=epochs,
        limit_train_batches=4 if args.fast else None,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(ShapesSegmenter(), train, val)
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"segmentation samples logged in {run_dir}:")
    (inputs,) = records.tables("segmentation/inputs")
    masks = [e for e in inputs.entries if e.path.startswith("media/images/mask/")]
    print(f"  inputs table (once): {len(inputs.rows)} images with {len(masks)} ground-truth masks")
    for table in records.tables("segmentation/table"):
        ious = [row["iou"] for row in table.rows]
        print(f"  epoch table: mean IoU over the {len(ious)} samples {sum(ious) / len(ious):.3f}")


if __name__ == "__main__":
    main()
