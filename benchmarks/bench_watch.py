"""WatchModel(log="all") against WandbLogger.watch(model, log="all"), from 300 thousand to 50 million parameters.

``python benchmarks/bench_watch.py [--rounds N] [--sizes cnn mlp many] [--json FILE]``; ``--table FILE``
prints the tables again from a file it wrote. ``benchmarks/run.py --quick`` runs the ``cnn`` size for
one row.

Three models, each fit for a few optimizer steps with a histogram of every parameter and every
gradient at every step (``log_freq=1``):

- ``cnn``: the overhead benchmark's CNN (321,290 parameters in 10 tensors), batches of 8 images;
- ``mlp``: 12 x ``Linear(2048, 2048)`` (50.4 M parameters in 24 tensors), batches of 8;
- ``many``: 250 x ``Linear(16, 16)`` (68 k parameters in 500 small tensors), batches of 8.

A round fits the same model three ways in one process, in an order that rotates from round to round:
bare (a ``WandbLogger`` and nothing else), with ``WatchModel(log="all", log_freq=1)``, and with
``WandbLogger.watch(model, log="all", log_freq=1, log_graph=False)`` (wandb's hooks, ``torch.histc``
per tensor). The cost per log step of a tool is its fit's CPU time (this process's, so the load of
other processes on a shared machine does not count) minus the bare fit's, over the log steps; the
same ratio of wall times is shown beside it. Its throughput is the bytes of the tensors it reads per
log step (every parameter and every gradient, float32) over that cost; beside it, ``torch.aminmax``
over the same tensors (one read of the data, a memory-bandwidth reference), its CPU time taken in
the same round. WatchModel's own hook time (CPU time of the training thread) is also taken per log
step, to compare the first log step of a fit with the later ones.

Torch runs on ``LW_BENCH_THREADS`` intra-op threads (default 1), as in ``run.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402, F401  (sets the W&B folders and offline mode before wandb is imported)

SIZES = ("cnn", "mlp", "many")
STEPS = {"cnn": 24, "mlp": 4, "many": 24}  # optimizer steps per fit, each one a log step
ARMS = ("bare", "watch_model", "wandb_watch")
LABELS = {
    "cnn": "CNN, 321 k parameters, 10 tensors",
    "mlp": "MLP, 50.4 M parameters, 24 tensors",
    "many": "500 small tensors, 68 k parameters",
}


def _model(size: str) -> tuple[Any, Any]:
    """``(module, train loader)`` of a size, the loader holding ``STEPS[size]`` batches."""
    import torch
    from lightning.pytorch import LightningModule
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    steps = STEPS[size]
    gen = torch.Generator().manual_seed(0)
    if size == "cnn":
        from workload import SmallCNN

        x = torch.rand(steps * 8, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (steps * 8,), generator=gen)
        return SmallCNN(), DataLoader(TensorDataset(x, y), batch_size=8)

    width, depth = (2048, 12) if size == "mlp" else (16, 250)

    class Stack(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.layers(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    x = torch.randn(steps * 8, width, generator=gen)
    return Stack(), DataLoader(TensorDataset(x, x.clone()), batch_size=8)


def _fit(size: str, arm: str) -> dict[str, Any]:
    """One fit of ``size`` with ``arm``: its seconds, WatchModel's hook seconds per call, the aminmax
    seconds over the model's tensors and the bytes they hold."""
    import torch
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks import WatchModel

    class TimedWatch(WatchModel):
        """WatchModel, its optimizer-step hook timed."""

        times: list[float]

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            start = time.thread_time()
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
            self.times.append(time.thread_time() - start)

    model, loader = _model(size)
    save_dir = tempfile.mkdtemp(prefix="lwbench-watch-")
    logger = WandbLogger(save_dir=save_dir, project="lw-bench")
    logger.experiment  # the run starts outside the timed region  # noqa: B018
    callbacks: list[Any] = []
    watch = None
    if arm == "watch_model":
        watch = TimedWatch(log="all", log_freq=1)
        watch.times = []
        callbacks.append(watch)
    elif arm == "wandb_watch":
        logger.watch(model, log="all", log_freq=1, log_graph=False)
    trainer = Trainer(
        logger=logger, callbacks=callbacks, max_steps=STEPS[size], limit_val_batches=0, num_sanity_val_steps=0,
        accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=50, default_root_dir=save_dir,
    )
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, train_dataloaders=loader)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if arm == "wandb_watch":
        logger.experiment.unwatch(model)
    wandb.finish()
    record: dict[str, Any] = {"size": size, "arm": arm, "seconds": seconds, "cpu": cpu, "steps": STEPS[size]}
    if watch is not None:
        record["hook_seconds"] = watch.times
    if arm == "bare":  # the memory-bandwidth reference: one read of every parameter and a gradient each
        tensors = [p.detach() for p in model.parameters()]
        tensors += [torch.randn_like(p) for p in tensors]
        torch.aminmax(tensors[0])
        start = time.process_time()
        for t in tensors:
            torch.aminmax(t)
        record["aminmax_cpu"] = time.process_time() - start
        record["bytes"] = sum(t.numel() * t.element_size() for t in tensors)
        record["params"] = sum(p.numel() for p in model.parameters())
        record["tensors"] = len(tensors) // 2
    return record


