"""One benchmark fit in this process: ``python benchmarks/fits.py ARM [--case cnn|digits] [--quick]``.

Prints one JSON line: the arm, wall seconds of ``trainer.fit`` and of ``fit + wandb.finish()``, CPU
seconds (user + system) over that same window of this process plus its live children (W&B's
service process, ``wandb-core``), the same two over the steady state (the training epochs after
the first: from the second one's start to the end of the last one, before any ``on_train_end``),
seconds spent inside each hook of the callbacks under test (and of the guide's callback), wall and
training-thread CPU, the slow calls in order (wall and CPU), and the bytes the run's media folder grew by at each
validation end. The run starts (``wandb.init``) before the timed window:
every arm pays the same for it. ``benchmarks/run.py`` starts one such process per arm and round.

Arms: ``bare`` (an offline ``WandbLogger`` and a ``ModelCheckpoint``, what a user has before adding
anything), each callback alone at its defaults, ``all_five``, and ``guide``: the W&B guide's
recipe on the same model, ``WandbLogger(log_model="all")``, ``logger.watch(model, log="all")``
and the guide's sample callback that logs the first validation batch's images and a table; ``empty`` and
``five_empty``, one and five empty ``Callback`` subclasses (Lightning's hook dispatch alone). The
``steps`` case (``benchmarks/bench_steps.py``) wraps no hook: it times whole training steps.
``--fits N`` fits N times in this process (``--barrier`` / ``--parties``: each fit starts with the
other processes' of the same index).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SLOW = 0.001  # a hook call longer than this is listed on its own
_FOLDERS: list[str] = []  # temporary folders this process made, removed at exit


def _callbacks(arm: str) -> list[Any]:
    from lw_callbacks import LogPredictionSamples, MetricSummaries, ShareRunDir, UploadCheckpoints, WatchModel

    make: dict[str, Callable[[], list[Any]]] = {
        "bare": list,
        "share_run_dir": lambda: [ShareRunDir()],
        "metric_summaries": lambda: [MetricSummaries()],
        "watch_model": lambda: [WatchModel()],
        "prediction_samples": lambda: [LogPredictionSamples()],
        "prediction_samples_no_images": lambda: [LogPredictionSamples(log_images=False)],
        "upload_checkpoints": lambda: [UploadCheckpoints()],
        "all_five": lambda: [
            ShareRunDir(), MetricSummaries(), WatchModel(), LogPredictionSamples(), UploadCheckpoints()
        ],
        "guide": lambda: [GuideSamples()],
        "empty": lambda: [_empty(0)()],
        "five_empty": lambda: [_empty(i)() for i in range(5)],
    }
    return make[arm]()


def _empty(index: int) -> type:
    """An empty ``Callback`` subclass of its own (``Empty<index>``): what Lightning's dispatch alone costs."""
    from lightning.pytorch import Callback

    return type(f"Empty{index}", (Callback,), {})


ARMS = (
    "bare", "share_run_dir", "metric_summaries", "watch_model", "prediction_samples",
    "prediction_samples_no_images", "upload_checkpoints", "all_five", "guide", "empty", "five_empty",
)


def _guide_callback() -> type:
    import wandb
    from lightning.pytorch import Callback

    class GuideSamples(Callback):
        """The W&B Lightning guide's ``LogPredictionsCallback``, as printed there (n = 20)."""

        def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                    batch_idx: int, dataloader_idx: int = 0) -> None:
            if batch_idx == 0:
                n = 20
                x, y = batch
                preds = outputs.argmax(dim=1) if outputs.ndim == 2 else outputs
                images = list(x[:n])
                captions = [
                    f"Ground Truth: {y_i} - Prediction: {y_pred}" for y_i, y_pred in zip(y[:n], preds[:n], strict=False)
                ]
                trainer.logger.log_image(key="sample_images", images=images, caption=captions)
                columns = ["image", "ground truth", "prediction"]
                rows = zip(x[:n], y[:n], preds[:n], strict=False)
                data = [[wandb.Image(x_i), y_i, y_pred] for x_i, y_i, y_pred in rows]
                trainer.logger.log_table(key="sample_table", columns=columns, data=data)

    return GuideSamples


GuideSamples: Any = None

_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_save_checkpoint", "on_load_checkpoint",
    "on_exception", "state_dict", "load_state_dict", "on_sanity_check_start", "on_sanity_check_end",
)


