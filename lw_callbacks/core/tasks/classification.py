"""The ``classification`` task: labels ``(N,)``, logits or probabilities ``(N, C)`` (or one binary score
``(N, 1)``), over any input. Each epoch's table holds the prediction and, with ``log_scores``, one
``score_<class>`` column per class; a row whose scores are all NaN or infinite is predicted ``"nan"``.
It is the base of the other per-example tasks (text, audio, regression) and the fallback of ``task="auto"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lw_callbacks.core.batches import HOW_TO_PREDICT, InputError, describe, int_values, is_strings, label_list, take
from lw_callbacks.core.offheap import off_heap
from lw_callbacks.core.pixels import input_kind
from lw_callbacks.core.tasks import IGNORED_NAME, Chosen, Sample, Task, cell, one_type

if TYPE_CHECKING:
    from lw_callbacks.core.samples import StageState

__all__ = ["NAN", "Classification", "label_truths", "labels_and_scores"]

NAN = "nan"  # the prediction shown for a row whose scores are all NaN or infinite
MAX_SCORE_COLUMNS = 64


class Classification(Task):
    """Labels, logits or probabilities per example; the base of the other per-example tasks."""

    name = "classification"
    guess_rank = 100
    output_keys = ("preds", "pred", "predictions", "logits", "probs", "probabilities", "scores", "y_hat", "out")

    def check_inputs(self, x: Any, stage: str) -> str:
        """Check the inputs; returns their kind."""
        return input_kind(x, self.owner)

    def check(self, stage: str, x: Any, y: Any, outputs: Any, raw: Any, n: int, what: str) -> str:
        kind = self.check_inputs(x, stage)
        core = self.core
        if is_strings(raw):  # generated text: shown as it is
            if len(raw) != n:
                raise InputError(
                    f"{self.owner}: the {stage} step returned {len(raw)} strings for a batch of {n} examples."
                )
            return kind
        if core.sharded and core.output_tensor(outputs, n, stage) is None:
            raise core.sharded_error(stage)
        self.check_lengths(stage, x, y, n)
        value = core.output_tensor(outputs, n, stage, what)
        if value is None and what != "step output":
            raise InputError(
                f"{self.owner}: the {what} on the chosen {stage} samples is a {describe(outputs)}; "
                f"expected logits / probabilities (N, C), labels (N,), or a dict holding them. "
                + HOW_TO_PREDICT.format(stage=stage, owner=self.owner)
            )
        self.check_values(stage, value, y, n)
        return kind

    def check_values(self, stage: str, value: Tensor | None, y: Any, n: int) -> None:
        """First-batch checks of the predictions ``value`` and targets ``y``: ``class_names`` cover them."""
        class_names = self.core.options.class_names
        if class_names is None:
            return
        labels, scores = labels_and_scores(value) if value is not None else (None, None)
        k = len(class_names)
        needed = []
        if scores is not None and scores.ndim == 2 and scores.shape[1] > 1:
            needed.append(("scores", int(scores.shape[1]) - 1))
        targets = [v for v in int_values(y) if v not in self.core.ignored]  # ignored labels need no class name
        for kind, vals in (("labels", targets), ("predictions", int_values(labels))):
            if vals:
                needed.append((kind, max(vals)))
        for what, top in needed:
            if top >= k:
                raise InputError(
                    f"{self.owner}(class_names=<{k} names>): the first {stage} batch holds {what} up to "
                    f"class {top}, which needs at least {top + 1} class names. Pass one name per class in label "
                    "order, or class_names=None to show the numbers."
                )

    def has_predictions(self, outputs: Any, n: int, stage: str) -> bool:
        return is_strings(self.core.raw_output(outputs)) or self.core.output_tensor(outputs, n, stage) is not None

    def collect(self, st: StageState, c: Chosen) -> None:
        core = self.core
        raw = core.raw_output(c.out)
        if is_strings(raw):
            chosen: Any = [raw[i] for i in c.rows]
        else:
            value = core.output_tensor(c.out, c.n_out, c.stage, c.what)
            if value is None:
                raise InputError(
                    f"{self.owner}: the {c.what} on the chosen {c.stage} samples is a {describe(c.out)}; "
                    "expected logits / probabilities (N, C), labels (N,), or a dict holding them. "
                    + HOW_TO_PREDICT.format(stage=c.stage, owner=self.owner)
                )
            chosen = take(value, c.rows)
        preds, probs = self.predictions(chosen)
        truths = [None] * len(c.local) if c.y is None else self.truths(take(c.y, c.local))
        for j, pos in enumerate(c.positions):
            sid = c.ids[j]
            if sid not in st.images:  # pixels are copied once, from the batch row straight into the kept form
                st.images[sid] = off_heap(self.shown(c.x[c.local[j]], st.input_kind or "value", sid))
            st.collected[pos] = Sample(
                id=sid,
                display=st.images[sid],
                truth=truths[j],
                pred=preds[j],
                scores=probs[j] if probs is not None else None,
                metric=self.metric(truths[j], preds[j]),
            )

    def predictions(self, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions (and class probabilities) of the chosen rows; a row whose scores are all NaN or infinite
        is predicted :data:`NAN`, never a class."""
        if is_strings(rows):
            return list(rows), None
        labels, scores = labels_and_scores(rows)
        preds = label_list(labels)
        for j, bad in enumerate(no_finite_score(rows)):
            if bad:
                preds[j] = NAN
        return preds, (probabilities(scores) if scores is not None else None)

    def truths(self, rows: Any) -> list[Any]:
        """The targets of the chosen rows, as shown."""
        return label_truths(rows, self.core.ignored)

    def metric(self, truth: Any, pred: Any) -> float | None:
        """A per-sample measure of the prediction, if the task has one."""
        return None

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        core = self.core
        columns: list[str | int] = ["id", "sample", "ground truth", "prediction"]  # a new Table every call
        n_classes = max((len(s.scores) for s in samples if s.scores is not None), default=0)
        with_scores = core.options.log_scores and 0 < n_classes <= MAX_SCORE_COLUMNS
        if core.options.log_scores and n_classes > MAX_SCORE_COLUMNS:
            core.warn_once(
                f"{self.owner}: {n_classes} classes is more than {MAX_SCORE_COLUMNS}; the table holds "
                "no per-class score columns."
            )
        if with_scores:
            columns += [f"score_{core.label_name(c)}" for c in range(n_classes)]
        rows = []
        truths = one_type([cell(core.label_name(s.truth)) for s in samples])
        preds = one_type([cell(core.label_name(s.pred)) for s in samples])
        for s, ref, truth, pred in zip(samples, refs, truths, preds, strict=True):
            row = [s.id, ref, truth, pred]
            if with_scores:
                scores = s.scores or []
                row += [
                    round(float(v), 6) if i < len(scores) and math.isfinite(v) else None
                    for i, v in _pad(scores, n_classes)
                ]
            rows.append(row)
        return columns, rows


