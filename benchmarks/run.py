"""The overhead benchmark: ``python benchmarks/run.py [--rounds N] [--quick] [--arms A B ...] [--micro]``.

Every arm of a case is fit in its own fresh Python process (``benchmarks/fits.py``), so one-time
costs (imports, the first media value of a process) are counted once per fit, as a user pays them.
A round fits every arm once; the ratios of an arm to ``bare`` are taken within a round, then
summarised as min / median / max over rounds.

``--schedule together`` (the default where ``taskset`` exists): a round starts all its arms at once,
every process (and its W&B service) pinned to one core, so the scheduler interleaves them a few
milliseconds apart and whatever slows that core down falls on every arm alike; as many rounds run
at once as the process has cores. On a shared or virtual machine, whose speed drifts by 10-20 %
from one minute to the next, this is what makes CPU ratios of a few percent readable; wall times of
such fits are of interleaved processes, and the hook columns use the training thread's CPU time.
``--schedule sequential``: one fit at a time, in an order that rotates and reverses from round to
round, for wall times.

``--malloc fixed`` (the default) fixes glibc's mmap and trim thresholds in every fit (see
``FIXED_MALLOC``): with glibc's own moving thresholds, whether a fit's per-step tensors are faulted
in afresh on every step (+15-20 % CPU) is decided by where a few allocations happened to land, and
flips between identical-looking fits; ``--malloc default`` measures with glibc's behaviour as is.

Cases: ``cnn``, a CIFAR-sized CNN (321,290 parameters, 3x32x32 synthetic images, 100 optimizer steps
and 20 validation batches per epoch, 3 epochs, ``log_every_n_steps=50``), every arm: by default
in two groups of rounds, ``bare``, ``all_five`` and ``guide``, then ``bare`` and each callback
alone (10 rounds each); ``digits``, the
half-second digits fit as a smoke case, ``bare`` and ``all_five``; ``steps``, fast steps of about a
millisecond (``benchmarks/bench_steps.py``: the callbacks' extra CPU per step, against empty callbacks).
``--quick`` (under 5 minutes): the CNN cut to 2 epochs of 20 steps and 4 validation batches, arms
``bare``, ``all_five`` and ``guide``, 2 rounds, one digits round, and one round of fast steps.
``--micro`` also runs the in-process cases of ``benchmarks/bench_*.py`` (checkpoint hand-over,
validation on 20,000 images, ShareRunDir under DDP); ``--only bench_NAME`` runs just those.

Torch runs on ``LW_BENCH_THREADS`` intra-op threads (default 1): on a small shared CPU a second
thread mostly waits for a descheduled core, and W&B's service process needs a core of its own.
``--json FILE`` writes every fit's raw record; ``--table FILE`` prints the tables again from it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL_ARMS = (
    "bare", "share_run_dir", "metric_summaries", "watch_model", "prediction_samples",
    "prediction_samples_no_images", "upload_checkpoints", "all_five", "guide",
)
QUICK_ARMS = ("bare", "all_five", "guide")
EACH_ALONE = tuple(arm for arm in FULL_ARMS if arm not in QUICK_ARMS)
LABELS = {
    "bare": "bare: `WandbLogger` + `ModelCheckpoint`",
    "share_run_dir": "+ `ShareRunDir()`",
    "metric_summaries": "+ `MetricSummaries()`",
    "watch_model": "+ `WatchModel()`",
    "prediction_samples": "+ `LogPredictionSamples()`",
    "prediction_samples_no_images": "+ `LogPredictionSamples(log_images=False)`",
    "upload_checkpoints": "+ `UploadCheckpoints()`",
    "all_five": "+ all five at defaults",
    "guide": "the guide's recipe (`log_model=\"all\"`, `watch(log=\"all\")`, its sample callback)",
}
CALLBACK_OF_ARM = {
    "share_run_dir": "ShareRunDir",
    "metric_summaries": "MetricSummaries",
    "watch_model": "WatchModel",
    "prediction_samples": "LogPredictionSamples",
    "upload_checkpoints": "UploadCheckpoints",
}


# glibc's malloc returns the top of its heap to the kernel when more than a threshold is free there,
# and that threshold moves with the largest block freed so far. Whether a CNN fit's per-step tensors
# land in memory that is handed back and faulted in again on every step (about 8,000 page faults a
# step here, +15-20 % CPU for the whole fit) then depends on where a few long-lived allocations
# happened to land: any change of allocation order flips it, in the bare arm too. Fixed thresholds
# take that lottery out of the comparison; ``--malloc default`` keeps glibc's own behaviour.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
MALLOC = "fixed"  # set by main()


def _command(arm: str, case: str, quick: bool) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, str(HERE / "fits.py"), arm, "--case", case, *(["--quick"] if quick else [])]
    env = dict(os.environ)
    if MALLOC == "fixed":
        env.update(FIXED_MALLOC)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return cmd, env


def _record(cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("LWBENCH "):
            rec: dict[str, Any] = json.loads(line[len("LWBENCH "):])
            return rec
    raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")


def fit(arm: str, case: str, quick: bool, timeout: float = 900.0) -> dict[str, Any]:
    """Run one fit in a fresh process and return its record."""
    cmd, env = _command(arm, case, quick)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    return _record(cmd, done.returncode, done.stdout, done.stderr)


def fit_together(
    arms: Sequence[str], case: str, quick: bool, core: int, timeout: float = 3600.0
) -> list[dict[str, Any]]:
    """Fit every arm at once, each in its own fresh process, all of them (and their W&B services) on ``core``.

    The scheduler interleaves the processes a few milliseconds apart, so whatever slows the core down
    (another job, a hypervisor neighbour, the clock) falls on every arm alike.
    """
    procs = []
    for arm in arms:
        cmd, env = _command(arm, case, quick)
        pinned = ["taskset", "-c", str(core), *cmd]  # children (W&B's service) inherit the core
        procs.append((cmd, subprocess.Popen(pinned, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=env)))
    out = []
    for cmd, proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append(_record(cmd, proc.returncode, stdout, stderr))
    return out


def order(arms: Sequence[str], round_index: int) -> list[str]:
    """The arms of round ``round_index``: rotated by the round, reversed every other round."""
    k = round_index % len(arms)
    rotated = list(arms[k:]) + list(arms[:k])
    return rotated[::-1] if round_index % 2 else rotated


def run_case(
    case: str, arms: Sequence[str], rounds: int, quick: bool, records: list[dict[str, Any]], save: Any = None
) -> None:
    """Fit every arm ``rounds`` times into ``records``, one fit at a time; ``save()`` after each keeps what ran."""
    for r in range(rounds):
        for arm in order(arms, r):
            t0 = time.perf_counter()
            rec = fit(arm, case, quick)
            rec["round"] = r
            rec["schedule"] = "sequential"
            rec["malloc"] = MALLOC
            records.append(rec)
            if save is not None:
                save()
            print(f"  [{case} round {r + 1}/{rounds}] {arm}: fit+finish {rec['wall']:.1f} s, CPU {rec['cpu']:.1f} s, "
                  f"hooks {1000 * rec['hooks']:.0f} ms (process {time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)


def cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


def run_case_together(
    case: str, arms: Sequence[str], rounds: int, quick: bool, records: list[dict[str, Any]], save: Any = None,
    table: str | None = None,
) -> None:
    """Fit every arm ``rounds`` times into ``records``: a round runs all its arms at once on one core, and
    as many rounds run at once as there are cores."""
    from concurrent.futures import ThreadPoolExecutor

    mine = cores()
    done = 0
    while done < rounds:
        wave = list(range(done, min(rounds, done + len(mine))))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(wave)) as pool:
            futures = {
                r: pool.submit(fit_together, order(arms, r), case, quick, mine[i])
                for i, r in enumerate(wave)
            }
            for i, r in enumerate(wave):
                for rec in futures[r].result():
                    rec.update(round=r, schedule="together", core=mine[i], malloc=MALLOC, table=table or case)
                    records.append(rec)
        if save is not None:
            save()
        for r in wave:
            got = {rec["arm"]: rec for rec in records if rec["round"] == r and _table(rec) == (table or case)}
            base = got.get("bare")
            ratios = ", ".join(f"{arm} {got[arm]['cpu'] / base['cpu']:.3f}" for arm in arms if base and arm != "bare")
            print(f"  [{case} round {r + 1}/{rounds}] CPU / bare: {ratios} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
        done += len(wave)


# ---------------------------------------------------------------------------------------------- tables


def _mmm(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def _table(rec: dict[str, Any]) -> str:
    return str(rec.get("table", rec["case"]))


def _by(records: Sequence[dict[str, Any]], table: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if _table(rec) == table:
            out.setdefault(rec["arm"], []).append(rec)
    return out


def _ratios(arm_recs: Sequence[dict[str, Any]], bare: Sequence[dict[str, Any]], key: str) -> list[float]:
    base = {rec["round"]: rec[key] for rec in bare}
    return [rec[key] / base[rec["round"]] for rec in arm_recs if rec["round"] in base and base[rec["round"]] > 0]


def _together(rec: dict[str, Any]) -> bool:
    return rec.get("schedule") == "together"


def _hook_seconds(rec: dict[str, Any]) -> dict[str, float]:
    """Seconds inside each hook: wall time of a fit that ran alone, training-thread CPU of one that shared its core."""
    if _together(rec) and "hook_cpu_seconds" in rec:
        return dict(rec["hook_cpu_seconds"])
    return dict(rec["hook_seconds"])


def _slow(rec: dict[str, Any], hook: str) -> list[tuple[int, float]]:
    """``(global step, seconds)`` of a hook's slow calls, in order (CPU seconds when the fit shared its core)."""
    index = 2 if _together(rec) else 1
    return [(int(c[0]), c[index] if len(c) > index else c[1]) for c in rec.get("slow_calls", {}).get(hook, [])]


