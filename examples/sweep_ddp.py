"""A W&B sweep under DDP: every rank trains with the sweep's values, not the script's defaults.

A sweep agent hands its values to ``wandb.init``, which runs on global rank 0 only; the other
ranks would build their model from the defaults. ``ShareRunDir(apply_config_to_hparams=True)``
sends rank 0's run config to every rank at ``setup`` and writes it into the module's ``hparams``
before ``configure_model`` builds the layers and ``configure_optimizers`` the optimizer.

    wandb sweep examples/sweep.yaml            # prints a sweep id; then, as many times as you like:
    wandb agent <entity/project/sweep id>      # runs this script under ddp with 2 processes

    python examples/sweep_ddp.py [--strategy ddp|ddp_spawn] [--devices N] [--fast]
    torchrun --nproc_per_node 2 examples/sweep_ddp.py
    python examples/sweep_ddp.py --config-before-trainer   # the values before the Trainer exists

Offline by default (no account needed); ``--fast`` (or ``LW_EXAMPLE_FAST=1``) trains a few batches.
Every rank prints the learning rate, hidden size and parameter count it trains with. To try one
sweep run without a W&B server, write the file an agent would write and point wandb at it::

    printf 'lr: {value: 0.03}\\nhidden: {value: 128}\\n' > params.yaml
    WANDB_SWEEP_PARAM_PATH=params.yaml python examples/sweep_ddp.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import wandb
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn

from lw_callbacks import ShareRunDir
from lw_callbacks.demo import DigitsDataModule, offline_unless_logged_in
from lw_callbacks.records import read_run
from lw_callbacks.run_dir import shared_run_config


class SweepClassifier(LightningModule):
    """Builds its layers in ``configure_model`` and its optimizer from ``self.hparams``, so the values
    ``ShareRunDir(apply_config_to_hparams=True)`` writes at ``setup`` are the ones it trains with.

    Args:
        hidden: width of the hidden layer.
        lr: Adam learning rate.
    """

    def __init__(self, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:  # called again by a later validate / test: keep the trained layers
            hidden = self.hparams["hidden"]
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        assert self.net is not None, "configure_model() builds the layers"
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=False, sync_dist=stage == "val")
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), sync_dist=stage == "val")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class PrintWhatTrains(Callback):
    """Every rank prints the values it really trains with: the optimizer's lr and the built layers."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        hidden = next(m for m in pl_module.modules() if isinstance(m, nn.Linear)).out_features
        params = sum(p.numel() for p in pl_module.parameters())
        # one write per line, so the lines of several ranks do not interleave
        sys.stdout.write(f"rank {trainer.global_rank}: lr={lr} hidden={hidden} parameters={params}\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "ddp_spawn"])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--config-before-trainer", action="store_true",
                        help="read the run's config before the Trainer exists (shared_run_config) and build "
                             "the model from it, instead of applying it to hparams at setup")
    args = parser.parse_args()
    mode = offline_unless_logged_in()
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", args.devices))  # under torchrun: its processes

    logger = WandbLogger(project="lw-callbacks-sweeps", save_dir=os.path.abspath("runs"))
    if args.config_before_trainer:
        config = shared_run_config(logger)  # every process: rank 0's run config (a sweep's values)
        model = SweepClassifier(**{k: config[k] for k in ("hidden", "lr") if k in config})
        share = ShareRunDir()
    else:
        model = SweepClassifier()  # the defaults; the sweep's values replace them at setup
        share = ShareRunDir(apply_config_to_hparams=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=args.strategy,
        max_epochs=1 if args.fast else args.epochs,
        limit_train_batches=4 if args.fast else None,
        limit_val_batches=2 if args.fast else None,
        logger=logger,
        callbacks=[share, PrintWhatTrains()],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=2,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))

    run = wandb.run  # rank 0 only (under ddp_spawn: the main process, which started the run)
    if run is not None:
        run_dir = Path(run.settings.sync_dir)
        wandb.finish()
        if mode == "offline":
            config = read_run(run_dir).config
            print(f"recorded config: lr={config.get('lr')} hidden={config.get('hidden')}")
            print(f"upload with: wandb sync {run_dir}")


if __name__ == "__main__":
    main()
