"""Gradient and parameter histograms with WatchModel, offline, on real handwritten digits.

    python examples/watch.py            # ~5 epochs
    python examples/watch.py --fast     # a few seconds (also: LW_EXAMPLE_FAST=1)

Replaces the W&B guide's ``wandb_logger.watch(model)``: no call after the model exists, settable
from LightningCLI, ``log_freq`` in optimizer steps, and nothing left on the model after fit.
The run is offline by default (``WANDB_MODE=online`` to send it); afterwards the script reads the
run's own records and prints what was logged.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import read_run
from lw_callbacks.watch import WatchModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--save-dir", default="wandb-runs")
    args = parser.parse_args()

    logger = WandbLogger(project="lw-callbacks-watch", save_dir=os.path.abspath(args.save_dir))
    trainer = Trainer(
        logger=logger,
        callbacks=[
            # histograms of gradients and weights every 10 optimizer steps (not micro-batches),
            # the module graph from the first batch, biases left out
            WatchModel(log="all", log_freq=10, log_graph=True, exclude=["*.bias"]),
        ],
        max_epochs=1 if args.fast else 5,
        limit_train_batches=40 if args.fast else None,
        limit_val_batches=2 if args.fast else None,
        accumulate_grad_batches=2,
        log_every_n_steps=10,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = DigitsClassifier()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)
    print(f"\nrun {records.run_id} in {records.run_dir} ({trainer.global_step} optimizer steps)")
    logged = records.keys()
    for key in sorted(k for k in logged if k.startswith(("gradients/", "parameters/"))):
        steps = [int(step) for step, _ in records.series(key)]
        print(f"  {key:28s} at trainer/global_step {steps}")
    print(f"  graph_0 (model graph):       {records.summary.get('graph_0', {}).get('path')}")
    print("hooks left on the model:", sum(len(m._forward_hooks) for m in model.modules()))
    if os.environ.get("WANDB_MODE") == "offline":
        print(f"send it with: wandb sync {records.run_dir}")


if __name__ == "__main__":
    main()
