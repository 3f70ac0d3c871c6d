"""Every checkpoint safe in W&B without slowing training, and the best one back in one line.

Trains the digits classifier with two ModelCheckpoints (best val_acc, best val_loss); UploadCheckpoints
uploads each kept file in the background into its own collection (``best`` / ``latest`` aliases per
callback), then ``restore_checkpoint`` gets the best val_acc checkpoint back from the offline run and
training resumes from it.

    python examples/checkpoints.py            # offline, about 15 s
    python examples/checkpoints.py --fast     # or LW_EXAMPLE_FAST=1: fewer epochs, for tests
    WANDB_MODE=online python examples/checkpoints.py --project my-project

Runs offline unless WANDB_MODE says otherwise; ``wandb sync <run dir>`` uploads an offline run later.
"""

from __future__ import annotations

import argparse
import os

import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--project", default="lw-callbacks-examples")
    parser.add_argument("--save-dir", default="example-runs")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.makedirs(args.save_dir, exist_ok=True)
    epochs = 2 if args.fast else 4
    limits = {"limit_train_batches": 6, "limit_val_batches": 3} if args.fast else {}

    best_acc = ModelCheckpoint(monitor="val_acc", mode="max", save_last=True, filename="acc-{epoch}-{val_acc:.3f}")
    best_loss = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, filename="loss-{epoch}-{val_loss:.3f}")
    upload = UploadCheckpoints(aliases=["example"])  # keep WandbLogger's log_model off: this replaces it
    trainer = Trainer(
        logger=WandbLogger(project=args.project, save_dir=args.save_dir),
        callbacks=[best_acc, best_loss, upload],
        max_epochs=epochs,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.save_dir,
        **limits,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    run_dir = wandb.run.settings.sync_dir if wandb.run is not None else None
    wandb.finish()

    # What the run recorded: one collection per ModelCheckpoint, with its aliases.
    records = read_run(run_dir) if run_dir else None
    if records is not None:
        for name in records.artifact_names(type="model"):
            for v in records.artifacts(name):
                print(f"{name}:v{v.version}  score={v.metadata['score']:.4f}  {v.metadata['original_filename']}  "
                      f"aliases={sorted(v.aliases)}")

    # One line back: the best val_acc checkpoint, from the offline run (or online: "entity/project/name:best").
    path = restore_checkpoint(f"{upload.collection_names[0]}:best", run_dir=run_dir)
    print(f"restored {path}")
    model = DigitsClassifier.load_from_checkpoint(path)  # trusted file: it is ours
    # A file from elsewhere: inspect it without running pickled code first:
    #   torch.load(path, map_location="cpu", weights_only=True)

    resume = Trainer(
        logger=WandbLogger(project=args.project, save_dir=args.save_dir),
        max_epochs=epochs + 1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=args.save_dir,
        **limits,
    )
    resume.fit(model, datamodule=DigitsDataModule(), ckpt_path=path)
    print(f"resumed from the restored checkpoint and trained to global step {resume.global_step}")
    wandb.finish()


if __name__ == "__main__":
    main()
