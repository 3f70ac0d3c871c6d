"""The ``detection`` task: torchvision-style targets and outputs, one dict per image with ``boxes`` ``(K, 4)``,
``labels`` and (predictions) ``scores``. Boxes are ``xyxy`` pixels unless ``box_format`` /
``normalized_boxes`` say otherwise; predictions scoring below ``score_threshold`` are left out and the rest
clipped to the image. Each epoch's table holds the boxes per class and ``matches@0.5`` (predictions matched
one to one to a ground-truth box of their class at IoU >= 0.5); ground-truth boxes with an ignored label
match nothing and are counted in an ``ignored`` column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from lw_callbacks.core.batches import InputError, describe
from lw_callbacks.core.pixels import image_hw
from lw_callbacks.core.tasks import IGNORED_NAME, Chosen, FirstBatch, Sample
from lw_callbacks.core.tasks.annotated import Annotated

if TYPE_CHECKING:
    from lw_callbacks.core.sample_options import SampleOptions
    from lw_callbacks.core.samples import StageState

__all__ = ["Boxes", "Detection", "is_detections", "matches", "read_boxes"]

_BOX_TOLERANCE = 1.0  # pixels a ground-truth box may stick out of its image (rounding)


def is_detections(v: Any) -> bool:
    """A non-empty list of dicts with ``boxes``: one image's detections each."""
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(d, Mapping) and "boxes" in d for d in v)


class Detection(Annotated):
    """Boxes with labels (and scores) over images."""

    name = "detection"
    guess_rank = 10
    output_keys = ("detections",)

    @classmethod
    def reads_output(cls, raw: Any) -> bool:
        return is_detections(raw)

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        return is_detections(first.y) or is_detections(first.out)

    def check_annotations(self, stage: str, x: Any, y: Any, raw: Any, n: int) -> Any:
        value = raw if is_detections(raw) else None
        if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
            raise InputError(
                f"{self.owner}(task='detection'): the {stage} step returned a {describe(raw)}; "
                "expected a list of one dict per image with 'boxes', 'labels' and 'scores' (as torchvision "
                "detection models return), a dict holding it, or nothing (the callback then runs the module's "
                "forward)."
            )
        check_detection(x, y, value, n, stage, self.core.options, self.core.options.class_names, self.core.ignored)
        return value

    def read_predictions(self, c: Chosen, raw: Any) -> list[Any]:
        if not is_detections(raw) or len(raw) != c.n_out:
            raise InputError(
                f"{self.owner}(task='detection'): the {c.what} on the chosen {c.stage} samples is a "
                f"{describe(raw)}; expected a list of dicts with 'boxes', 'labels', 'scores'."
            )
        opts = self.core.options
        return [
            read_boxes(raw[r], image_hw(c.x[i]), opts, predicted=True) for r, i in zip(c.rows, c.local, strict=True)
        ]

    def read_truth(self, c: Chosen, i: int) -> Any:
        return read_boxes(c.y[i], image_hw(c.x[i]), self.core.options, predicted=False, ignored=self.core.ignored)

    def score(self, truth: Any, pred: Any) -> float:
        return matches(truth, pred)

    def count_ignored(self, truth: Any) -> int:
        return int(truth.num_ignored())

    def labels_in(self, layer: Any) -> tuple[list[int], list[int]]:
        return list(layer.labels), sorted(self.core.ignored)

    def summary(self, v: Any) -> str | None:
        if v is None:
            return None
        return count_text([v.labels[i] for i in v.counted()], self.class_name)

    def draw(self, s: Sample, layers: dict[str, Any], labels: dict[int, str], caption: bool) -> Any:
        import wandb

        boxes = {k: {"box_data": box_data(v, self.class_name), "class_labels": labels} for k, v in layers.items()}
        text = None
        if caption:
            truth = "?" if s.truth is None else len(s.truth.labels)
            text = f"matches@0.5: {s.metric if s.metric is not None else '-'} / {truth}; predicted {len(s.pred.labels)}"
        return wandb.Image(s.display, boxes=boxes or None, caption=text)

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        counts = bool(self.core.ignored)  # an "ignored" column: ignored ground-truth boxes per sample
        columns: list[str | int] = ["id", "sample", "ground truth", "prediction", "predicted boxes", "matches@0.5"]
        columns += [IGNORED_NAME] if counts else []
        return columns, [
            [s.id, ref, self.summary(s.truth), self.summary(s.pred), len(s.pred.labels), s.metric]
            + ([s.ignored] if counts else [])
            for s, ref in zip(samples, refs, strict=True)
        ]


@dataclass
class Boxes:
    """One image's boxes in pixels, ``xyxy``."""

    xyxy: np.ndarray  # (K, 4) float
    labels: list[int]
    scores: list[float] | None = None
    ignored: list[bool] | None = None  # ground truth: boxes whose label is ignored (drawn, never matched or counted)

    def counted(self) -> list[int]:
        """Indices of the boxes that count (not ignored)."""
        return [i for i in range(len(self.labels)) if not (self.ignored and self.ignored[i])]

    def num_ignored(self) -> int:
        return sum(self.ignored or [])


