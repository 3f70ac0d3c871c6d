"""ShareRunDir alone vs a bare WandbLogger run (single process: the broadcast is a no-op)."""

from __future__ import annotations

from harness import compare, fit_seconds

from lw_callbacks import ShareRunDir


def cases(rounds: int) -> None:
    compare(
        "ShareRunDir / bare WandbLogger (fit, 3 epochs)",
        lambda: fit_seconds(list),
        lambda: fit_seconds(lambda: [ShareRunDir()]),
        rounds=rounds,
    )
