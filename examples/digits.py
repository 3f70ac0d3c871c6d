"""Every lw_callbacks feature on one Trainer: the W&B Lightning guide's MNIST recipe, on real digits.

    python examples/digits.py            # about a minute on 2 CPU cores, offline
    python examples/digits.py --fast     # a few seconds: one short epoch

Runs offline unless you are logged in to W&B (``wandb login``) or set ``WANDB_MODE=online``. At the
end it prints what reached the run, read back from the run's own records, and the ``wandb sync``
command that uploads an offline run. The LightningModule has no W&B code at all.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lw_callbacks.demo import offline_unless_logged_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--fast", action="store_true", help="one short epoch (also: LW_EXAMPLE_FAST=1)")
    parser.add_argument("--project", default="lw-callbacks-digits")
    parser.add_argument("--save-dir", default="runs", help="where W&B writes the run (default: ./runs)")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("LW_EXAMPLE_FAST") == "1"
    offline_unless_logged_in()

    import wandb
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks import (
        LogPredictionSamples,
        MetricSummaries,
        ShareRunDir,
        UploadCheckpoints,
        WatchModel,
        restore_checkpoint,
    )
    from lw_callbacks.demo import CLASS_NAMES, DigitsClassifier, DigitsDataModule
    from lw_callbacks.records import read_run, summarize

    seed_everything(0)
    save_dir = Path(args.save_dir).resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    share = ShareRunDir(checkpoints_in_run_dir=True)
    trainer = Trainer(
        max_epochs=1 if fast else args.epochs,
        limit_train_batches=5 if fast else None,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=5,
        logger=WandbLogger(project=args.project, save_dir=str(save_dir)),
        callbacks=[
            share,  # the run's folder on every rank; checkpoints go inside it
            ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2, save_last=True),
            UploadCheckpoints(),  # every kept checkpoint as a W&B artifact, best / latest aliases
            MetricSummaries({"val_loss": "min", "train_loss": "min"}),  # + val_acc: max, from ModelCheckpoint
            WatchModel(log="all", log_freq=10),  # gradient and parameter histograms
            LogPredictionSamples(num_samples=16, class_names=CLASS_NAMES),  # captioned images + table
        ],
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    wandb.finish()

    assert share.run_dir is not None
    run = read_run(share.run_dir)
    print()
    print("What reached W&B, read back from the run's own records:")
    print(summarize(run, text=True))
    (collection,) = run.artifact_names(type="model")
    # val_acc.best_checkpoint_step is the W&B step at which ModelCheckpoint saved its best checkpoint,
    # that version's alias step-<n>, on the same axis as the metrics and the samples (val_acc is logged
    # once per validation, so it is also val_acc.best_step, the step of the best value).
    best_step = run.summary["val_acc.best_checkpoint_step"]
    best = restore_checkpoint(f"{collection}:step-{best_step}", run_dir=share.run_dir)
    print(f"\nbest checkpoint (val_acc.best_checkpoint_step = {best_step}, alias step-{best_step}) back as a "
          f"local file: {best}")
    print(f"  load it with DigitsClassifier.load_from_checkpoint({str(best)!r})")
    if run.run_dir.name.startswith("offline-run-"):
        print(f"\nThis run is offline. Upload it with:\n  wandb sync {run.run_dir}")


if __name__ == "__main__":
    main()