def check_detection(
    x: Any, y: Any, out: Any, n: int, stage: str, opts: SampleOptions, class_names: Sequence[str] | None,
    ignored: frozenset[int] = frozenset(),
) -> None:
    """First-batch checks of detection targets and outputs (labels in ``ignored`` need no class name)."""
    for what, v in (("targets", y), ("step output", out)):
        if v is None:
            continue
        if not is_detections(v) or len(v) != n:
            raise InputError(
                f"{opts.owner}(task='detection'): the {stage} {what} is a {describe(v)} for a batch of {n} "
                "images; expected a list of one dict per image with 'boxes' (K, 4) and 'labels' (K,) (and "
                "'scores' (K,) for predictions), as torchvision detection models use."
            )
        for i, d in enumerate(v):
            boxes, labels = d.get("boxes"), d.get("labels")
            k = len(boxes) if boxes is not None else 0
            shape = tuple(boxes.shape) if isinstance(boxes, (Tensor, np.ndarray)) else None
            if shape is None or len(shape) != 2 or shape[1] != 4 or labels is None or len(labels) != k:
                raise InputError(
                    f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: {what} boxes "
                    f"{describe(boxes)} and labels {describe(labels)}; expected 'boxes' (K, 4) and 'labels' (K,)."
                )
            scores = d.get("scores")
            if scores is not None and len(scores) != k:
                raise InputError(
                    f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: {k} boxes but "
                    f"scores {describe(scores)}."
                )
            ids = [int(a) for a in _numbers(labels) if int(a) not in ignored]
            if class_names is not None and ids and max(ids) >= len(class_names):
                raise InputError(
                    f"{opts.owner}(class_names=<{len(class_names)} names>): sample {i} of the first {stage} "
                    f"batch has {what} label {max(ids)}, which needs at least {max(ids) + 1} class names."
                )
            if what == "targets" and k:
                h, w = image_hw(x[i])
                px = to_pixels(boxes, (h, w), opts)
                for j, (x0, y0, x1, y1) in enumerate(px.tolist()):
                    t = _BOX_TOLERANCE
                    if not (-t <= x0 <= x1 <= w + t and -t <= y0 <= y1 <= h + t):
                        given = [round(float(c), 4) for c in _numbers(boxes[j])]
                        fmt = f"box_format={opts.box_format!r}, normalized_boxes={opts.normalized_boxes}"
                        raise InputError(
                            f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: "
                            f"ground-truth box {j} {given} is ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) in pixels "
                            f"under {fmt}, outside the {w}x{h} (width x height) image. Pass the box_format / "
                            "normalized_boxes your boxes use."
                        )


def _numbers(v: Any) -> list[float]:
    if isinstance(v, Tensor):
        return [float(a) for a in v.detach().cpu().reshape(-1).tolist()]
    return [float(a) for a in np.asarray(v, dtype=np.float64).reshape(-1).tolist()]


def to_pixels(boxes: Any, hw: tuple[int, int], opts: SampleOptions) -> np.ndarray:
    b = np.asarray(_numbers(boxes), dtype=np.float64).reshape(-1, 4)
    if opts.box_format == "cxcywh":
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if opts.normalized_boxes:
        b = b * np.array([hw[1], hw[0], hw[1], hw[0]], dtype=np.float64)
    return b


def read_boxes(
    d: Mapping[str, Any], hw: tuple[int, int], opts: SampleOptions, predicted: bool,
    ignored: frozenset[int] = frozenset(),
) -> Boxes:
    """One image's boxes in pixels; predictions below ``score_threshold`` left out and clipped to the image;
    ground-truth boxes labelled one of ``ignored`` marked so."""
    px = to_pixels(d["boxes"], hw, opts)
    labels = [int(a) for a in _numbers(d["labels"])]
    scores = _numbers(d["scores"]) if d.get("scores") is not None else None
    if not predicted and ignored:
        return Boxes(px.reshape(-1, 4), labels, scores, [label in ignored for label in labels])
    if predicted:
        keep = [i for i in range(len(labels)) if scores is None or scores[i] >= opts.score_threshold]
        px = px[keep]
        labels = [labels[i] for i in keep]
        scores = [scores[i] for i in keep] if scores is not None else None
        if len(px):
            px = np.clip(px, 0.0, np.array([hw[1], hw[0], hw[1], hw[0]], dtype=np.float64))
    return Boxes(px.reshape(-1, 4), labels, scores)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def matches(truth: Boxes, pred: Boxes, threshold: float = 0.5) -> int:
    """Predictions matched one-to-one to a ground-truth box of the same class at IoU >= ``threshold``,
    greedily by score (the usual detection-metric matching)."""
    order = sorted(range(len(pred.labels)), key=lambda i: -(pred.scores[i] if pred.scores else 0.0))
    used: set[int] = set()
    found = 0
    counted = truth.counted()  # boxes with an ignored label match nothing
    for i in order:
        best, best_j = threshold, -1
        for j in counted:
            if j in used or truth.labels[j] != pred.labels[i]:
                continue
            iou = box_iou(pred.xyxy[i], truth.xyxy[j])
            if iou >= best:
                best, best_j = iou, j
        if best_j >= 0:
            used.add(best_j)
            found += 1
    return found


def box_data(b: Boxes, name: Callable[[int], str]) -> list[dict[str, Any]]:
    out = []
    for i, (x0, y0, x1, y1) in enumerate(b.xyxy.tolist()):
        ignored = bool(b.ignored and b.ignored[i])
        entry: dict[str, Any] = {
            "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
            "domain": "pixel",
            "class_id": b.labels[i],
            "box_caption": IGNORED_NAME if ignored else name(b.labels[i]),
        }
        if b.scores is not None:
            entry["scores"] = {"score": round(b.scores[i], 4)}
            entry["box_caption"] = f"{name(b.labels[i])} {b.scores[i]:.2f}"
        out.append(entry)
    return out


def count_text(labels: Sequence[int], name: Callable[[int], str]) -> str:
    """``"2 circle, 1 square"``: boxes per class (pass only the boxes that count)."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{c} {name(k)}" for k, c in sorted(counts.items())) or "none"
