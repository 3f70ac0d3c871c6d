"""Per-step cost on fast steps: ``python benchmarks/bench_steps.py [--rounds N] [--quick] [--json FILE]``.

A model whose training step takes about a millisecond, nearly all of it Lightning's own loop
(``Linear(8, 2)`` on 1x2x4 inputs, batch size 2, 5 epochs of 400 steps, 10 validation batches of 2
each, ``log_every_n_steps=50``, offline), fitted as ``benchmarks/run.py`` fits: every arm in a
fresh process, a round's arms at the same time pinned to one core (so whatever slows the core falls
on every arm alike), glibc's heap thresholds fixed. Nothing wraps the hooks: the measure is the
training thread's CPU time over the steady epochs (the four after the first) divided by their
optimizer steps, and an arm's *extra* is that minus the bare arm's of the same round.

Arms: ``bare`` (an offline ``WandbLogger`` and a ``ModelCheckpoint``), ``empty`` and ``five_empty``
(one and five empty ``Callback`` subclasses: what Lightning's hook dispatch costs), ``guide`` (the W&B
guide's recipe: ``log_model="all"``, ``logger.watch(log="all")`` and its sample callback), each of
the five callbacks alone at its defaults, and ``all_five``.

``--quick``: 200 steps an epoch, arms ``bare``, ``five_empty``, ``all_five`` and ``guide``, one round
(the row ``benchmarks/run.py --quick`` prints). ``--table FILE`` prints the table of a ``--json`` file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


def per_step(rec: dict[str, Any]) -> float:
    """Training-thread CPU seconds per optimizer step over the training batches of the steady epochs."""
    return float(rec["batch_cpu_steady"]) / max(1, int(rec["batch_steps_steady"]))


def per_step_fit(rec: dict[str, Any]) -> float:
    """Training-thread CPU seconds per optimizer step over the whole steady epochs (their validation and
    epoch ends included: per-epoch work, such as logging samples or handing checkpoints over)."""
    return float(rec["thread_cpu_steady"]) / max(1, int(rec["steps_steady"]))


def _rounds(records: Sequence[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec.get("table", rec["case"]) == TABLE:
            out.setdefault(int(rec["round"]), {})[rec["arm"]] = rec
    return out


def extras(records: Sequence[dict[str, Any]], arm: str, base: str = "bare", of: Any = per_step) -> list[float]:
    """Per round: ``arm``'s seconds per step minus ``base``'s of the same round (``of``: which measure)."""
    return [of(got[arm]) - of(got[base]) for got in _rounds(records).values() if arm in got and base in got]


def _mmm(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def table(records: Sequence[dict[str, Any]]) -> str:
    """The per-step table: extra µs per step over bare, its share of bare's step, min / median / max over rounds."""
    rounds = _rounds(records)
    if not rounds:
        return ""
    arms = [arm for arm in ARMS if any(arm in got for got in rounds.values())]
    bare = [per_step(got["bare"]) for got in rounds.values() if "bare" in got]
    lines = [
        "",
        f"### fast steps: `Linear(8, 2)`, batch 2, {len(rounds)} rounds; bare's training step "
        f"{1e6 * statistics.median(bare):.0f} µs of training-thread CPU (median)",
        "",
        "min / median / max over rounds of the training thread's extra CPU per optimizer step over bare's in "
        "the same round, in the steady epochs: over their training batches (µs, and as a share of bare's "
        "step), and over the whole epochs, validation and epoch ends included (per-epoch work spread over "
        "the epoch's steps).",
        "",
        "| arm | extra per training step (µs) | share of the step (%) | extra per step, whole epochs (µs) |",
        "|---|---|---|---|",
    ]
    for arm in arms:
        if arm == "bare":
            continue
        shares = [100 * (per_step(got[arm]) / per_step(got["bare"]) - 1) for got in rounds.values()
                  if arm in got and "bare" in got]
        lines.append(f"| {LABELS.get(arm, arm)} | {_mmm([1e6 * v for v in extras(records, arm)], '{:.1f}')} | "
                     f"{_mmm(shares, '{:.2f}')} | "
                     f"{_mmm([1e6 * v for v in extras(records, arm, of=per_step_fit)], '{:.0f}')} |")
    lines += ["", *checks(records)]
    return "\n".join(lines)


