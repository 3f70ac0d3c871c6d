"""The ``regression`` task: float targets (the first batch's not all whole numbers) and predictions ``(N,)``
or ``(N, 1)``; each epoch's table holds ``target``, ``prediction`` and ``abs_error``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lw_callbacks.core.batches import InputError, describe, is_strings
from lw_callbacks.core.tasks import FirstBatch, Sample, cell
from lw_callbacks.core.tasks.classification import Classification

if TYPE_CHECKING:
    from lw_callbacks.core.samples import StageState

__all__ = ["Regression", "check_regression", "floats"]


class Regression(Classification):
    """One number per example, predicted and targeted."""

    name = "regression"
    guess_rank = 60
    truth_column = "target"

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        y = first.y
        if isinstance(y, Tensor) and y.is_floating_point() and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            finite = y[torch.isfinite(y)]
            return bool(finite.numel()) and bool((finite != finite.round()).any())
        return False

    def check_values(self, stage: str, value: Tensor | None, y: Any, n: int) -> None:
        check_regression(value, y, n, stage, self.owner)

    def predictions(self, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        return (list(rows), None) if is_strings(rows) else (floats(rows), None)

    def truths(self, rows: Any) -> list[Any]:
        return list(floats(rows))

    def metric(self, truth: Any, pred: Any) -> float | None:
        if isinstance(truth, float) and isinstance(pred, float):
            return round(abs(pred - truth), 6)
        return None

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        columns: list[str | int] = ["id", "sample", "target", "prediction", "abs_error"]
        rows = [[s.id, ref, cell(s.truth), cell(s.pred), s.metric] for s, ref in zip(samples, refs, strict=True)]
        return columns, rows

    def caption(self, s: Sample) -> str:
        if s.metric is None or not isinstance(s.pred, float):
            return super().caption(s)
        truth = "?" if s.truth is None else f"{s.truth:.4g}"
        return f"Target: {truth} - Prediction: {s.pred:.4g}"


def check_regression(value: Tensor | None, y: Any, n: int, stage: str, owner: str = "LogPredictionSamples") -> None:
    for what, v in (("step output", value), ("target", y)):
        if v is None:
            continue
        if not isinstance(v, Tensor) or not (v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1)) or v.shape[0] != n:
            raise InputError(
                f"{owner}(task='regression'): the {stage} {what} is a {describe(v)} for a batch of {n}; "
                "expected one number per example, (N,) or (N, 1)."
            )


def floats(v: Any) -> list[float]:
    t = v.detach().float().cpu().reshape(-1) if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v)).reshape(-1)
    return [float(a) for a in t.tolist()]
