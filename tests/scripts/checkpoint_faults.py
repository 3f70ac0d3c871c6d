"""A small fit with UploadCheckpoints that stops itself at a chosen point, or resumes the same run.

Usage: python checkpoint_faults.py SAVE_DIR CKPT_DIR RUN_ID FAULT AT [--resume] [--epochs N] [--pad-mb N]
    [--staging DIR]

FAULT is where the fit is stopped, at the AT-th occurrence (1 = first):
    none  no fault
    a     SIGKILL after ModelCheckpoint wrote a file, before UploadCheckpoints hands it over
    b     SIGKILL after the hand-over, before ``log_artifact``
    c     SIGKILL right after ``log_artifact`` returned (before W&B's 15 s log flush)
    d     SIGKILL during the end-of-fit flush (uploads slowed so that some are pending)
    term  SIGTERM at the AT-th hand-over
    int   SIGINT (Ctrl+C) at the AT-th hand-over
    async SIGKILL while AsyncCheckpointIO writes its AT-th checkpoint (with --async-io)

With --async-io checkpoints are written by ``AsyncCheckpointIO`` on a slow disk (training runs ahead
of the writes), without ``last.ckpt`` (Lightning cannot link to a file not written yet); a resume
starts from the newest checkpoint on disk.

SIGKILL goes to the whole process group (the training process and W&B's service process), as a
scheduler or the OOM killer ends a job: nothing gets to write anything after it.
With --resume the run is resumed (same run id, ``ckpt_path="last"``) to the end.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from _report import report


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def files_on_disk(folder: Path) -> dict[str, str]:
    return {p.name: md5(p) for p in sorted(folder.glob("*.ckpt")) if p.is_file() and not p.is_symlink()}


def kill_all() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)
    time.sleep(60)


def inject(fault: str, at: int) -> None:
    from lw_callbacks.core import uploader as _uploader
    from lw_callbacks.core.publish import Publisher

    counts = {"n": 0}
    if fault in ("a", "term", "int"):
        original_stage = Publisher.stage_and_submit

        def stage(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts["n"] += 1
            if counts["n"] == at and fault == "a":
                kill_all()
            result = original_stage(self, *args, **kwargs)
            if counts["n"] == at and fault in ("term", "int"):
                os.kill(os.getpid(), signal.SIGTERM if fault == "term" else signal.SIGINT)
            return result

        Publisher.stage_and_submit = stage  # type: ignore[method-assign]
    if fault in ("b", "c", "d"):
        original_log = _uploader.Uploader._log
        flushing = threading.Event()

        def log(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts["n"] += 1
            if fault == "b" and counts["n"] == at:
                kill_all()
            if fault == "d":
                time.sleep(0.4)
            result = original_log(self, *args, **kwargs)
            if fault == "c" and counts["n"] == at:
                kill_all()
            if fault == "d" and flushing.is_set():
                kill_all()
            return result

        _uploader.Uploader._log = log  # type: ignore[method-assign]
    if fault == "d":
        original_flush = _uploader.Uploader.flush

        def flush(self: Any, *args: Any, **kwargs: Any) -> Any:
            flushing.set()
            threading.Timer(3.0, kill_all).start()
            return original_flush(self, *args, **kwargs)

        _uploader.Uploader.flush = flush  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("save_dir")
    parser.add_argument("ckpt_dir")
    parser.add_argument("run_id")
    parser.add_argument("fault")
    parser.add_argument("at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pad-mb", type=int, default=0)
    parser.add_argument("--staging", default=None)
    parser.add_argument("--async-io", action="store_true")
    args = parser.parse_args()

    import torch
    import wandb
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.checkpoints import UploadCheckpoints
    from lw_callbacks.core.publish import wait_for_cleanups
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    class Padded(DigitsClassifier):
        """The digits model with a large buffer, for checkpoints of ``pad_mb`` MiB."""

        def __init__(self, pad_mb: int = 0) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.register_buffer("pad", torch.zeros(pad_mb * 2**20 // 4))

    inject(args.fault, args.at)
    seed_everything(0)
    ckpt_dir = Path(args.ckpt_dir)
    plugins: list[Any] = []
    if args.async_io:
        from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

        class SlowDisk(TorchCheckpointIO):
            calls = 0

            def save_checkpoint(self, checkpoint: Any, path: Any, storage_options: Any = None) -> None:
                SlowDisk.calls += 1
                if args.fault == "async" and SlowDisk.calls == args.at:
                    threading.Timer(0.25, kill_all).start()  # while this checkpoint is being written
                time.sleep(0.2)
                super().save_checkpoint(checkpoint, path, storage_options)

        plugins.append(AsyncCheckpointIO(SlowDisk()))
    mc = ModelCheckpoint(
        dirpath=ckpt_dir, monitor="val_acc", mode="max", save_top_k=2, save_last=False if args.async_io else "link",
        filename="{epoch}-{step}",
    )
    upload = UploadCheckpoints(staging_dir=args.staging, progress_bar=False)
    logger = WandbLogger(save_dir=args.save_dir, project="lw-tests", id=args.run_id, resume="allow")
    trainer = Trainer(
        logger=logger,
        callbacks=[upload, mc],
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=args.save_dir,
        plugins=plugins,
    )
    ckpt_path: str | None = "last" if args.resume else None
    if args.resume and args.async_io:
        ckpt_path = str(max(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns))
    trainer.fit(Padded(args.pad_mb), datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    names = list(upload.collection_names)
    wandb.finish()
    wait_for_cleanups()
    report(0, names=names, files=files_on_disk(ckpt_dir), epoch=trainer.current_epoch)


if __name__ == "__main__":
    main()
