"""UploadCheckpoints: training-thread time of one 256 MB checkpoint hand-over vs WandbLogger(log_model="all"),
the end-of-fit flush of a 1 GB checkpoint vs log_model="all"'s training-thread time for the same file, and fit
time with a checkpoint every epoch, with vs without uploading.

Hand-over case: both paths run in one process on the same run, round after round, on a freshly written
256 MB file each time (writing it is not timed). A is ``WandbLogger.after_save_checkpoint`` with
``log_model="all"`` (what Lightning runs on the training thread after each save: copy, md5,
``log_artifact``). B is what UploadCheckpoints runs on the training thread after the same save (stat,
hard link, a small note file, queue). Before each B round the background worker is let finish the
previous file, as it would between checkpoints minutes apart.

Asynchronous case (``--async-io``, and in the full run): the same 256 MB save under
``Trainer(plugins=[AsyncCheckpointIO()])``, the file written on the plugin's writer thread. A is the
plain hand-over (B above); B is what UploadCheckpoints runs on the training thread under the plugin
(capture the moment, queue the hand-over behind the write). Also printed: the delay from the end of
the file's write to the end of its hand-over, on the writer thread.

Flush case (1 GB, full run only: ``python benchmarks/bench_checkpoints.py --flush-1gb [--rounds N]``): A as
above; B is a checkpoint saved just before fit ends, so its whole upload is waited for: the hand-over plus
the uploader's flush (hash, W&B's staged copy, ``log_artifact``), all of which the training thread waits for
at the end of fit.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import compare, fit_seconds

SIZE = 256 * 2**20


def _handover_case(rounds: int, size: int = SIZE, flush: bool = False) -> None:
    import torch
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.checkpoints import UploadCheckpoints
    from lw_callbacks.demo import DigitsClassifier

    root = Path(tempfile.mkdtemp(prefix="lwbench-ckpt-"))
    payload = os.urandom(size)
    staging = Path(os.environ["WANDB_DATA_DIR"]) / "artifacts" / "staging"

    # A: Lightning's own upload, on its own logger / run.
    logger_a = WandbLogger(save_dir=str(root / "a"), project="lw-bench", log_model="all")
    logger_a.experiment  # noqa: B018
    mc_a = ModelCheckpoint(dirpath=root / "ckpt-a", monitor="val_acc", mode="max", save_top_k=-1)

    # B: UploadCheckpoints set up on a Trainer of its own (hooks are driven by hand, as after a save).
    logger_b = WandbLogger(save_dir=str(root / "b"), project="lw-bench")
    mc_b = ModelCheckpoint(dirpath=root / "ckpt-b", monitor="val_acc", mode="max", save_top_k=-1)
    upload = UploadCheckpoints(progress_bar=False)
    trainer = Trainer(logger=logger_b, callbacks=[mc_b, upload], accelerator="cpu", devices=1)
    upload.setup(trainer, DigitsClassifier(), "fit")
    upload._fit_start_ns = 0
    counter = {"a": 0, "b": 0}

    def save(mc: ModelCheckpoint, key: str) -> str:
        counter[key] += 1
        folder = Path(str(mc.dirpath))
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / f"epoch={counter[key]}.ckpt")
        with open(path, "wb") as fh:
            fh.write(payload[:-8] + counter[key].to_bytes(8, "little"))
            fh.flush()
            os.fsync(fh.fileno())
        score = torch.tensor(float(counter[key]))
        mc.best_k_models[path] = score
        mc.best_model_path, mc.best_model_score, mc.current_score = path, score, score
        mc._last_global_step_saved = counter[key]
        return path

    def clean(path: str) -> None:
        os.remove(path)  # as top-k rotation would; keeps the disk in check
        for old in staging.glob("*") if staging.is_dir() else []:
            old.unlink(missing_ok=True)

    def run_a() -> float:
        path = save(mc_a, "a")
        start = time.perf_counter()
        logger_a.after_save_checkpoint(mc_a)
        elapsed = time.perf_counter() - start
        mc_a.best_k_models.pop(path)
        clean(path)
        return elapsed

    def run_b() -> float:
        uploader: Any = upload.publisher.uploader
        while uploader.pending():  # the previous checkpoint's upload is done, as between real saves
            time.sleep(0.05)
        path = save(mc_b, "b")
        start = time.perf_counter()
        upload._scan(trainer)
        if flush:  # what the end of fit waits for (Publisher.flush, less stopping the worker)
            left = uploader.flush(upload.flush_timeout, False, 0)
            assert not left, left
        elapsed = time.perf_counter() - start
        mc_b.best_k_models.pop(path)
        clean(path)  # deleted right after hand-over: the staged hard link keeps it whole for the worker
        return elapsed

    mb = size // 2**20
    if flush:
        result = compare(
            f"UploadCheckpoints end-of-fit flush / log_model='all' after_save_checkpoint (training thread, {mb} MB)",
            run_a, run_b, rounds=rounds, note="B: hand-over + flush of a checkpoint saved as fit ends",
        )
        for i, (a, b) in enumerate(zip(result.a, result.b, strict=True)):
            print(f"  round {i + 1}: flush (B) {b:.2f} s, log_model='all' (A) {a:.2f} s, B/A {b / a:.2f}", flush=True)
    else:
        result = compare(
            f"UploadCheckpoints hand-over / log_model='all' after_save_checkpoint (training thread, {mb} MB)",
            run_a, run_b, rounds=rounds, note="B/A of one save; medians in the A/B columns",
        )
        ms = sorted(b * 1e3 for b in result.b)
        print(f"  hand-over (B) ms: min {ms[0]:.3f}, median {statistics.median(ms):.3f}, max {ms[-1]:.3f}; "
              f"log_model='all' (A) ms median {statistics.median(result.a) * 1e3:.0f}", flush=True)
    upload.teardown(trainer, DigitsClassifier(), "fit")
    wandb.finish()
    shutil.rmtree(root, ignore_errors=True)


def _async_case(rounds: int, size: int = SIZE) -> None:
    import torch
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    from lw_callbacks.checkpoints import UploadCheckpoints
    from lw_callbacks.demo import DigitsClassifier

    root = Path(tempfile.mkdtemp(prefix="lwbench-async-"))
    payload = os.urandom(size)
    staging = Path(os.environ["WANDB_DATA_DIR"]) / "artifacts" / "staging"
    setups: dict[str, Any] = {}
    for key, plugins in (("plain", []), ("async", [AsyncCheckpointIO()])):
        mc = ModelCheckpoint(dirpath=root / f"ckpt-{key}", monitor="val_acc", mode="max", save_top_k=-1)
        upload = UploadCheckpoints(progress_bar=False)
        trainer = Trainer(logger=WandbLogger(save_dir=str(root / key), project="lw-bench"), callbacks=[mc, upload],
                          accelerator="cpu", devices=1, plugins=plugins)
        upload.setup(trainer, DigitsClassifier(), "fit")
        upload._fit_start_ns = 0
        setups[key] = (mc, upload, trainer)
    written: dict[str, float] = {}
    handed: list[float] = []
    _mc_async, upload_async, trainer_async = setups["async"]
    take = upload_async._take

    def timed_take(*args: Any) -> None:
        take(*args)
        handed.append(time.perf_counter())

    upload_async._take = timed_take  # type: ignore[method-assign]
    io: Any = trainer_async.strategy.checkpoint_io
    counter = {"n": 0}

    def write(path: str, n: int) -> None:
        with open(path, "wb") as fh:
            fh.write(payload[:-8] + n.to_bytes(8, "little"))
            fh.flush()
            os.fsync(fh.fileno())
        written[path] = time.perf_counter()

    def one(key: str) -> float:
        mc, upload, trainer = setups[key]
        uploader: Any = upload.publisher.uploader
        while uploader.pending():  # the previous checkpoint's upload is done, as between real saves
            time.sleep(0.05)
        counter["n"] += 1
        folder = Path(str(mc.dirpath))
        folder.mkdir(parents=True, exist_ok=True)
        path = str(folder / f"epoch={counter['n']}.ckpt")
        if key == "async":
            io._ensure_setup()
            io._executor.submit(write, path, counter["n"])  # what AsyncCheckpointIO.save_checkpoint queues
        else:
            write(path, counter["n"])
        score = torch.tensor(float(counter["n"]))
        mc.best_k_models[path] = score
        mc.best_model_path, mc.best_model_score, mc.current_score = path, score, score
        mc._last_global_step_saved = counter["n"]
        start = time.perf_counter()
        upload._scan(trainer)
        elapsed = time.perf_counter() - start
        if key == "async":
            assert upload._async is not None and upload._async.wait(120)
        mc.best_k_models.pop(path)
        os.remove(path)
        for old in staging.glob("*") if staging.is_dir() else []:
            old.unlink(missing_ok=True)
        return elapsed

    result = compare(
        f"UploadCheckpoints training-thread time after a save: AsyncCheckpointIO / plain ({size // 2**20} MB)",
        lambda: one("plain"), lambda: one("async"), rounds=rounds, note="B: the hand-over queued behind the write",
    )
    delays = sorted((h - written[p]) * 1e3 for h, p in zip(handed, [p for p in written if "ckpt-async" in p],
                                                            strict=False))
    ms_a = statistics.median(result.a) * 1e3
    ms_b = statistics.median(result.b) * 1e3
    print(f"  training thread ms: plain {ms_a:.3f}, async {ms_b:.3f}; async hand-over done after the write ends, ms: "
          f"min {delays[0]:.2f}, median {statistics.median(delays):.2f}, max {delays[-1]:.2f}", flush=True)
    for _mc, upload, trainer in setups.values():
        upload.teardown(trainer, DigitsClassifier(), "fit")
        trainer.strategy.checkpoint_io.teardown()
    wandb.finish()
    shutil.rmtree(root, ignore_errors=True)


def cases(rounds: int) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lw_callbacks.checkpoints import UploadCheckpoints

    if os.environ.get("LW_BENCH_SKIP_HANDOVER") != "1":
        _handover_case(max(rounds, 7))
    if os.environ.get("LW_BENCH_SKIP_ASYNC") != "1":
        _async_case(max(rounds, 7))
    if os.environ.get("LW_BENCH_SKIP_FLUSH_1GB") != "1":
        _handover_case(max(rounds, 3), size=2**30, flush=True)

    def every_epoch() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tempfile.mkdtemp(prefix="lwbench-ck-"), save_top_k=-1, every_n_epochs=1)

    compare(
        "UploadCheckpoints / no upload (fit, 3 epochs, checkpoint every epoch)",
        lambda: fit_seconds(lambda: [every_epoch()]),
        lambda: fit_seconds(lambda: [every_epoch(), UploadCheckpoints(progress_bar=False)]),
        rounds=rounds,
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flush-1gb", action="store_true", help="only the 1 GB end-of-fit flush case")
    parser.add_argument("--async-io", action="store_true", help="only the AsyncCheckpointIO hand-over case")
    parser.add_argument("--only-handover", action="store_true", help="only the plain 256 MB hand-over case")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.async_io or args.only_handover:
        import harness

        print(harness.HEADER, flush=True)
        if args.only_handover:
            _handover_case(args.rounds)
        if args.async_io:
            _async_case(args.rounds)
    elif args.flush_1gb:
        import harness

        print(harness.HEADER, flush=True)
        _handover_case(args.rounds, size=2**30, flush=True)
    else:
        cases(args.rounds)
