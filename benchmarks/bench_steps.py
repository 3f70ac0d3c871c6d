"""Per-step cost on fast steps: ``python benchmarks/bench_steps.py [--rounds N] [--quick] [--json FILE]``.

A model whose training step takes about a millisecond, nearly all of it Lightning's own loop
(``Linear(8, 2)`` on 1x2x4 inputs, batch size 2, 5 epochs of 800 steps, 10 validation batches of 2
each, ``log_every_n_steps=50``, offline). Every round, each arm fits in its own thread of one
process pinned to one core (W&B's service on the other), and the threads take turns in blocks of
``BLOCK`` = 100 training steps, passing a token: each block runs with the core to itself, and the
arms' blocks of the same steps run a fraction of a second apart, so whatever slows the machine down
falls on every arm alike. Every block holds the same work (two of Lightning's logging steps and one
of ``WatchModel``'s). Nothing wraps the hooks: the measure is the training thread's CPU time per
optimizer step over each block of the steady epochs (the four after the first). An arm's *extra* in
a round is the median, over those blocks, of its block's time minus the bare arm's block of the same
steps (the median leaves out the blocks something outside the fit slowed down); the tables give
the median over rounds. The collector's pauses on each arm's thread are counted in its blocks, and
shown apart; everything the arms set up is frozen out of the collector's sight (``gc.freeze``)
before the first block, so that one full collection of the shared heap does not land on one arm.

Why one process: two processes fitting the same arm differed by 50 to 90 µs a step in every round,
more than the costs measured here (where their memory happens to lie); in one process, two copies
of the same arm differ by a few µs (``--arms bare bare~2``).

Arms: ``bare`` (an offline ``WandbLogger`` and a ``ModelCheckpoint``), ``empty`` and ``five_empty``
(one and five empty ``Callback`` subclasses: what Lightning's hook dispatch costs), ``guide`` (the W&B
guide's recipe: ``log_model="all"``, ``logger.watch(log="all")`` and its sample callback), each of
the five callbacks alone at its defaults, and ``all_five``. ``<arm>~2`` is a second copy of an arm.

``--quick``: 200 steps an epoch, arms ``bare``, ``five_empty``, ``all_five`` and ``guide``, one round
(the row ``benchmarks/run.py --quick`` prints). ``--table FILE`` prints the table of a ``--json`` file.
``--hooks``: Lightning's dispatch of each per-step hook per callback, timed in a loop at one step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ARMS = (
    "bare", "empty", "five_empty", "guide", "share_run_dir", "metric_summaries", "watch_model",
    "prediction_samples", "upload_checkpoints", "all_five",
)
QUICK_ARMS = ("bare", "five_empty", "all_five", "guide")
LABELS = {
    "bare": "bare: `WandbLogger` + `ModelCheckpoint`",
    "empty": "+ one empty `Callback`",
    "five_empty": "+ five empty `Callback`s",
    "guide": "the guide's recipe (`log_model=\"all\"`, `watch(log=\"all\")`, its sample callback)",
    "share_run_dir": "+ `ShareRunDir()`",
    "metric_summaries": "+ `MetricSummaries()`",
    "watch_model": "+ `WatchModel()`",
    "prediction_samples": "+ `LogPredictionSamples()`",
    "upload_checkpoints": "+ `UploadCheckpoints()`",
    "all_five": "+ all five at defaults",
}
ALONE = ("share_run_dir", "metric_summaries", "watch_model", "prediction_samples", "upload_checkpoints")
TABLE = "steps"


def _steady(rec: dict[str, Any]) -> dict[int, tuple[float, int, float]]:
    """First step -> (CPU seconds, optimizer steps, collector seconds) of each block of the steady epochs."""
    return {int(b[3]): (float(b[1]), int(b[2]), float(b[4]) if len(b) > 4 else 0.0)
            for b in rec.get("blocks", ()) if b[0] >= 1 and b[2] > 0}


def per_step(rec: dict[str, Any]) -> float:
    """Training-thread CPU seconds per optimizer step over the steady epochs' training batches."""
    if "blocks" not in rec:  # a record of the earlier schedule (a process per arm)
        return float(rec["batch_cpu_steady"]) / max(1, int(rec["batch_steps_steady"]))
    blocks = _steady(rec).values()
    return sum(b[0] for b in blocks) / max(1, sum(b[1] for b in blocks))