class HookClock:
    """Wraps every hook a callback overrides with a timer; ``total`` is the seconds inside all of them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}  # training-thread CPU inside each hook
        self.calls: dict[str, int] = {}
        self.slow: dict[str, list[list[float]]] = {}
        self.total = 0.0  # wall seconds inside the hooks
        self.cpu = 0.0  # CPU seconds of the training thread inside the hooks
        self.step = 0
        # Python's cyclic collector pauses whichever thread allocates when its thresholds are reached: a full
        # collection of this heap takes 0.1-0.2 s, and where it falls (inside a hook or not) follows every
        # allocation of the process. Pauses inside a hook are taken out of its time and reported apart.
        self.gc_wall = 0.0  # wall seconds of every collection so far, any thread
        self.gc_cpu = 0.0  # CPU seconds of the collections run on the training thread
        self.gc_in_hooks = [0.0, 0.0]  # [wall, training-thread CPU] of the collections inside hooks
        self._gc_start: dict[int, tuple[float, float]] = {}
        self._main = threading.get_ident()
        gc.callbacks.append(self._collector)
        self.profiler: Any = None
        if os.environ.get("LW_BENCH_PROFILE"):  # a file: cProfile of the time inside the hooks goes there
            import cProfile

            self.profiler = cProfile.Profile()

    def _collector(self, phase: str, info: dict[str, Any]) -> None:
        me = threading.get_ident()
        if phase == "start":
            self._gc_start[me] = (time.perf_counter(), time.thread_time())
            return
        t0, c0 = self._gc_start.pop(me, (time.perf_counter(), time.thread_time()))
        self.gc_wall += time.perf_counter() - t0
        if me == self._main:
            self.gc_cpu += time.thread_time() - c0

    def wrap(self, callback: Any) -> None:
        from lightning.pytorch import Callback

        for hook in _HOOKS:
            if getattr(type(callback), hook, None) is getattr(Callback, hook, None):
                continue
            key = f"{type(callback).__name__}.{hook}"
            setattr(callback, hook, self._timed(key, getattr(callback, hook)))

    def _timed(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        perf, thread_time = time.perf_counter, time.thread_time
        profiler = self.profiler

        after = int(os.environ.get("LW_BENCH_PROFILE_AFTER", "-1"))  # profile from this global step on

        def timed(*args: Any, **kwargs: Any) -> Any:
            profiling = profiler is not None and self.step > after
            if profiling:
                profiler.enable()
            # thread_time() is a system call, where a busy kernel may switch threads: it stays outside the wall window
            c0 = thread_time()
            g0, gc0 = self.gc_wall, self.gc_cpu
            t0 = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                paused, paused_cpu = self.gc_wall - g0, self.gc_cpu - gc0
                dt = perf() - t0 - paused
                dc = thread_time() - c0 - paused_cpu
                self.gc_in_hooks[0] += paused
                self.gc_in_hooks[1] += paused_cpu
                self.cpu += dc
                if profiling:
                    profiler.disable()
                self.total += dt
                self.seconds[key] = self.seconds.get(key, 0.0) + dt
                self.cpu_seconds[key] = self.cpu_seconds.get(key, 0.0) + dc
                self.calls[key] = self.calls.get(key, 0) + 1
                if dt > SLOW:  # [global step, wall seconds, training-thread CPU seconds]
                    self.slow.setdefault(key, []).append([self.step, round(dt, 6), round(dc, 6)])

        return timed


def cpu_seconds(children_only: bool = False) -> float:
    """User + system CPU seconds of this process, its reaped children, and its live descendants."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.children_user + t.children_system + (0.0 if children_only else t.user + t.system)
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by Python thread name (``native-<id>`` otherwise)."""
    import threading

    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "native")
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def page_faults() -> int:
    """Page faults of this process so far (minor + major): each one costs the kernel a page of work."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_minflt + usage.ru_majflt)