def checks(records: Sequence[dict[str, Any]]) -> list[str]:
    """The comparisons the fast-steps goal names (training steps), as medians over rounds."""
    rounds = _rounds(records)
    out = []
    five = extras(records, "five_empty")
    ours = extras(records, "all_five")
    guide = extras(records, "guide")
    if five and ours:
        med5, med = statistics.median(five), statistics.median(ours)
        ratios = [a / b for a, b in zip(ours, five, strict=True) if b > 0]
        out.append(f"- all five: {1e6 * med:.1f} µs per training step against {1e6 * med5:.1f} µs for five empty "
                   f"callbacks, {med / med5:.2f}x (goal: at most 1.2x; per round "
                   f"{_mmm(ratios, '{:.2f}')})" + (
                       f"; the guide's recipe {1e6 * statistics.median(guide):.1f} µs" if guide else ""))
    for arm in ALONE:
        pairs = [per_step(got[arm]) - per_step(got["empty"]) for got in rounds.values()
                 if arm in got and "empty" in got]
        if pairs:
            out.append(f"- {LABELS[arm][2:]} alone: {1e6 * statistics.median(pairs):+.1f} µs per training step "
                       "against one empty callback (median of the per-round differences; goal: within 10 µs)")
    return out


STEP_HOOKS = (
    "on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_train_batch_end",
)


def hook_costs(arm: str = "all_five", at_step: int = 120, calls: int = 2000, repeats: int = 7) -> dict[str, float]:
    """Microseconds per optimizer step that Lightning's dispatch of the per-step hooks costs for each
    callback, in one fit paused at a step that logs nothing: ``<callback>.state_key``, and for each hook
    ``<callback>.<hook>`` (Lightning's own loop: ``getattr``, ``state_key`` in the profiler's name, the
    profiler's context, the call), the best of ``repeats`` runs of ``calls`` calls."""
    import os
    import tempfile
    import time

    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ.setdefault(name, tempfile.mkdtemp(prefix=f"lwbench-{name.lower()}-"))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
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


def run(rounds: int, quick: bool, json_path: str | None = None, arms: Sequence[str] | None = None
        ) -> list[dict[str, Any]]:
    """Fit the arms ``rounds`` times and return the records.

    On each core, one process per arm, all pinned to that core, fits its arm once per round; a round's
    fits start together (a barrier between rounds), so the scheduler interleaves them as
    ``run.py --schedule together`` does, while each process imports torch, Lightning and W&B once
    (on a shared two-core machine the imports of a fresh process per fit cost more than the fits)."""
    import math
    import subprocess
    import tempfile

    import run as overhead

    where = overhead.machine()
    print(f"machine: {where}", flush=True)
    arms = tuple(arms or (QUICK_ARMS if quick else ARMS))
    mine = overhead.cores()
    per_core = math.ceil(rounds / len(mine))
    work = Path(tempfile.mkdtemp(prefix="lwbench-steps-"))
    procs = []
    for c, core in enumerate(mine):
        barrier = work / f"barrier-{c}"
        barrier.mkdir()
        for arm in arms:
            cmd, env = overhead._command(arm, "steps", quick)
            cmd += ["--fits", str(per_core), "--barrier", str(barrier), "--parties", str(len(arms))]
            out = open(work / f"{c}-{arm}.out", "w")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(["taskset", "-c", str(core), *cmd], stdout=out, stderr=subprocess.STDOUT,
                                    text=True, env=env)
            procs.append((c, core, arm, proc, out))
    records: list[dict[str, Any]] = []
    for c, core, arm, proc, out in procs:
        proc.wait()
        out.close()
        text = (work / f"{c}-{arm}.out").read_text()
        got = [json.loads(line[len("LWBENCH "):]) for line in text.splitlines() if line.startswith("LWBENCH ")]
        if proc.returncode != 0:
            print(f"{arm} on core {core} failed ({proc.returncode}):\n{text[-3000:]}", file=sys.stderr, flush=True)
        for rec in got:
            rec.update(round=c * per_core + rec["fit_index"], schedule="together", core=core,
                       malloc=overhead.MALLOC, table=TABLE)
            records.append(rec)
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": where, "records": records}))
    return records


def cases(rounds: int) -> None:
    """``benchmarks/run.py --micro`` / ``--only bench_steps``: the fast-steps table."""
    print(table(run(rounds, False)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 10; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="200 steps an epoch, four arms, one round")
    parser.add_argument("--json", default=None, help="write every fit's record to this file")
    parser.add_argument("--arms", nargs="*", default=None, choices=ARMS, help="only these arms")
    parser.add_argument("--table", default=None, help="only print the table of a file written by --json")
    parser.add_argument("--hooks", nargs="*", default=None,
                        help="instead: in one fit per arm (default five_empty all_five), µs per step of each "
                             "callback's state_key and per-step hook dispatch")
    args = parser.parse_args()
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
