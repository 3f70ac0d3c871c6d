"""ShareRunDir: rank 0's W&B run directory, id and name, known on every rank."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lw_callbacks._wandb import require_wandb_logger, run_folder, run_of

__all__ = ["ShareRunDir"]


class ShareRunDir(Callback):
    r"""Make rank 0's W&B run directory, id and name known on every rank.

    Only global rank 0 has a live ``wandb`` run; on the other ranks ``wandb.run`` is ``None`` and
    ``WandbLogger.experiment`` is a dummy. At ``setup`` this callback starts the run on rank 0 (if it
    has not started), broadcasts its folder, id and name through the Trainer's strategy, and on every
    rank sets ``os.environ["WANDB_DIR"]`` and the attributes below. It works with every launcher
    (Lightning's ``ddp`` and ``ddp_spawn``, torchrun, SLURM, several nodes), unlike setting
    ``WANDB_DIR`` from ``wandb.run.dir`` before the other ranks start.

    Attributes (``None`` until ``setup``, and under ``WANDB_MODE=disabled``):
        run_dir: the run's own folder, ``<save_dir>/wandb/offline-run-<date>-<id>`` (or
            ``run-<date>-<id>`` online), wherever W&B put it.
        files_dir: ``run_dir / "files"`` (``wandb.run.dir``): files there are uploaded with the run.
        wandb_dir: the root W&B writes under (the ``WandbLogger``'s ``save_dir``); this is the value
            ``WANDB_DIR`` gets on every rank.
        run_id: the run's id. run_name: its display name (``None`` offline if none was given).

    Args:
        checkpoints_in_run_dir: put the checkpoints of every ``ModelCheckpoint`` that has no
            ``dirpath`` into ``run_dir / "checkpoints"`` (outside ``files/``, so the run does not
            upload them a second time).
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.

    Raises:
        MisconfigurationException: at ``setup``, when the Trainer has no ``WandbLogger``.

    Example::

        share = ShareRunDir(checkpoints_in_run_dir=True)
        trainer = Trainer(logger=WandbLogger(project="mnist"), strategy="ddp", devices=2,
                          callbacks=[share, ModelCheckpoint(monitor="val_acc", mode="max")])
        trainer.fit(model, datamodule=dm)
        share.run_dir  # the same path on every rank

    On nodes without a shared filesystem, rank 0's folder does not exist on the other nodes: there
    the folder is created (empty) and a warning says so.
    """

    def __init__(self, checkpoints_in_run_dir: bool = False, set_env: bool = True) -> None:
        super().__init__()
        self.checkpoints_in_run_dir = bool(checkpoints_in_run_dir)
        self.set_env = bool(set_env)
        self.run_dir: Path | None = None
        self.files_dir: Path | None = None
        self.wandb_dir: Path | None = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self._redirected: set[int] = set()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = require_wandb_logger(trainer, type(self).__name__)
        info: dict[str, Any] | None = None
        if trainer.global_rank == 0:
            info = self._describe(run_of(logger, 0), logger)
        # Every rank enters the broadcast (never a rank-0-only collective); None means "disabled".
        info = trainer.strategy.broadcast(info, src=0)
        if not self._adopt(info, trainer.global_rank):
            return
        if self.checkpoints_in_run_dir:
            self._redirect_checkpoints(trainer)

    def _adopt(self, info: dict[str, Any] | None, global_rank: int) -> bool:
        """Take rank 0's description (from the broadcast) on this rank; ``False`` when W&B is disabled."""
        if info is None:
            return False
        self.run_dir = Path(info["run_dir"])
        self.files_dir = Path(info["files_dir"])
        self.wandb_dir = Path(info["wandb_dir"])
        self.run_id = info["run_id"]
        self.run_name = info["run_name"]
        if self.set_env:
            os.environ["WANDB_DIR"] = str(self.wandb_dir)
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            warnings.warn(
                f"[rank {global_rank}] ShareRunDir: rank 0's run folder {self.run_dir} does not exist on this "
                "node (no shared filesystem?); created it here empty. Files written there stay on this node.",
                stacklevel=3,
            )
        return True

    @staticmethod
    def _describe(run: Any, logger: Any) -> dict[str, Any] | None:
        if run is None:
            return None
        folder = run_folder(run, logger)  # <root>/wandb/<offline-run-...>, also for an attached run
        return {
            "run_dir": str(folder),
            "files_dir": str(folder / "files"),
            "wandb_dir": str(folder.parent.parent),
            "run_id": run.id,
            "run_name": run.name or None,
        }

    def _redirect_checkpoints(self, trainer: pl.Trainer) -> None:
        assert self.run_dir is not None
        target = str(self.run_dir / "checkpoints")
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if callback.dirpath is None:
                self._redirected.add(id(callback))
            if id(callback) in self._redirected:  # again on a later fit, into that fit's run
                callback.dirpath = target