def context_switches() -> tuple[int, int]:
    """Voluntary and involuntary context switches of this process so far."""
    import psutil

    n = psutil.Process().num_ctx_switches()
    return int(n.voluntary), int(n.involuntary)


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def fit_once(arm: str, case: str, quick: bool) -> dict[str, Any]:
    global GuideSamples
    import torch

    threads = int(os.environ.get("LW_BENCH_THREADS", "1"))
    if threads > 0:
        torch.set_num_threads(threads)
    import wandb
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger
    from workload import parameter_count, workload

    GuideSamples = _guide_callback()
    save_dir = tempfile.mkdtemp(prefix="lwbench-run-")
    _FOLDERS.append(save_dir)
    model, dm, epochs, log_every = workload(case, quick)
    logger = WandbLogger(save_dir=save_dir, project="lw-bench", log_model="all" if arm == "guide" else False)
    run = logger.experiment  # the run starts outside the timed window
    run_folder = Path(run.dir).parent
    if arm == "guide":
        logger.watch(model, log="all")  # the guide's call; Lightning's default log_freq=100

    clock = HookClock()
    marks: dict[str, Any] = {"epoch_start": [], "media": []}
    # The fast-steps case times the whole step, so nothing wraps the hooks and no mark runs per batch.
    per_step = case == "steps"

    class Marks(Callback):
        """Notes time, CPU and hook seconds at each training epoch start, and the run folder's bytes."""

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            marks["epoch_start"].append([time.perf_counter(), cpu_seconds(), clock.total, clock.cpu,
                                         time.thread_time(), trainer.global_step])
            marks["batches_from"] = (time.thread_time(), trainer.global_step)

        def _batches_done(self, trainer: Any) -> None:
            """The epoch's training batches are over (validation or the epoch end follows): note their
            training-thread CPU and optimizer steps."""
            start = marks.pop("batches_from", None)
            if start is not None:
                marks.setdefault("batches", []).append([time.thread_time() - start[0], trainer.global_step - start[1]])

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._batches_done(trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._batches_done(trainer)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:  # before the tested callbacks' own
            marks["train_end"] = [time.perf_counter(), cpu_seconds(), clock.total, clock.cpu,
                                  time.thread_time(), trainer.global_step]

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                marks["media"].append(_tree_bytes(run_folder / "files" / "media"))

    class StepMarks(Marks):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            clock.step = trainer.global_step

    tested = _callbacks(arm)
    if not per_step:
        for cb in tested:
            clock.wrap(cb)
    trainer = Trainer(
        logger=logger,
        callbacks=[Marks() if per_step else StepMarks(), ModelCheckpoint(monitor="val_acc", mode="max"), *tested],
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=save_dir,
    )
    threads0 = thread_cpu()
    faults0 = page_faults()
    switches0 = context_switches()
    service0, cpu0, t0 = cpu_seconds(children_only=True), cpu_seconds(), time.perf_counter()
    trainer.fit(model, datamodule=dm)
    t_fit = time.perf_counter()
    wandb.finish()
    t1, cpu1, service1 = time.perf_counter(), cpu_seconds(), cpu_seconds(children_only=True)
    threads1 = thread_cpu()
    faults1 = page_faults()
    switches1 = context_switches()
    if clock.profiler is not None:
        clock.profiler.dump_stats(os.environ["LW_BENCH_PROFILE"])
    steady = marks["epoch_start"][1] if len(marks["epoch_start"]) > 1 else marks["epoch_start"][0]
    end = marks["train_end"]
    media = marks["media"]
    return {
        "arm": arm,
        "case": case,
        "params": parameter_count(model),
        "threads": torch.get_num_threads(),
        "wall": t1 - t0,
        "wall_fit": t_fit - t0,
        "finish": t1 - t_fit,
        "cpu": cpu1 - cpu0,
        "cpu_service": service1 - service0,
        "cpu_threads": {k: round(v - threads0.get(k, 0.0), 3) for k, v in threads1.items()},
        "page_faults": faults1 - faults0,
        "context_switches": [b - a for a, b in zip(switches0, switches1, strict=True)],
        "wall_steady": end[0] - steady[0],
        "cpu_steady": end[1] - steady[1],
        "thread_cpu_steady": end[4] - steady[4],  # the training thread's CPU over the steady epochs
        "steps_steady": end[5] - steady[5],
        # the same over the training batches of those epochs only (no validation, no epoch ends)
        "batch_cpu_steady": sum(cpu for cpu, _ in marks.get("batches", [])[1:]),
        "batch_steps_steady": sum(steps for _, steps in marks.get("batches", [])[1:]),
        "hooks": clock.total,
        "hooks_steady": end[2] - steady[2],
        "hooks_cpu": clock.cpu,
        "hooks_cpu_steady": end[3] - steady[3],
        "hook_seconds": clock.seconds,
        "hook_cpu_seconds": clock.cpu_seconds,
        "hook_calls": clock.calls,
        "gc_in_hooks": clock.gc_in_hooks,  # [wall, thread CPU] seconds, taken out of the hook columns
        "gc_seconds": clock.gc_wall,
        "slow_calls": clock.slow,
        "media_bytes_per_epoch": [b - a for a, b in zip([0, *media], media, strict=False)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arm", choices=ARMS)
    parser.add_argument("--case", default="cnn", choices=("cnn", "digits", "steps"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fits", type=int, default=1, help="fit this many times in this process, one after another")
    parser.add_argument("--barrier", default=None,
                        help="a folder shared with --parties processes: each fit starts when all of them are ready "
                             "for it, so the fits of one index run at the same time")
    parser.add_argument("--parties", type=int, default=1)
    args = parser.parse_args()
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        if name not in os.environ:
            os.environ[name] = tempfile.mkdtemp(prefix=f"lwbench-{name.lower()}-")
            _FOLDERS.append(os.environ[name])
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import shutil

    kept = len(_FOLDERS)
    for index in range(args.fits):
        if args.barrier:
            _wait_for_all(Path(args.barrier), index, args.arm, args.parties)
        result = fit_once(args.arm, args.case, args.quick)
        result["fit_index"] = index
        print("LWBENCH " + json.dumps(result), flush=True)
        for folder in _FOLDERS[kept:]:  # this fit's run folders are not kept
            shutil.rmtree(folder, ignore_errors=True)
        del _FOLDERS[kept:]
    for folder in _FOLDERS:  # after the measurement: the runs' folders are not kept
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_all(folder: Path, index: int, arm: str, parties: int, timeout: float = 3600.0) -> None:
    """Note that ``arm`` is ready for fit ``index`` and wait until ``parties`` processes are."""
    (folder / f"{index}.{arm}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(f"{index}.*"))) < parties and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
