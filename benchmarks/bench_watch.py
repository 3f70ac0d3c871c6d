"""WatchModel(log="all") vs Lightning's ``logger.watch(model, log="all", log_freq=100)``, both against
a bare WandbLogger fit, on a 51-layer MLP (102 parameter tensors) at log_freq=100 on the CPU.

The three fits of a round run back to back in a rotating order, so all three ratios share the same
baseline runs and the same machine load. Torch runs on ``LW_BENCH_THREADS`` intra-op threads
(default 1, restored afterwards; 0 keeps torch's default): on a small shared CPU, multi-threaded
ops spend most of their time waiting for a descheduled thread, which buries the effect measured.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from harness import Result

LOG_FREQ = 100
HOOK_SHARE: list[float] = []  # seconds inside WatchModel's hooks / fit seconds, per callback fit
DEPTH = 50  # hidden Linear layers; +1 head: 102 parameter tensors


def _model() -> Any:
    import torch
    from torch import nn

    from lw_callbacks.demo import DigitsClassifier

    class DeepDigits(DigitsClassifier):
        """The digits classifier with ``DEPTH`` hidden layers of width 64 (102 parameter tensors)."""

        def __init__(self) -> None:
            super().__init__()
            del self.layer_1, self.layer_2, self.layer_3
            layers: list[nn.Module] = [nn.Linear(64, 64), nn.ReLU()]
            for _ in range(DEPTH - 1):
                layers += [nn.Linear(64, 64), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x.reshape(x.shape[0], -1)))

    return DeepDigits()


def fit(variant: str) -> float:
    """Seconds of ``trainer.fit`` for one variant: ``"bare"``, ``"callback"`` or ``"logger.watch"``."""
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.demo import DigitsDataModule
    from lw_callbacks.watch import WatchModel

    save_dir = tempfile.mkdtemp(prefix="lwbench-run-")
    logger = WandbLogger(save_dir=save_dir, project="lw-bench")
    logger.experiment  # start the run outside the timed region  # noqa: B018
    model = _model()
    class TimedWatch(WatchModel):
        """WatchModel that adds up the seconds spent in its per-step hook."""

        spent = 0.0

        def on_before_optimizer_step(self, *args: Any) -> None:
            t0 = time.perf_counter()
            super().on_before_optimizer_step(*args)
            self.spent += time.perf_counter() - t0

    watch = TimedWatch(log="all", log_freq=LOG_FREQ)
    callbacks = [watch] if variant == "callback" else []
    if variant == "logger.watch":
        logger.watch(model, log="all", log_freq=LOG_FREQ)  # Lightning's default log_graph=True
    trainer = Trainer(
        logger=logger,
        callbacks=callbacks,
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=save_dir,
        enable_checkpointing=False,
    )
    dm = DigitsDataModule(batch_size=16)  # 90 optimizer steps per epoch, 270 in all
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    elapsed = time.perf_counter() - start
    wandb.finish()
    if variant == "callback":
        HOOK_SHARE.append(watch.spent / elapsed)
    return elapsed


def compare3(rounds: int, variants: dict[str, Callable[[], float]]) -> list[Result]:
    """Run the variants in a rotating order each round; ratios of each non-first one to the first."""
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        gc.collect()
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            seconds[name].append(variants[name]())
    base = names[0]
    results = []
    for name in names[1:]:
        result = Result(
            f"{name} / {base} (fit, 102 tensors, log_freq={LOG_FREQ}, 270 steps)",
            note=f"torch threads: {__import__('torch').get_num_threads()}",
        )
        result.a = seconds[base]
        result.b = seconds[name]
        result.ratios = [b / a for a, b in zip(result.a, result.b, strict=True)]
        print(result.row(), flush=True)
        results.append(result)
    return results


def cases(rounds: int) -> None:
    import torch

    threads = int(os.environ.get("LW_BENCH_THREADS", "1"))
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        compare3(
            rounds,
            {
                "bare WandbLogger": lambda: fit("bare"),
                "WatchModel(log='all')": lambda: fit("callback"),
                "logger.watch(model, log='all')": lambda: fit("logger.watch"),
            },
        )
    finally:
        torch.set_num_threads(before)
    share = sorted(HOOK_SHARE)
    print(f"time inside WatchModel.on_before_optimizer_step / fit time: min {share[0]:.4f}, "
          f"median {share[len(share) // 2]:.4f}, max {share[-1]:.4f} over {len(share)} fits", flush=True)