def label_truths(rows: Any, ignored: frozenset[int]) -> list[Any]:
    """Target labels of a few rows (one-hot rows as their argmax), ignored labels as ``"ignored"``."""
    return [IGNORED_NAME if isinstance(v, int) and v in ignored else v for v in label_list(rows)]


def labels_and_scores(value: Tensor) -> tuple[Tensor, Tensor | None]:
    """Labels and (when there are any) class scores of a few rows of predictions."""
    if value.ndim == 1:
        if value.is_floating_point():
            finite = torch.isfinite(value)
            if bool(finite.all()) and bool((value == value.round()).all()):
                return value.long(), None
            return (value > 0.5).long() if bool(((value >= 0) & (value <= 1)).all()) else (value > 0).long(), None
        return value, None
    if value.shape[1] == 1:  # one binary score per example
        v = value[:, 0].float()
        p = v if bool(((v >= 0) & (v <= 1)).all()) else torch.sigmoid(v)
        return (p > 0.5).long(), torch.stack([1 - p, p], dim=1)
    if value.is_floating_point():  # a NaN score is never the argmax (torch's argmax would pick it)
        return torch.nan_to_num(value, nan=-math.inf).argmax(dim=1), value
    return value.argmax(dim=1), value


def no_finite_score(value: Any) -> list[bool]:
    """Per row of predictions: whether its scores (or its one value) are all NaN or infinite."""
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim == 0:
        sized = isinstance(value, (list, tuple)) or (isinstance(value, Tensor) and value.ndim > 0)
        return [False] * (len(value) if sized else 0)
    finite = torch.isfinite(value.detach())
    rows = finite.reshape(len(value), -1).any(dim=1)
    return [not bool(v) for v in rows.tolist()]


def probabilities(scores: Tensor) -> list[list[float]]:
    s = scores.detach().float().cpu()
    if s.ndim != 2:
        return [[float(v)] for v in s.reshape(-1)]
    is_prob = bool(((s >= 0) & (s <= 1)).all()) and bool(torch.allclose(s.sum(dim=1), torch.ones(len(s)), atol=1e-3))
    p = s if is_prob else torch.softmax(torch.nan_to_num(s, nan=-math.inf), dim=1)
    return p.tolist()


def _pad(scores: Sequence[float], n: int) -> list[tuple[int, float]]:
    return [(i, scores[i] if i < len(scores) else math.nan) for i in range(n)]
