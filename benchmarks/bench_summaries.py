"""MetricSummaries vs a bare WandbLogger run: the per-batch look at the logged metrics, the globs."""

from __future__ import annotations

from harness import compare, fit_seconds
from lightning.pytorch.callbacks import ModelCheckpoint

from lw_callbacks.summaries import MetricSummaries


def cases(rounds: int) -> None:
    compare(
        "MetricSummaries (name + glob + derived) / bare WandbLogger (fit, 3 epochs)",
        lambda: fit_seconds(lambda: [ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=0)]),
        lambda: fit_seconds(
            lambda: [
                ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=0),
                MetricSummaries({"val_loss": "min,max", "train_*": "mean"}),
            ]
        ),
        rounds=rounds,
    )
