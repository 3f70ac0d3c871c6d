"""Each callback alone, and all five together, against the same bare run.

Both arms fit the digits model for 3 epochs with an offline ``WandbLogger`` and a
``ModelCheckpoint(monitor="val_acc", mode="max")`` (what a user has before adding anything); the B
arm adds the callbacks named in the case, with their default settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from harness import compare, fit_seconds
from lightning.pytorch.callbacks import ModelCheckpoint

from lw_callbacks import LogPredictionSamples, MetricSummaries, ShareRunDir, UploadCheckpoints, WatchModel


def _with(*extra: Callable[[], Any]) -> Callable[[], Sequence[Any]]:
    return lambda: [ModelCheckpoint(monitor="val_acc", mode="max"), *(make() for make in extra)]


CASES: list[tuple[str, tuple[Callable[[], Any], ...]]] = [
    ("ShareRunDir()", (ShareRunDir,)),
    ("MetricSummaries({'val_loss': 'min'})", (lambda: MetricSummaries({"val_loss": "min"}),)),
    ("WatchModel(log='all')", (lambda: WatchModel(log="all"),)),
    ("LogPredictionSamples()", (LogPredictionSamples,)),
    ("UploadCheckpoints()", (UploadCheckpoints,)),
    (
        "all five",
        (
            ShareRunDir,
            lambda: MetricSummaries({"val_loss": "min"}),
            lambda: WatchModel(log="all"),
            LogPredictionSamples,
            UploadCheckpoints,
        ),
    ),
]


def cases(rounds: int) -> None:
    bare = _with()
    for name, extra in CASES:
        compare(
            f"{name} / bare WandbLogger + ModelCheckpoint (fit, 3 epochs)",
            lambda: fit_seconds(bare),
            lambda extra=extra: fit_seconds(_with(*extra)),  # type: ignore[misc]
            rounds=rounds,
        )