def _log_steps(rec: dict[str, Any], hook: str, every: int) -> list[float]:
    """Durations of a hook's slow calls that fell on multiples of ``every`` optimizer steps, in order."""
    return [d for step, d in _slow(rec, hook) if step % every == 0]


def tables(records: Sequence[dict[str, Any]]) -> str:
    lines: list[str] = []
    for case in dict.fromkeys(_table(rec) for rec in records):
        if case == "steps":  # per-step extras, not CPU ratios of whole fits
            import bench_steps

            lines.append(bench_steps.table(records))
            continue
        arms = _by(records, case)
        bare = arms.get("bare", [])
        first = next(iter(arms.values()))[0]
        rounds = len({rec["round"] for rec in records if _table(rec) == case})
        together = _together(first)
        if together:
            how = (f"each round's {len(arms)} arms fit at the same time, pinned to one core (the scheduler interleaves "
                   "them, so the machine's drift falls on every arm alike; wall times are of interleaved fits and "
                   "say nothing of speed); *hooks*: training-thread CPU inside the tested callbacks' hooks, as a "
                   "share of the process's CPU time (whole window, steady epochs), and in ms.")
        else:
            how = ("one fit at a time; *hooks*: time inside the tested callbacks' hooks on the training thread, as a "
                   "share of the window's wall time (whole window, steady epochs), and as CPU time of the training "
                   "thread (a share of the process's CPU time in the last column).")
        lines += [
            "",
            f"### {case}: {first['params']:,} parameters, {rounds} rounds, torch threads {first['threads']}",
            "",
            "min / median / max over rounds. *wall*: `trainer.fit` + `wandb.finish()`; *CPU*: user + system "
            "seconds of the training process and W&B's service process over that window; *ratio*: to bare in "
            "the same round; *steady*: the training epochs after the first; " + how + " The hook columns leave "
            "out the pauses of Python's cyclic garbage collector that fell inside a hook (a full collection of "
            "this heap takes 0.1-0.2 s and lands wherever the process's allocations trigger it, in a hook or "
            "not): *GC in hooks* gives them, in ms of wall time.",
            "",
            "| arm | wall (s) | wall ratio | CPU (s) | of which W&B service | CPU ratio | CPU ratio, steady "
            "| hooks, % of fit | hooks, % steady | hooks, thread CPU (ms) | hooks, % of CPU, steady "
            "| GC in hooks (ms) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        # the hooks' share: of the CPU time when the fits shared a core, else of the wall time
        part, whole = ("hooks_cpu", "cpu") if together else ("hooks", "wall")
        for arm, recs in arms.items():
            lines.append(
                "| " + " | ".join([
                    LABELS.get(arm, arm),
                    _mmm([r["wall"] for r in recs], "{:.1f}"),
                    _mmm(_ratios(recs, bare, "wall")),
                    _mmm([r["cpu"] for r in recs], "{:.1f}"),
                    _mmm([r.get("cpu_service", 0.0) for r in recs], "{:.1f}"),
                    _mmm(_ratios(recs, bare, "cpu")),
                    _mmm(_ratios(recs, bare, "cpu_steady")),
                    _mmm([100 * r[part] / r[whole] for r in recs], "{:.2f}"),
                    _mmm([100 * r[part + "_steady"] / r[whole + "_steady"] for r in recs], "{:.2f}"),
                    _mmm([1000 * r["hooks_cpu"] for r in recs], "{:.0f}"),
                    _mmm([100 * r["hooks_cpu_steady"] / r["cpu_steady"] for r in recs], "{:.2f}"),
                    _mmm([1000 * r.get("gc_in_hooks", [0.0])[0] for r in recs], "{:.0f}"),
                ]) + " |"
            )
        lines += _details(arms)
    return "\n".join(lines)


def _details(arms: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    combined = arms.get("all_five") or []
    if combined:
        keys = sorted({k for rec in combined for k in rec["hook_seconds"]})
        rows = []
        for key in keys:
            secs = [_hook_seconds(rec).get(key, 0.0) for rec in combined]
            calls = statistics.median(rec["hook_calls"].get(key, 0) for rec in combined)
            rows.append((statistics.median(secs), key, secs, calls))
        rows.sort(reverse=True)
        lines += ["", "All five: seconds inside each hook per fit (min / median / max), calls per fit:", "",
                  "| hook | seconds | calls |", "|---|---|---|"]
        lines += [f"| `{key}` | {_mmm(secs, '{:.4f}')} | {calls:.0f} |" for _, key, secs, calls in rows if _ > 0.0005]
    per_arm = []
    for arm, name in CALLBACK_OF_ARM.items():
        recs = arms.get(arm) or []
        if recs:
            per_fit = [sum(v for k, v in _hook_seconds(r).items() if k.startswith(name + ".")) for r in recs]
            per_arm.append(f"| `{name}` | {_mmm([1000 * v for v in per_fit], '{:.1f}')} |")
    if per_arm:
        lines += ["", "Each callback alone: milliseconds inside its hooks per fit (min / median / max):", "",
                  "| callback | ms per fit |", "|---|---|", *per_arm]
    watch = (arms.get("watch_model") or []) + (arms.get("all_five") or [])
    firsts, laters = [], []
    for rec in watch:
        steps = _log_steps(rec, "WatchModel.on_before_optimizer_step", 100)
        if steps:
            firsts.append(steps[0])
            laters += steps[1:]
    if firsts:
        lines += ["", f"WatchModel log step (ms): first of the fit {_mmm([1000 * v for v in firsts], '{:.1f}')}; "
                      f"later ones {_mmm([1000 * v for v in laters], '{:.1f}')} (min / median / max)."]
    samples = (arms.get("prediction_samples") or []) + (arms.get("all_five") or [])
    firsts, laters = [], []
    for rec in samples:
        ends = [d for _, d in _slow(rec, "LogPredictionSamples.on_validation_epoch_end")]
        if ends:
            firsts.append(ends[0])
            laters += ends[1:]
    if firsts:
        lines += ["", "LogPredictionSamples epoch end, 16 samples, images + tables (ms): first logged epoch "
                      f"{_mmm([1000 * v for v in firsts], '{:.1f}')}; later ones "
                      f"{_mmm([1000 * v for v in laters], '{:.1f}')}."]
    media = []
    for arm in ("bare", "prediction_samples", "prediction_samples_no_images", "guide"):
        recs = arms.get(arm) or []
        later = [b for r in recs for b in r["media_bytes_per_epoch"][1:]]
        first = [r["media_bytes_per_epoch"][0] for r in recs if r["media_bytes_per_epoch"]]
        if recs:
            media.append(f"| {LABELS[arm]} | {_mmm(first, '{:,.0f}')} | {_mmm(later, '{:,.0f}')} |")
    if media:
        lines += ["", "Bytes written to the run's media folder per validation epoch:", "",
                  "| arm | first epoch | each later epoch |", "|---|---|---|", *media]
    return lines


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _hook(recs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [_hook_seconds(r).get(key, 0.0) for r in recs]


def summary(records: Sequence[dict[str, Any]]) -> str:
    """One plain sentence per callback: what it costs per fit, per logged epoch and per log step (medians)."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for table in dict.fromkeys(_table(rec) for rec in records if rec["case"] == "cnn"):
        for arm, recs in _by(records, table).items():
            arms.setdefault(arm, []).extend(recs)
    out: list[str] = []

    def ms(v: float) -> str:
        return f"{1000 * v:.1f} ms"

    def total(arm: str, name: str) -> list[float]:
        return [sum(v for k, v in _hook_seconds(r).items() if k.startswith(name + ".")) for r in arms.get(arm, [])]

    if arms.get("share_run_dir"):
        out.append(f"- `ShareRunDir`: {ms(_med(total('share_run_dir', 'ShareRunDir')))} per fit, all of it at "
                   "`setup`; nothing per epoch or per step.")
    recs = arms.get("metric_summaries") or []
    if recs:
        per_batch = _med(_hook(recs, "MetricSummaries.on_train_batch_end"))
        out.append(f"- `MetricSummaries`: {ms(_med(total('metric_summaries', 'MetricSummaries')))} per fit; on each "
                   "training batch a check of whether Lightning logs it, and on the batches it does a read of the "
                   f"logged values ({ms(per_batch)} per fit in `on_train_batch_end` in all); nothing per epoch "
                   "beyond reading the epoch's logged values.")
    recs = arms.get("watch_model") or []
    if recs:
        first, later, other = [], [], []
        for r in recs:
            steps = _log_steps(r, "WatchModel.on_before_optimizer_step", 100)
            if steps:
                first.append(steps[0])
                later += steps[1:]
            calls = r["hook_calls"].get("WatchModel.on_before_optimizer_step", 0)
            spent = _hook_seconds(r).get("WatchModel.on_before_optimizer_step", 0.0) - sum(steps)
            if calls > len(steps):
                other.append(spent / (calls - len(steps)))
        out.append(f"- `WatchModel()`: {ms(_med(total('watch_model', 'WatchModel')))} per fit; per log step (every "
                   f"100 optimizer steps, 10 gradient histograms) {ms(_med(later))}, the first of the fit "
                   f"{ms(_med(first))}; on the other steps one modulo ({1e6 * _med(other):.0f} µs per step on "
                   "average, the hook timer's own cost included).")
    recs = arms.get("prediction_samples") or []
    if recs:
        ends = [[d for _, d in _slow(r, "LogPredictionSamples.on_validation_epoch_end")] for r in recs]
        first = [e[0] for e in ends if e]
        later = [d for e in ends for d in e[1:]]
        batches = _med(_hook(recs, "LogPredictionSamples.on_validation_batch_end"))
        out.append(f"- `LogPredictionSamples()`: {ms(_med(total('prediction_samples', 'LogPredictionSamples')))} "
                   f"per fit; per logged epoch {ms(_med(later))} (16 images, a predictions table), the first "
                   f"{ms(_med(first))} (the inputs table with the pixels, the PNGs encoded); "
                   f"{ms(batches)} per fit on the validation batches (copying the chosen rows); nothing on "
                   "training steps.")
    recs = arms.get("upload_checkpoints") or []
    if recs:
        end = _med(_hook(recs, "UploadCheckpoints.on_train_end"))
        out.append(f"- `UploadCheckpoints()`: {ms(_med(total('upload_checkpoints', 'UploadCheckpoints')))} per fit "
                   f"on the training thread, of which {ms(end)} at the end of training; each checkpoint is hashed "
                   "and handed to W&B on a background thread; nothing on steps without a checkpoint.")
    return "\n".join(out)


def machine() -> str:
    import lightning
    import psutil
    import torch
    import wandb

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{psutil.cpu_count()} CPUs ({cpu}), {platform.system()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, lightning {lightning.__version__}, wandb {wandb.__version__}, offline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds per case (default 10; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a shorter CNN, five arms, 2 rounds: under 5 minutes")
    parser.add_argument("--arms", nargs="*", default=None, choices=FULL_ARMS, help="arms of the CNN case")
    parser.add_argument("--cases", nargs="*", default=("cnn", "digits", "steps"), choices=("cnn", "digits", "steps"))
    parser.add_argument("--micro", action="store_true", help="also run benchmarks/bench_*.py (in-process cases)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these bench_*.py modules, e.g. bench_watch")
    parser.add_argument("--schedule", choices=("together", "sequential"), default=None,
                        help="together (default where taskset exists): a round's arms fit at once on one core; "
                             "sequential: one fit at a time, for wall times")
    parser.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                        help="fixed (default): glibc's mmap and trim thresholds fixed in every fit, so heap "
                             "trimming does not decide the CPU time; default: glibc's own dynamic thresholds")
    parser.add_argument("--json", default=None, help="write every fit's record to this file")
    parser.add_argument("--table", default=None, help="only print the tables of a file written by --json")
    args = parser.parse_args()
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(f"machine: {data['machine']}")
        print(tables(data["records"]))
        print("\n" + summary(data["records"]))
        return
    rounds = args.rounds or (2 if args.quick else 10)
    if args.only:
        _micro(rounds, args.only)
        return
    arms = tuple(args.arms or (QUICK_ARMS if args.quick else FULL_ARMS))
    if "bare" not in arms:
        arms = ("bare", *arms)
    where = machine()
    print(f"machine: {where}", flush=True)
    records: list[dict[str, Any]] = []

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "records": records}))

    schedule = args.schedule or ("together" if hasattr(os, "sched_getaffinity") and shutil.which("taskset")
                                 else "sequential")
    runner = run_case_together if schedule == "together" else run_case
    global MALLOC
    MALLOC = args.malloc
    print(f"schedule: {schedule}" + (f" on cores {cores()}" if schedule == "together" else ""), flush=True)
    for case in args.cases:
        if case == "cnn" and schedule == "together" and not args.quick and args.arms is None:
            # a round of nine fits on one core would take each of them nine times as long: two groups
            run_case_together("cnn", QUICK_ARMS, rounds, False, records, save)
            run_case_together("cnn", ("bare", *EACH_ALONE), rounds, False, records, save, "cnn, each callback alone")
        elif case == "cnn":
            runner("cnn", arms, rounds, args.quick, records, save)
        elif case == "steps":
            import bench_steps

            records += bench_steps.run(1 if args.quick else rounds, args.quick)  # its own schedule: one process
            save()
        else:
            runner("digits", ("bare", "all_five"), 1 if args.quick else rounds, False, records, save)
    print(tables(records), flush=True)
    print("\n" + summary(records), flush=True)
    if args.quick:
        import bench_watch

        print("\nWatchModel(log=\"all\") vs WandbLogger.watch(log=\"all\") per log step "
              "(benchmarks/bench_watch.py, the CNN, 2 rounds):", flush=True)
        print(bench_watch.quick_row(), flush=True)
    if args.micro:
        _micro(rounds, None)


def _micro(rounds: int, only: Sequence[str] | None) -> None:
    import harness

    print("\n" + harness.HEADER, flush=True)
    for path in sorted(HERE.glob("bench_*.py")):
        if (only is None and path.stem != "bench_steps") or (only is not None and path.stem in only):
            importlib.import_module(path.stem).cases(rounds)


if __name__ == "__main__":
    main()