def run(sizes: Sequence[str], rounds: int, warmup: int = 1, save: Callable[[list[dict[str, Any]]], None] | None = None,
        show: bool = True) -> list[dict[str, Any]]:
    """Every size: ``warmup`` rounds not kept, then ``rounds`` rounds of the three arms, order rotated."""
    import torch

    torch.set_num_threads(int(os.environ.get("LW_BENCH_THREADS", "1")))
    records: list[dict[str, Any]] = []
    for size in sizes:
        for r in range(-warmup, rounds):
            k = r % len(ARMS)
            order = list(ARMS[k:] + ARMS[:k])
            if r % 2:
                order.reverse()
            for arm in order:
                rec = _fit(size, arm)
                rec["round"] = r
                if r >= 0:
                    records.append(rec)
            if save is not None:
                save(records)
        if show:
            print(tables([rec for rec in records if rec["size"] == size], header=size == sizes[0]), flush=True)
    return records


def _per_round(records: Sequence[dict[str, Any]], size: str) -> list[dict[str, dict[str, Any]]]:
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec["size"] == size:
            rounds.setdefault(rec["round"], {})[rec["arm"]] = rec
    return [arms for _, arms in sorted(rounds.items()) if set(arms) == set(ARMS)]


def summarize(records: Sequence[dict[str, Any]], size: str) -> dict[str, Any] | None:
    """Medians over the rounds of one size: cost per log step of each tool (s), their ratio, GB/s of
    each and of aminmax, WatchModel's first log step over its later ones."""
    rounds = _per_round(records, size)
    if not rounds:
        return None
    med = statistics.median
    steps = rounds[0]["bare"]["steps"]
    cost = {arm: [(r[arm]["cpu"] - r["bare"]["cpu"]) / steps for r in rounds] for arm in ARMS[1:]}
    wall = {arm: [(r[arm]["seconds"] - r["bare"]["seconds"]) / steps for r in rounds] for arm in ARMS[1:]}
    data = rounds[0]["bare"]["bytes"]
    firsts, laters = [], []
    for r in rounds:
        times = r["watch_model"].get("hook_seconds") or []
        if len(times) > 1:
            firsts.append(times[0])
            laters.append(med(times[1:]))
    return {
        "size": size, "rounds": len(rounds), "steps": steps, "params": rounds[0]["bare"]["params"],
        "tensors": rounds[0]["bare"]["tensors"], "bytes": data,
        "watch_model_s": med(cost["watch_model"]), "wandb_watch_s": med(cost["wandb_watch"]),
        "ratio": med([w / b for w, b in zip(cost["watch_model"], cost["wandb_watch"], strict=True)]),
        "ratio_min": min(w / b for w, b in zip(cost["watch_model"], cost["wandb_watch"], strict=True)),
        "ratio_max": max(w / b for w, b in zip(cost["watch_model"], cost["wandb_watch"], strict=True)),
        "watch_model_gbs": med([data / c / 1e9 for c in cost["watch_model"] if c > 0] or [float("nan")]),
        "wandb_watch_gbs": med([data / c / 1e9 for c in cost["wandb_watch"] if c > 0] or [float("nan")]),
        "aminmax_gbs": med([data / r["bare"]["aminmax_cpu"] / 1e9 for r in rounds if r["bare"]["aminmax_cpu"] > 0]),
        "wall_ratio": med([w / b for w, b in zip(wall["watch_model"], wall["wandb_watch"], strict=True)]),
        "first_over_later": med([f / later for f, later in zip(firsts, laters, strict=True)]) if firsts else None,
        "hook_s": med(laters) if laters else None,
    }


HEADER = (
    "| model | rounds | WatchModel per log step | wandb.watch per log step | ratio (min / median / max) | "
    "ratio of wall times | WatchModel GB/s | wandb.watch GB/s | aminmax GB/s | WatchModel / aminmax | "
    "first log step / later |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(s: dict[str, Any]) -> str:
    first = "n/a" if s["first_over_later"] is None else f"{s['first_over_later']:.2f}"
    return (
        f"| {LABELS[s['size']]} | {s['rounds']} | {1000 * s['watch_model_s']:.1f} ms | "
        f"{1000 * s['wandb_watch_s']:.1f} ms | {s['ratio_min']:.2f} / **{s['ratio']:.2f}** / {s['ratio_max']:.2f} | "
        f"{s['wall_ratio']:.2f} | "
        f"{s['watch_model_gbs']:.3g} | {s['wandb_watch_gbs']:.3g} | {s['aminmax_gbs']:.3g} | "
        f"{s['watch_model_gbs'] / s['aminmax_gbs']:.2g} | {first} |"
    )


def tables(records: Sequence[dict[str, Any]], header: bool = True) -> str:
    lines = [HEADER] if header else []
    for size in SIZES:
        s = summarize(records, size)
        if s is not None:
            lines.append(row(s))
    return "\n".join(lines)


def quick_row() -> str:
    """The ``cnn`` size, 2 rounds: the row of ``benchmarks/run.py --quick``."""
    return tables(run(("cnn",), rounds=2, show=False))


def cases(rounds: int) -> None:
    """Every size, ``rounds`` rounds (``benchmarks/run.py --micro`` / ``--only bench_watch``)."""
    run(SIZES, rounds)


def machine() -> str:
    from run import machine as describe

    return describe() + f", {os.environ.get('LW_BENCH_THREADS', '1')} torch thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", nargs="*", default=SIZES, choices=SIZES)
    parser.add_argument("--json", default=None, help="write every fit's record to this file")
    parser.add_argument("--table", default=None, help="only print the table of a file written by --json")
    args = parser.parse_args()
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(f"machine: {data['machine']}\n{tables(data['records'])}")
        return
    where = machine()
    print(f"machine: {where}", flush=True)

    def save(records: list[dict[str, Any]]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "records": records}))

    records = run(args.sizes, args.rounds, save=save)
    save(records)
    print("\n" + tables(records))


if __name__ == "__main__":
    main()
