"""A small fit with UploadCheckpoints that stops itself at a chosen point, or resumes the same run.

Usage: python checkpoint_faults.py SAVE_DIR CKPT_DIR RUN_ID FAULT AT [--resume] [--epochs N] [--pad-mb N]
    [--staging DIR] [--inject NAME ...] [--tag T] [--fixed] [--kill-after S]

FAULT is where the fit is stopped, at the AT-th occurrence (1 = first):
    none  no fault
    a     SIGKILL after ModelCheckpoint wrote a file, before UploadCheckpoints hands it over
    b     SIGKILL after the hand-over, before ``log_artifact``
    c     SIGKILL right after ``log_artifact`` returned (before W&B's 15 s log flush)
    d     SIGKILL during the end-of-fit flush (uploads slowed so that some are pending)
    term  SIGTERM at the AT-th hand-over
    int   SIGINT (Ctrl+C) at the AT-th hand-over
    async SIGKILL while AsyncCheckpointIO writes its AT-th checkpoint (with --async-io)
    rot   SIGKILL right after ModelCheckpoint's AT-th deletion of a checkpoint (top-k rotation)
    resume  SIGKILL while the resumed fit compares what is on disk with the run's records

With --async-io checkpoints are written by ``AsyncCheckpointIO`` on a slow disk (training runs ahead
of the writes), without ``last.ckpt`` (Lightning cannot link to a file not written yet); a resume
starts from the newest checkpoint on disk.

--inject adds a fault condition for the whole process (several may be given):
    slowcopy   the staging copy writes at about 40 MB/s (a slow disk): the worker falls behind
    slowhash   hashing reads at about 40 MB/s
    full       the staging disk is full (ENOSPC for links, copies and claims written there)
    eacces     the staging root is not writable any more (EACCES for links, copies and claims there)
    eacces-collection  only the collection's staging folder is not writable (EACCES there)
    exdev      hard links fail with EXDEV (another filesystem) even where they would work
    wandb-full W&B's data folder is full for its first 3 staged copies (ENOSPC half-way through each)

Every file ModelCheckpoint writes is recorded by a witness (its name and md5, once the save returned)
in LW_WITNESS; every warning is appended to LW_REPORT_DIR/warnings.txt.

SIGKILL goes to the whole process group (the training process and W&B's service process), as a
scheduler or the OOM killer ends a job: nothing gets to write anything after it.
With --resume the run is resumed (same run id, ``ckpt_path="last"``) to the end.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
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


def inject_conditions(names: list[str], staging: str | None) -> None:
    """Fault conditions injected where the package touches the filesystem."""
    import errno

    from lw_callbacks.core import files as _files
    from lw_callbacks.core import jobs as _jobs

    root = os.path.abspath(staging) if staging else None
    codes = {"full": errno.ENOSPC, "eacces": errno.EACCES, "eacces-collection": errno.EACCES}
    for name in names:
        if name in codes:
            fail_in(_files, _jobs, name, codes[name], root)
        elif name == "exdev":
            def exdev(src: str, dst: str) -> None:
                raise OSError(errno.EXDEV, "Invalid cross-device link (injected)", dst)

            _files._link = exdev
        elif name == "wandb-full":
            wandb_full(_files)
        elif name not in ("slowcopy", "slowhash"):
            raise SystemExit(f"unknown --inject {name}")
    if "slowcopy" in names:
        inner = _files._write

        def slow_write(fh: Any, data: bytes) -> None:
            time.sleep(len(data) / 40e6)
            inner(fh, data)

        _files._write = slow_write
    if "slowhash" in names:
        inner_md5 = _files.md5_b64

        def slow_md5(path: Any, progress: Any = None) -> str:
            time.sleep(os.path.getsize(path) / 40e6)
            return inner_md5(path, progress)

        _files.md5_b64 = slow_md5


def fail_in(_files: Any, _jobs: Any, name: str, code: int, root: str | None) -> None:
    """Links, copies and claims written in the staging root (or only its collection folders) fail with ``code``."""
    real_link, real_write, real_note = _files._link, _files._write, _jobs.write_note

    def failing(path: str) -> bool:
        inside = root is not None and os.path.abspath(path).startswith(root + os.sep)
        if name == "eacces-collection":
            return inside and os.path.basename(os.path.dirname(os.path.abspath(path))).startswith("model-")
        return inside

    def link(src: str, dst: str) -> None:
        if failing(dst):
            raise OSError(code, os.strerror(code) + " (injected)", dst)
        real_link(src, dst)

    def write(fh: Any, data: bytes) -> None:
        if failing(fh.name):
            real_write(fh, data[: len(data) // 2])
            fh.flush()
            raise OSError(code, os.strerror(code) + " (injected)", fh.name)
        real_write(fh, data)

    def note(job: Any, place: Any = None, sync: bool = True) -> bool:
        target = place or job.note or (job.staged + ".json" if job.staged else None)
        if target is not None and failing(str(target)):
            return False
        return real_note(job, place, sync)

    _files._link, _files._write, _jobs.write_note = link, write, note


def wandb_full(_files: Any) -> None:
    """W&B's data folder is full for the first three staged copies (each fails half-way through)."""
    import errno

    real_wandb = _files._write_wandb
    failed = {"n": 0}

    def wandb_write(fh: Any, data: bytes) -> None:
        if failed["n"] < 3:
            failed["n"] += 1
            real_wandb(fh, data[: len(data) // 2])
            fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device (injected)", fh.name)
        real_wandb(fh, data)

    _files._write_wandb = wandb_write


def record_warnings(out: Path) -> None:
    import warnings

    out.mkdir(parents=True, exist_ok=True)
    shown = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        with open(out / "warnings.txt", "a") as fh:
            fh.write(json.dumps(str(message)) + "\n")
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def inject(fault: str, at: int) -> None:
    from lw_callbacks.core import uploader as _uploader
    from lw_callbacks.core.publish import Publisher

    counts = {"n": 0}
    if fault == "rot":
        original_hold = _uploader.Uploader.hold

        def hold(self: Any, path: str) -> bool:
            held = original_hold(self, path)
            counts["n"] += 1
            if counts["n"] == at:
                kill_all()
            return held

        _uploader.Uploader.hold = hold  # type: ignore[method-assign]
    if fault == "resume":
        original_recover = Publisher.recover

        def recover(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_recover(self, *args, **kwargs)
            kill_all()
            return result

        Publisher.recover = recover  # type: ignore[method-assign]
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
    parser.add_argument("--inject", action="append", default=[])
    parser.add_argument("--tag", default="")
    parser.add_argument("--fixed", action="store_true")
    parser.add_argument("--kill-after", type=float, default=0.0)
    parser.add_argument("--epoch-sleep", type=float, default=0.0)
    parser.add_argument("--monitor", default="val_acc", help="'step': a save (and a rotation) every epoch")
    parser.add_argument("--until", default=None, help="stop at the end of the first epoch after this file exists")
    args = parser.parse_args()
    if args.kill_after > 0:
        threading.Timer(args.kill_after, kill_all).start()
    record_warnings(Path(os.environ["LW_REPORT_DIR"]))

    import torch
    import wandb
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
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

    class Witness(Callback):
        """Records the name and md5 of every file ModelCheckpoint writes, once its save returned."""

        def __init__(self, mc: ModelCheckpoint, journal: Path) -> None:
            self.mc, self.journal = mc, journal

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            save = self.mc._save_checkpoint

            def saved(trainer: Any, filepath: str) -> None:
                if trainer.is_global_zero:  # a save begun: a kill may come before the line below is written
                    with open(self.journal.with_name("begun-" + self.journal.name), "a") as fh:
                        fh.write(json.dumps({"file": os.path.basename(filepath), "pid": os.getpid(),
                                             "step": trainer.global_step}) + "\n")
                save(trainer, filepath)
                if trainer.is_global_zero and os.path.isfile(filepath):
                    with open(self.journal, "a") as fh:
                        fh.write(json.dumps({"file": os.path.basename(filepath), "md5": md5(Path(filepath)),
                                             "pid": os.getpid(), "step": trainer.global_step,
                                             "last": filepath == self.mc.last_model_path}) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())

            self.mc._save_checkpoint = saved  # type: ignore[method-assign]

    inject_conditions(args.inject, args.staging or os.path.join(args.ckpt_dir, ".upload-staging"))
    inject(args.fault, args.at)
    seed_everything(sum(map(ord, args.tag)))

    class Slow(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            time.sleep(args.epoch_sleep)
            if args.until and os.path.exists(args.until):
                trainer.should_stop = True

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
    prefix = f"{args.tag}-" if args.tag else ""
    if args.fixed:  # one file name, saved again and again (written in place across filesystems)
        mc = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=1, filename=f"{prefix}model", every_n_train_steps=2,
                             save_last=True)
    else:
        mc = ModelCheckpoint(dirpath=ckpt_dir, monitor=args.monitor, mode="max", save_top_k=2,
                             save_last=False if args.async_io else "link", filename=prefix + "{epoch}-{step}")
    mc.CHECKPOINT_NAME_LAST = f"{prefix}last"
    upload = UploadCheckpoints(staging_dir=args.staging, progress_bar=False)
    logger = WandbLogger(save_dir=args.save_dir, project="lw-tests", id=args.run_id, resume="allow")
    witness = Witness(mc, Path(os.environ.get("LW_WITNESS", str(Path(args.save_dir) / "witness.jsonl"))))
    last = ckpt_dir / f"{prefix}last.ckpt"
    trainer = Trainer(
        logger=logger,
        callbacks=[upload, *([] if args.async_io else [witness]), mc, Slow()],
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
    ckpt_path: str | None = str(last) if args.resume and os.path.lexists(last) else None
    if args.resume and args.async_io:
        ckpt_path = str(max(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns))
    trainer.fit(Padded(args.pad_mb), datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    names = list(upload.collection_names)
    wandb.finish()
    wait_for_cleanups()
    report(0, names=names, files=files_on_disk(ckpt_dir), epoch=trainer.current_epoch)


if __name__ == "__main__":
    main()
