"""Side-by-side overhead measurements: alternate A/B runs in one process, report ratios.

Every case times the same work twice per round, once with the callbacks under test (B) and once
with the baseline (A), alternating which goes first, and reports ``B / A`` as min / median / max over
rounds. Ratios measured side by side in one run are comparable across machines; absolute seconds
are not. Cases live in ``benchmarks/bench_*.py``; ``python benchmarks/run.py`` prints the table.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

for _name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ.setdefault(_name, tempfile.mkdtemp(prefix=f"lwbench-{_name.lower()}-"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")


@dataclass
class Result:
    """One benchmark case: ``ratios`` are B / A per round; ``a`` and ``b`` the raw seconds."""

    name: str
    ratios: list[float] = field(default_factory=list)
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    note: str = ""

    def row(self) -> str:
        r = self.ratios
        return (
            f"| {self.name} | {min(r):.3f} | {statistics.median(r):.3f} | {max(r):.3f} | "
            f"{statistics.median(self.a):.3f} | {statistics.median(self.b):.3f} | {len(r)} | {self.note} |"
        )


HEADER = (
    "| case | ratio min | ratio median | ratio max | A median (s) | B median (s) | rounds | note |\n"
    "|---|---|---|---|---|---|---|---|"
)


def compare(name: str, run_a: Callable[[], float], run_b: Callable[[], float], rounds: int = 5, warmup: int = 1,
            note: str = "") -> Result:
    """Alternate ``run_a`` / ``run_b`` (each returns the seconds it measured) and collect B / A."""
    for _ in range(warmup):
        run_a()
        run_b()
    result = Result(name, note=note)
    for i in range(rounds):
        gc.collect()
        if i % 2 == 0:
            a, b = run_a(), run_b()
        else:
            b, a = run_b(), run_a()
        result.a.append(a)
        result.b.append(b)
        result.ratios.append(b / a)
    print(result.row(), flush=True)
    return result


def fit_seconds(
    callbacks_factory: Callable[[], Sequence[Any]],
    *,
    model_factory: Callable[[], Any] | None = None,
    datamodule_factory: Callable[[], Any] | None = None,
    logger_kwargs: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> float:
    """Seconds of ``trainer.fit`` (run start and finish excluded) with a fresh offline WandbLogger."""
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    save_dir = tempfile.mkdtemp(prefix="lwbench-run-")
    logger = WandbLogger(save_dir=save_dir, project="lw-bench", **(logger_kwargs or {}))
    logger.experiment  # start the run outside the timed region  # noqa: B018
    options: dict[str, Any] = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "devices": 1,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": save_dir,
        "enable_checkpointing": False,
    }
    options.update(trainer_kwargs)
    callbacks = list(callbacks_factory())
    if any(type(c).__name__ == "ModelCheckpoint" for c in callbacks):
        options["enable_checkpointing"] = True
    trainer = Trainer(logger=logger, callbacks=callbacks, **options)
    model = model_factory() if model_factory else DigitsClassifier()
    dm = datamodule_factory() if datamodule_factory else DigitsDataModule()
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    elapsed = time.perf_counter() - start
    wandb.finish()
    return elapsed


def validate_seconds(
    model: Any, loader: Any, callbacks: Sequence[Any], prefix: str = "lwbench-val-"
) -> tuple[float, Path]:
    """Seconds of one ``trainer.validate`` (run start and finish excluded) with a fresh offline WandbLogger,
    and the run's folder."""
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    save_dir = tempfile.mkdtemp(prefix=prefix)
    logger = WandbLogger(save_dir=save_dir, project="lw-bench")
    run_dir = Path(logger.experiment.settings.sync_dir)  # the run starts outside the timed region
    trainer = Trainer(
        logger=logger, callbacks=list(callbacks), accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=save_dir,
    )
    start = time.perf_counter()
    trainer.validate(model, dataloaders=loader, verbose=False)
    elapsed = time.perf_counter() - start
    wandb.finish()
    return elapsed, run_dir


def rss_kib() -> int:
    """This process's resident set size (KiB), from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
