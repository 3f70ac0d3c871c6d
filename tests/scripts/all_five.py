"""All five callbacks on one Trainer, beside Lightning's own, under any launcher and phase.

usage: all_five.py LAUNCH PHASE
  LAUNCH: single | ddp | ddp_spawn | torchrun
  PHASE:  full      a normal fit
          crash     raise RuntimeError mid-epoch (at CRASH_STEP)
          interrupt raise KeyboardInterrupt mid-epoch (at CRASH_STEP)
          resume    a new process resumes the same run id from ckpt_path="last"

Every rank reports the warnings our callbacks raised on it, what ShareRunDir told it, and the
checkpoint files ModelCheckpoint kept.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from _report import report
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks import LogPredictionSamples, MetricSummaries, ShareRunDir, UploadCheckpoints, WatchModel
from lw_callbacks.demo import CLASS_NAMES, DigitsClassifier, DigitsDataModule

RUN_ID = "allfive01"
CRASH_STEP = 9  # optimizer steps; 6 per epoch, so mid-way through the second epoch
OURS = ("LogPredictionSamples", "MetricSummaries", "ShareRunDir", "UploadCheckpoints", "WatchModel", "lw_callbacks")


class Preempt(Callback):
    """Stands in for a preemption: raises in the middle of an epoch."""

    def __init__(self, exc: str) -> None:
        self.exc = exc

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == CRASH_STEP:
            raise KeyboardInterrupt if self.exc == "interrupt" else RuntimeError("preempted")


class Report(Callback):
    """On every rank: records the warnings raised from setup on, and reports at fit end or on an exception."""

    def __init__(self, share: ShareRunDir, ckpt: ModelCheckpoint) -> None:
        self.share, self.ckpt = share, ckpt
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list = []

    def setup(self, trainer, pl_module, stage):  # type: ignore[no-untyped-def]
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__() or []
        warnings.simplefilter("always")

    def _report(self, trainer: Trainer, outcome: str) -> None:
        kept = sorted(p.name for p in Path(self.ckpt.dirpath).glob("*.ckpt")) if self.ckpt.dirpath else []
        report(
            trainer.global_rank,
            outcome=outcome,
            run_dir=str(self.share.run_dir),
            wandb_dir_env=os.environ.get("WANDB_DIR"),
            run_id=self.share.run_id,
            global_step=trainer.global_step,
            ckpt_dir=str(self.ckpt.dirpath),
            kept=kept,
            ours=[str(w.message) for w in self._caught if any(name in str(w.message) for name in OURS)],
        )

    def on_fit_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self._report(trainer, "finished")

    def on_exception(self, trainer, pl_module, exception):  # type: ignore[no-untyped-def]
        self._report(trainer, type(exception).__name__)

    def teardown(self, trainer, pl_module, stage):  # type: ignore[no-untyped-def]
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None


def main() -> None:
    launch, phase = sys.argv[1], sys.argv[2]
    seed_everything(0)
    share = ShareRunDir()
    ckpt = ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_top_k=2, save_last=True)
    callbacks: list[Callback] = [
        share,
        ckpt,
        UploadCheckpoints(),
        MetricSummaries({"val_loss": "min"}),
        WatchModel(log="all", log_freq=2),
        LogPredictionSamples(num_samples=8, class_names=CLASS_NAMES),
        EarlyStopping(monitor="val_loss", patience=10),
        LearningRateMonitor(),
    ]
    if phase in ("crash", "interrupt"):
        callbacks.append(Preempt(phase))
    callbacks.append(Report(share, ckpt))
    devices = 1 if launch == "single" else 2
    strategy = {"single": "auto", "torchrun": "ddp"}.get(launch, launch)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=3,
        limit_train_batches=6,
        limit_val_batches=2,
        logger=WandbLogger(project="lw-tests", save_dir=os.path.abspath("runs"), id=RUN_ID, resume="allow"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(
        DigitsClassifier(),
        datamodule=DigitsDataModule(batch_size=32),
        ckpt_path="last" if phase == "resume" else None,
    )


if __name__ == "__main__":
    main()