def per_step_fit(rec: dict[str, Any]) -> float:
    """Training-thread CPU seconds per optimizer step over the whole steady epochs (their validation and
    epoch ends included: per-epoch work, such as logging samples or handing checkpoints over)."""
    return float(rec["thread_cpu_steady"]) / max(1, int(rec["steps_steady"]))


def gc_per_step(rec: dict[str, Any]) -> float:
    """The collector's pauses on the arm's thread per optimizer step, in the steady blocks."""
    blocks = _steady(rec).values()
    return sum(b[2] for b in blocks) / max(1, sum(b[1] for b in blocks))


def paired(rec: dict[str, Any], base: dict[str, Any]) -> float:
    """Seconds per step ``rec`` took over ``base`` in one round: the median over the blocks of the same
    steps of the difference (the difference of the means for records without blocks)."""
    mine, theirs = _steady(rec), _steady(base)
    diffs = [mine[k][0] / mine[k][1] - theirs[k][0] / theirs[k][1] for k in mine if k in theirs]
    return statistics.median(diffs) if diffs else per_step(rec) - per_step(base)


def _rounds(records: Sequence[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec.get("table", rec["case"]) == TABLE:
            out.setdefault(int(rec["round"]), {})[rec["arm"]] = rec
    return out


def extras(records: Sequence[dict[str, Any]], arm: str, base: str = "bare", of: Any = paired) -> list[float]:
    """Per round: ``arm``'s seconds per step over ``base``'s in the same round (``of``: which measure)."""
    out = []
    for got in _rounds(records).values():
        if arm in got and base in got:
            out.append(of(got[arm], got[base]) if of is paired else of(got[arm]) - of(got[base]))
    return out


def _mmm(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def table(records: Sequence[dict[str, Any]]) -> str:
    """The per-step table: extra µs per step over bare, min / median / max over rounds, and the checks."""
    rounds = _rounds(records)
    if not rounds:
        return ""
    arms = list(dict.fromkeys([arm for arm in ARMS if any(arm in got for got in rounds.values())]
                              + [arm for got in rounds.values() for arm in got]))
    bare = [per_step(got["bare"]) for got in rounds.values() if "bare" in got]
    lines = [
        "",
        f"### fast steps: `Linear(8, 2)`, batch 2, {len(rounds)} rounds; bare's training step "
        f"{1e6 * statistics.median(bare):.0f} µs of training-thread CPU (median)",
        "",
        "Extra training-thread CPU per optimizer step over bare's: in each round the median over the steady "
        "epochs' blocks of 100 steps of the difference to bare's block of the same steps; min / median / max "
        "over rounds. Beside it: the same from the blocks' means (what a slowed-down block does to it), the "
        "collector's pauses on the arm's thread per step (already in the first columns), and the extra over "
        "the whole steady epochs, validation and epoch ends included (per-epoch work spread over the steps).",
        "",
        "| arm | extra per training step (µs) | share of bare's step (%) | from the means (µs) "
        "| collector (µs per step) | whole epochs (µs per step) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        if arm == "bare":
            continue
        ext = extras(records, arm)
        share = [100 * e / per_step(got["bare"]) for e, got in zip(ext, (g for g in rounds.values()
                 if arm in g and "bare" in g), strict=True)]
        gcs = [1e6 * gc_per_step(got[arm]) for got in rounds.values() if arm in got]
        fit = extras(records, arm, of=per_step_fit) if all("thread_cpu_steady" in g.get(arm, {"thread_cpu_steady": 0})
                                                          for g in rounds.values()) else []
        lines.append(f"| {LABELS.get(arm, arm)} | {_mmm([1e6 * v for v in ext], '{:.1f}')} | "
                     f"{statistics.median(share):.2f} | "
                     f"{statistics.median([1e6 * v for v in extras(records, arm, of=per_step)]):.1f} | "
                     f"{statistics.median(gcs):.1f} | "
                     f"{statistics.median([1e6 * v for v in fit]) if fit else float('nan'):.0f} |")
    lines += ["", *checks(records)]
    return "\n".join(lines)


def checks(records: Sequence[dict[str, Any]]) -> list[str]:
    """The comparisons the fast-steps goal names (training steps), as medians over rounds."""
    out = []
    five = extras(records, "five_empty")
    ours = extras(records, "all_five")
    guide = extras(records, "guide")
    if five and ours:
        med5, med = statistics.median(five), statistics.median(ours)
        out.append(f"- all five: {1e6 * med:.1f} µs per training step against {1e6 * med5:.1f} µs for five empty "
                   f"callbacks: {med / med5:.2f}x (goal: at most 1.2x)" + (
                       f"; the guide's recipe {1e6 * statistics.median(guide):.1f} µs (goal: all five below it)"
                       if guide else ""))
    for arm in ALONE:
        over = extras(records, arm, base="empty")
        if over:
            out.append(f"- {LABELS[arm][2:]} alone: {1e6 * statistics.median(over):+.1f} µs per training step "
                       f"against one empty callback (per round {_mmm([1e6 * v for v in over], '{:+.1f}')}; "
                       "goal: within 10 µs)")
    return out


STEP_HOOKS = (
    "on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_train_batch_end",
)


def _offline_wandb(quiet: bool) -> None:
    """Offline W&B with its folders in temporary ones (unless set); ``quiet``: no console capture and
    no warnings either (the workers whose output is parsed)."""
    import os
    import warnings

    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ.setdefault(name, tempfile.mkdtemp(prefix=f"lwbench-{name.lower()}-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if quiet:
        os.environ.setdefault("WANDB_CONSOLE", "off")
        warnings.filterwarnings("ignore")


def hook_costs(arm: str = "all_five", at_step: int = 120, calls: int = 2000, repeats: int = 7) -> dict[str, float]:
    """Microseconds per optimizer step that Lightning's dispatch of the per-step hooks costs for each
    callback, in one fit paused at a step that logs nothing: ``<callback>.state_key``, and for each hook
    ``<callback>.<hook>`` (Lightning's own loop: ``getattr``, ``state_key`` in the profiler's name, the
    profiler's context, the call), the best of ``repeats`` runs of ``calls`` calls."""
    import tempfile
    import time

    _offline_wandb(quiet=False)
    import fits
    import torch
    import wandb
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger
    from workload import workload

    torch.set_num_threads(1)
    fits.GuideSamples = fits._guide_callback()
    model, dm, _, log_every = workload("steps", quick=True)
    save_dir = tempfile.mkdtemp(prefix="lwbench-run-")
    costs: dict[str, float] = {}

    class Probe(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step != at_step:
                return
            optimizer = trainer.optimizers[0]
            loss = outputs["loss"]
            args = {
                "on_train_batch_start": (batch, batch_idx), "on_before_zero_grad": (optimizer,),
                "on_before_backward": (loss,), "on_after_backward": (), "on_before_optimizer_step": (optimizer,),
                "on_train_batch_end": (outputs, batch, batch_idx),
            }
            profiler = trainer.profiler
            for cb in trainer.callbacks:
                if cb is self or isinstance(cb, ModelCheckpoint) or type(cb).__name__ == "Marks":
                    continue
                name = type(cb).__name__
                best = min(_timed(lambda cb=cb: cb.state_key, calls) for _ in range(repeats))
                costs[f"{name}.state_key"] = costs.get(f"{name}.state_key", 0.0) + 1e6 * best * len(STEP_HOOKS)
                for hook in STEP_HOOKS:
                    extra = args[hook]

                    def dispatch(cb: Any = cb, hook: str = hook, extra: tuple[Any, ...] = extra) -> None:
                        fn = getattr(cb, hook)
                        if callable(fn):
                            with profiler.profile(f"[Callback]{cb.state_key}.{hook}"):
                                fn(trainer, pl_module, *extra)

                    best = min(_timed(dispatch, calls) for _ in range(repeats))
                    costs[f"{name}.{hook}"] = costs.get(f"{name}.{hook}", 0.0) + 1e6 * best

    def _timed(fn: Any, n: int) -> float:
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        return (time.thread_time() - t0) / n

    logger = WandbLogger(save_dir=save_dir, project="lw-bench", log_model="all" if arm == "guide" else False)
    logger.experiment  # noqa: B018
    if arm == "guide":
        logger.watch(model, log="all")
    trainer = Trainer(
        logger=logger, callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"), *fits._callbacks(arm), Probe()],
        max_epochs=1, limit_train_batches=at_step + 2, accelerator="cpu", devices=1, log_every_n_steps=log_every,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=save_dir, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    wandb.finish()
    return costs


def hooks_table(arms: Sequence[str] = ("five_empty", "all_five")) -> str:
    """Per callback: µs per optimizer step of its ``state_key`` and of each per-step hook's dispatch."""
    lines = ["| arm | callback | state_key x6 | " + " | ".join(h[3:] for h in STEP_HOOKS) + " | per step |",
             "|---|---|---|" + "---|" * len(STEP_HOOKS) + "---|"]
    for arm in arms:
        costs = hook_costs(arm)
        for name in dict.fromkeys(k.split(".")[0] for k in costs):
            row = [costs.get(f"{name}.{h}", 0.0) for h in STEP_HOOKS]
            lines.append(f"| {arm} | {name} | {costs[name + '.state_key']:.2f} | "
                         + " | ".join(f"{v:.2f}" for v in row) + f" | {sum(row):.2f} |")
    return "\n".join(lines)


BLOCK = 100  # training steps an arm runs per turn: two of Lightning's logging intervals, one of WatchModel's


class _Ring:
    """A token passed among the arms' training threads: an arm runs a block of ``BLOCK`` training
    steps only while it holds it, so the arms take turns on the core, block by block, in a new random
    order each time round (so that no arm always follows the same one, whose block leaves the caches
    its way). An arm keeps the token from the end of its last block through its fit's end and
    ``finish``, so that work never runs beside another arm's block; an arm that failed is passed over."""

    def __init__(self, size: int, seed: int, timeout: float = 600.0) -> None:
        import random

        self.size, self.timeout = size, timeout
        self.turns = [threading.Event() for _ in range(size)]
        self.holding = [False] * size
        self.gone = [False] * size
        self.all_ready = threading.Barrier(size)
        self._random = random.Random(seed)
        self.order: list[int] = []  # who holds the token, turn after turn: one permutation per time round
        self.at = 0
        self._round()
        self.turns[self.order[0]].set()
        # the cyclic collector's pauses on each arm's thread, CPU seconds
        self.gc_seconds = [0.0] * size
        self.threads: dict[int, int] = {}  # thread ident -> position
        self._gc_from: dict[int, float] = {}

    def _round(self) -> None:
        turn = list(range(self.size))
        self._random.shuffle(turn)
        self.order += turn

    def collector(self, phase: str, info: dict[str, Any]) -> None:
        me = threading.get_ident()
        if me not in self.threads:
            return
        if phase == "start":
            self._gc_from[me] = time.thread_time()
        elif me in self._gc_from:
            self.gc_seconds[self.threads[me]] += time.thread_time() - self._gc_from.pop(me)

    def take(self, i: int) -> None:
        """Pass the token on if ``i`` holds it, and wait until it comes back."""
        self.give(i)
        if not self.turns[i].wait(self.timeout):
            raise TimeoutError(f"the token did not come back in {self.timeout:.0f} s")
        self.turns[i].clear()
        self.holding[i] = True

    def give(self, i: int) -> None:
        if not self.holding[i]:
            return
        self.holding[i] = False
        for _ in range(2 * self.size):
            self.at += 1
            if self.at == len(self.order):
                self._round()
            nxt = self.order[self.at]
            if not self.gone[nxt]:
                self.turns[nxt].set()
                return

    def leave(self, i: int) -> None:
        self.gone[i] = True
        self.give(i)


def _prepare(arm: str, quick: bool) -> tuple[Any, ...]:
    """An arm's module, data, epochs, logging interval and logger with its run started (in the main thread,
    one arm after the other: each its own run, W&B's ``reinit="create_new"`` leaving the others running)."""
    from lightning.pytorch.loggers import WandbLogger
    from workload import workload

    model, dm, epochs, log_every = workload("steps", quick)
    save_dir = tempfile.mkdtemp(prefix="lwbench-run-")
    logger = WandbLogger(save_dir=save_dir, project="lw-bench", reinit="create_new",
                         log_model="all" if arm.startswith("guide") else False)
    logger.experiment  # noqa: B018 - the run starts here
    if arm.startswith("guide"):
        # wandb.watch and its hooks use the global run (wandb.run), which "create_new" leaves unset: make the
        # guide's run the global one (it is prepared last: every other arm's logger holds its own run already)
        from wandb.sdk.wandb_init import _set_global_run

        _set_global_run(logger.experiment)
        logger.watch(model, log="all")
    return model, dm, epochs, log_every, logger


def _fit_in_ring(arm: str, position: int, ring: _Ring, prepared: tuple[Any, ...], out: dict[str, Any]) -> None:
    """One fit of ``arm`` (prepared by ``_prepare``, fitted in turns with the others) into ``out``."""
    import threading
    import time

    import fits
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    ring.threads[threading.get_ident()] = position
    blocks: list[list[float]] = []
    mark: dict[str, Any] = {}
    first = [True]

    class Turns(Callback):
        """Takes a turn at every ``BLOCK``-th training batch and notes each block's training-thread CPU."""

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx % BLOCK:
                return
            self._block_done(trainer)
            if first[0]:  # the first block waits until every arm is set up
                first[0] = False
                if ring.all_ready.wait(ring.timeout) == 0:
                    # what every arm has set up moves out of the collector's sight: a full collection of
                    # the shared heap (about 0.1 s, landing on whichever thread allocates then) would
                    # otherwise fall on one block of one arm; objects made from here on are collected
                    gc.freeze()

            ring.take(position)
            mark["from"] = (time.thread_time(), trainer.global_step, ring.gc_seconds[position])

        def _block_done(self, trainer: Any) -> None:
            start = mark.pop("from", None)
            if start is not None:  # [epoch, CPU seconds, optimizer steps, first step, of which collecting]
                blocks.append([trainer.current_epoch, time.thread_time() - start[0], trainer.global_step - start[1],
                               start[1], ring.gc_seconds[position] - start[2]])

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._block_done(trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._block_done(trainer)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch == 1:  # the steady epochs, validation and epoch ends included
                mark["steady"] = (time.thread_time(), trainer.global_step)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            start = mark.get("steady", (time.thread_time(), trainer.global_step))
            out.update(thread_cpu_steady=time.thread_time() - start[0], steps_steady=trainer.global_step - start[1])

    try:
        model, dm, epochs, log_every, logger = prepared
        run = logger.experiment
        trainer = Trainer(
            logger=logger,
            callbacks=[Turns(), ModelCheckpoint(monitor="val_acc", mode="max"), *fits._callbacks(arm.split("~")[0])],
            max_epochs=epochs, accelerator="cpu", devices=1, log_every_n_steps=log_every, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=logger.save_dir,
        )
        trainer.fit(model, datamodule=dm)
        run.finish()
        out.update(arm=arm, case="steps", position=position, blocks=blocks, steps=trainer.global_step)
    except BaseException as err:  # reported by the caller; the ring goes on
        out.update(arm=arm, error=f"{type(err).__name__}: {err}")
        if first[0]:
            ring.all_ready.abort()
    finally:
        ring.leave(position)


def _worker(arms: Sequence[str], rounds: int, quick: bool) -> None:
    """In this process (pinned to one core): every round, each arm fits in its own thread, the threads
    taking turns block by block (``_Ring``). Prints one ``LWBENCH`` line per fit."""
    import os
    import shutil
    import threading

    _offline_wandb(quiet=True)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import fits
    import torch

    torch.set_num_threads(1)
    fits.GuideSamples = fits._guide_callback()
    # what W&B's first image or table loads, loaded here, before the arms' threads: two threads importing
    # PIL at once (LogPredictionSamples' warm-up and the guide's first image) can meet a half-made module
    import PIL.PngImagePlugin  # noqa: F401
    import requests  # noqa: F401
    from wandb.sdk.artifacts.storage_policies import wandb_storage_policy  # noqa: F401
    from wandb.sdk.data_types import histogram, image, table  # noqa: F401

    service_core = os.environ.get("LW_BENCH_SERVICE_CORE")
    for r in range(rounds):
        order = [arms[(k + r) % len(arms)] for k in range(len(arms))]
        ring = _Ring(len(order), seed=r)
        gc.callbacks.append(ring.collector)
        outs: list[dict[str, Any]] = [{} for _ in order]
        # the guide's run last: once global, a WandbLogger made after it would take it for its own
        prepared = {arm: _prepare(arm, quick) for arm in sorted(order, key=lambda a: a.startswith("guide"))}
        threads = [threading.Thread(target=_fit_in_ring, args=(arm, k, ring, prepared[arm], outs[k]),
                                    name=f"fit-{arm}") for k, arm in enumerate(order)]
        for t in threads:
            t.start()
        if service_core:  # W&B's service process works beside the fits on another core
            import psutil

            for _ in range(100):
                children = psutil.Process().children(recursive=True)
                if children:
                    break
                threading.Event().wait(0.1)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.cpu_affinity([int(service_core)])
        for t in threads:
            t.join()
        gc.callbacks.remove(ring.collector)
        gc.unfreeze()
        gc.collect()
        for out in outs:
            out["fit_index"] = r
            print("LWBENCH " + json.dumps(out), flush=True)
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        if os.environ[name].startswith(tempfile.gettempdir()):
            shutil.rmtree(os.environ[name], ignore_errors=True)


def run(rounds: int, quick: bool, json_path: str | None = None, arms: Sequence[str] | None = None
        ) -> list[dict[str, Any]]:
    """Fit the arms ``rounds`` times and return the records.

    One process, pinned to one core, fits every arm of a round at once, each in its own thread; the
    threads take turns in blocks of ``BLOCK`` training steps (a token passed among them), so each
    block runs with the core to itself, the arms' blocks alternate a fraction of a second apart
    (whatever slows the machine down falls on every arm alike), and no arm pays for a process of its
    own (two processes with identical fits differ by more than the costs measured here, by where
    their memory happens to lie). W&B's service runs on another core where there is one."""
    import shutil
    import subprocess

    import run as overhead

    where = overhead.machine()
    print(f"machine: {where}", flush=True)
    arms = tuple(arms or (QUICK_ARMS if quick else ARMS))
    mine = overhead.cores()
    cmd, env = overhead._command("bare", "steps", quick)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rounds", str(rounds), "--arms", *arms,
           *(["--quick"] if quick else [])]
    if len(mine) > 1:
        env["LW_BENCH_SERVICE_CORE"] = str(mine[0])
    pin = ["taskset", "-c", str(mine[-1])] if shutil.which("taskset") else []
    done = subprocess.run([*pin, *cmd], capture_output=True, text=True, env=env, check=False)
    records: list[dict[str, Any]] = []
    for line in done.stdout.splitlines():
        if line.startswith("LWBENCH "):
            rec = json.loads(line[len("LWBENCH "):])
            if "error" in rec:
                print(f"{rec['arm']} failed: {rec['error']}", file=sys.stderr, flush=True)
                continue
            rec.update(round=rec["fit_index"], schedule="ring", core=mine[-1], malloc=overhead.MALLOC, table=TABLE,
                       block=BLOCK)
            records.append(rec)
    if done.returncode != 0:
        print(f"the worker failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}",
              file=sys.stderr, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": where, "records": records}))
    return records


COUNT_FROM, COUNT_STEPS = 1000, 200  # the counted window: steps 1000-1199, inside the second epoch


def _count_worker(arm: str) -> None:
    """Under callgrind (instrumentation off at start): one fit of ``arm`` that turns callgrind's
    instrumentation on for training steps ``COUNT_FROM`` to ``COUNT_FROM + COUNT_STEPS`` only."""
    import os
    import subprocess

    _offline_wandb(quiet=True)
    import fits
    import torch
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(1)
    fits.GuideSamples = fits._guide_callback()

    class Window(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step in (COUNT_FROM, COUNT_FROM + COUNT_STEPS):
                on = "on" if trainer.global_step == COUNT_FROM else "off"
                subprocess.run(["callgrind_control", "-i", on, str(os.getpid())], check=True, capture_output=True)

    model, dm, _, log_every, logger = _prepare(arm, quick=False)
    trainer = Trainer(
        logger=logger, callbacks=[Window(), ModelCheckpoint(monitor="val_acc", mode="max"), *fits._callbacks(arm)],
        max_steps=COUNT_FROM + COUNT_STEPS + 1, accelerator="cpu", devices=1, log_every_n_steps=log_every,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=logger.save_dir,
    )
    trainer.fit(model, datamodule=dm)
    logger.experiment.finish()


def instructions(arms: Sequence[str], parallel: int = 2) -> dict[str, float]:
    """Instructions per training step of each arm's training thread over the counted window, under
    valgrind's callgrind: a count that does not depend on what else the machine does (but is not time:
    a cache miss costs no instruction). About two minutes an arm."""
    import os
    import re
    import shutil
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import run as overhead

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind and callgrind_control on PATH (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="lwbench-count-"))
    _, env = overhead._command("bare", "steps", False)
    env["ATEN_CPU_CAPABILITY"] = "avx2"  # what valgrind decodes

    def count(arm: str) -> float:
        out = work / arm
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
               f"--callgrind-out-file={out}.%p", sys.executable, str(Path(__file__).resolve()), "--count-worker", arm]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{arm}: {done.stderr[-2000:]}")
        main = sorted(work.glob(f"{arm}.*-01"))  # thread 1: the training thread
        text = main[-1].read_text()
        found = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE)  # "summary:" counts from the start, 0 here
        if found is None:
            raise RuntimeError(f"{arm}: no total in {main[-1]}")
        return int(found.group(1)) / COUNT_STEPS

    with ThreadPoolExecutor(parallel) as pool:
        got = dict(zip(arms, pool.map(count, arms), strict=True))
    for f in work.iterdir():
        os.remove(f)
    work.rmdir()
    return got


def cases(rounds: int) -> None:
    """``benchmarks/run.py --micro`` / ``--only bench_steps``: the fast-steps table."""
    print(table(run(rounds, False)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 10; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="200 steps an epoch, four arms, one round")
    parser.add_argument("--json", default=None, help="write every fit's record to this file")
    parser.add_argument("--arms", nargs="*", default=None,
                        help=f"only these arms, of {', '.join(ARMS)} (``<arm>~2``: a second copy of an arm, "
                             "to see how far two identical arms differ)")
    parser.add_argument("--table", default=None, help="only print the table of a file written by --json")
    parser.add_argument("--hooks", nargs="*", default=None,
                        help="instead: in one fit per arm (default five_empty all_five), µs per step of each "
                             "callback's state_key and per-step hook dispatch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--instructions", action="store_true",
                        help="instead: instructions per training step of each arm under valgrind's callgrind")
    args = parser.parse_args()
    if args.count_worker:
        _count_worker(args.count_worker)
        return
    unknown = [a for a in args.arms or () if a.split("~")[0] not in ARMS]
    if unknown:
        parser.error(f"unknown arms: {', '.join(unknown)}")
    if args.instructions:
        arms = args.arms or ARMS
        got = instructions(arms)
        print("| arm | instructions per training step | over bare |\n|---|---|---|")
        for arm in arms:
            print(f"| {LABELS.get(arm, arm)} | {got[arm]:,.0f} | {got[arm] - got.get('bare', got[arm]):+,.0f} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"instructions_per_step": got, "window": [COUNT_FROM, COUNT_STEPS]}))
        return
    if args.worker:
        _worker(args.arms or (QUICK_ARMS if args.quick else ARMS), args.rounds or 1, args.quick)
        return
    if args.hooks is not None:
        print(hooks_table(args.hooks or ("five_empty", "all_five")), flush=True)
        return
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(f"machine: {data['machine']}")
        print(table(data["records"]))
        return
    records = run(args.rounds or (1 if args.quick else 10), args.quick, args.json, args.arms)
    print(table(records), flush=True)


if __name__ == "__main__":
    main()
