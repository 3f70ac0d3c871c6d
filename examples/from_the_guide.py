"""The W&B Lightning guide's recipe, with its snippets replaced by lw_callbacks, on the guide's own module.

    python examples/from_the_guide.py            # about half a minute on 2 CPU cores, offline
    python examples/from_the_guide.py --fast     # a few seconds

``My_LitModule`` is the guide's module as the guide writes it, with only the edits it needs to run
here (each marked ``# edit:``): 8x8 digits instead of 28x28 MNIST, and torchmetrics' current
``accuracy`` signature. It has no W&B code: the guide's ``wandb.define_metric`` inside
``validation_step`` is gone. What the guide's snippets did is done by one callback each:

- ``WandbLogger(log_model="all")``        -> ``UploadCheckpoints()`` beside a ``ModelCheckpoint``
- ``wandb.define_metric("val_accuracy", summary="max")`` in ``validation_step``
                                          -> ``MetricSummaries({"val_accuracy": "max"})``
- ``wandb_logger.watch(model)``           -> ``WatchModel(log="all", log_graph=True)``
- ``LogPredictionSamplesCallback``        -> ``LogPredictionSamples(num_samples=20)``
- ``os.environ["WANDB_DIR"] = wandb.run.dir`` for DDP -> ``ShareRunDir()``
- ``wandb_logger.download_artifact(...)`` -> ``restore_checkpoint(...)``

Runs offline unless you are logged in to W&B. At the end it prints what reached the run, read back
from its own records.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch.nn import CrossEntropyLoss, Linear
from torch.nn import functional as F
from torch.optim import Adam
from torchmetrics.functional import accuracy

from lw_callbacks.demo import offline_unless_logged_in


class My_LitModule(LightningModule):
    def __init__(self, n_classes=10, n_layer_1=128, n_layer_2=256, lr=1e-3):  # type: ignore[no-untyped-def]
        """method used to define the model parameters"""
        super().__init__()

        # edit: digits images are (1, 8, 8) (channels, width, height); the guide's MNIST is 28 x 28
        self.layer_1 = Linear(8 * 8, n_layer_1)
        self.layer_2 = Linear(n_layer_1, n_layer_2)
        self.layer_3 = Linear(n_layer_2, n_classes)

        self.loss = CrossEntropyLoss()
        self.lr = lr

        # save hyper-parameters to self.hparams (auto-logged by W&B)
        self.save_hyperparameters()

    def forward(self, x):  # type: ignore[no-untyped-def]
        """method used for inference input -> output"""

        # (b, 1, 8, 8) -> (b, 1*8*8)
        batch_size, channels, width, height = x.size()  # noqa: RUF059 - as the guide writes it
        x = x.view(batch_size, -1)

        # let's do 3 x (linear + relu)
        x = F.relu(self.layer_1(x))
        x = F.relu(self.layer_2(x))
        x = self.layer_3(x)
        return x

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        """needs to return a loss from a single batch"""
        _, loss, acc = self._get_preds_loss_accuracy(batch)

        # Log loss and metric
        self.log("train_loss", loss)
        self.log("train_accuracy", acc)
        return loss

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        """used for logging metrics"""
        # edit: the guide's `if trainer.global_step == 0: wandb.define_metric(...)` is gone
        preds, loss, acc = self._get_preds_loss_accuracy(batch)

        # Log loss and metric
        self.log("val_loss", loss)
        self.log("val_accuracy", acc)
        return preds

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        """defines model optimizer"""
        return Adam(self.parameters(), lr=self.lr)

    def _get_preds_loss_accuracy(self, batch):  # type: ignore[no-untyped-def]
        """convenience function since train/valid/test steps are similar"""
        x, y = batch
        logits = self(x)
        preds = torch.argmax(logits, dim=1)
        loss = self.loss(logits, y)
        # edit: torchmetrics >= 0.11 needs the task and the number of classes
        acc = accuracy(preds, y, task="multiclass", num_classes=self.hparams.n_classes)
        return preds, loss, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fast", action="store_true", help="one short epoch (also: LW_EXAMPLE_FAST=1)")
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
    from lw_callbacks.demo import CLASS_NAMES, DigitsDataModule
    from lw_callbacks.records import read_run, summarize

    seed_everything(1)
    save_dir = Path(args.save_dir).resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    share = ShareRunDir()
    upload = UploadCheckpoints()
    trainer = Trainer(
        max_epochs=2 if fast else args.epochs,
        limit_train_batches=5 if fast else None,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=5,
        logger=WandbLogger(project="lw-callbacks-guide", save_dir=str(save_dir)),  # log_model off
        callbacks=[
            ModelCheckpoint(monitor="val_accuracy", mode="max"),
            upload,
            MetricSummaries({"val_accuracy": "max"}),
            WatchModel(log="all", log_freq=10, log_graph=True),
            LogPredictionSamples(num_samples=20, class_names=CLASS_NAMES),
            share,
        ],
    )
    trainer.fit(My_LitModule(), datamodule=DigitsDataModule())
    wandb.finish()

    assert share.run_dir is not None
    run = read_run(share.run_dir)
    print("\nWhat reached W&B, read back from the run's own records:")
    print(summarize(run, text=True))
    best = restore_checkpoint(f"{upload.collection_names[0]}:best", run_dir=share.run_dir)
    model = My_LitModule.load_from_checkpoint(best)
    print(f"\nbest checkpoint back as a local file: {best} ({sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
