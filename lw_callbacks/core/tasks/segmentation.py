"""The ``segmentation`` task: targets and predictions ``(N, H, W)`` class ids or ``(N, C, H, W)`` scores
(argmax; one channel is thresholded) over image inputs. The inputs table's image carries the ground-truth
mask; each epoch's table holds the predicted mask (a colour image) and ``iou`` (mean over the classes
present in either mask); the panel's images carry ``masks={"ground_truth", "predictions"}``. Ignored
labels are stored as the mask id :data:`IGNORED`, drawn grey and counted in an ``ignored`` column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lw_callbacks.core.batches import InputError, describe
from lw_callbacks.core.offheap import off_heap_empty
from lw_callbacks.core.pixels import image_hw
from lw_callbacks.core.tasks import IGNORED_NAME, Chosen, FirstBatch, Sample
from lw_callbacks.core.tasks.annotated import Annotated

if TYPE_CHECKING:
    from lw_callbacks.core.samples import StageState

__all__ = ["IGNORED", "Segmentation", "class_ids", "mask_array", "mask_iou", "mask_rows", "palette", "truth_mask"]

_MAX_MASK_CLASSES = 256  # W&B stores masks as 8-bit PNGs
IGNORED = 255  # the mask id of ignored pixels (any ignore_index is stored as this id)
_IGNORED_COLOUR = np.array([128, 128, 128], dtype=np.uint8)  # neutral grey in the colour masks
_PALETTE = np.array(
    [
        [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
        [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
        [255, 215, 180], [0, 0, 128],
    ],
    dtype=np.uint8,
)


class Segmentation(Annotated):
    """Class-id masks (or per-pixel scores) over images."""

    name = "segmentation"
    guess_rank = 50
    output_keys = ("masks",)

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        return first.image and any(isinstance(v, Tensor) and v.ndim >= 3 for v in (first.y, first.out))

    @classmethod
    def reads_output(cls, raw: Any) -> bool:
        return isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0

    def check_annotations(self, stage: str, x: Any, y: Any, raw: Any, n: int) -> Any:
        value = raw if isinstance(raw, Tensor) and raw.ndim > 0 else None
        if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
            raise InputError(
                f"{self.owner}(task='segmentation'): the {stage} step returned a {describe(raw)}; "
                "expected masks (N, H, W) of class ids or scores (N, C, H, W), a dict holding them, or nothing "
                "(the callback then runs the module's forward on the chosen samples)."
            )
        core = self.core
        check_segmentation(x, y, value, n, stage, core.options.class_names, ignored=core.ignored, owner=self.owner)
        return value

    def read_predictions(self, c: Chosen, raw: Any) -> list[Any]:
        if not isinstance(raw, Tensor) or raw.ndim not in (3, 4) or raw.shape[0] != c.n_out:
            raise InputError(
                f"{self.owner}(task='segmentation'): the {c.what} on the chosen {c.stage} samples is a "
                f"{describe(raw)}; expected masks (k, H, W) or scores (k, C, H, W)."
            )
        return list(mask_rows(raw, c.rows))  # reduced to uint8 class ids now: the scores are not kept

    def read_truth(self, c: Chosen, i: int) -> Any:
        return truth_mask(c.y, i, self.core.ignored)

    def score(self, truth: Any, pred: Any) -> float:
        return mask_iou(truth, pred, ignore=bool(self.core.ignored))

    def count_ignored(self, truth: Any) -> int:
        return int(np.count_nonzero(truth == IGNORED))

    def labels_in(self, layer: Any) -> tuple[list[int], list[int]]:
        return np.unique(layer).tolist(), [IGNORED] if self.core.ignored else []

    def summary(self, v: Any) -> str | None:
        if v is None:
            return None
        present = np.unique(v).tolist()
        if self.core.ignored:
            present = [c for c in present if c != IGNORED]
        return ", ".join(self.class_name(c) for c in present)

    def draw(self, s: Sample, layers: dict[str, Any], labels: dict[int, str], caption: bool) -> Any:
        import wandb

        masks = {k: {"mask_data": v, "class_labels": labels} for k, v in layers.items()}
        text = None
        if caption:
            text = f"IoU {s.metric:.3f}" if s.metric is not None and not math.isnan(s.metric) else "IoU -"
        return wandb.Image(s.display, masks=masks or None, caption=text)

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        import wandb

        counts = bool(self.core.ignored)  # an "ignored" column: ignored pixels per sample
        columns: list[str | int] = ["id", "sample", "ground truth", "prediction", "iou"]
        columns += [IGNORED_NAME] if counts else []
        rows = []
        for s, ref in zip(samples, refs, strict=True):
            metric = None if s.metric is None or math.isnan(s.metric) else s.metric
            pred = wandb.Image(palette(s.pred, counts), caption=self.summary(s.pred))
            rows.append([s.id, ref, self.summary(s.truth), pred, metric, *([s.ignored] if counts else [])])
        return columns, rows


def _mask_hw(v: Tensor) -> tuple[int, int]:
    return int(v.shape[-2]), int(v.shape[-1])


def check_segmentation(
    x: Any,
    y: Any,
    value: Tensor | None,
    n: int,
    stage: str,
    class_names: Sequence[str] | None,
    ignored: frozenset[int] = frozenset(),
    owner: str = "LogPredictionSamples",
) -> None:
    for i in range(n):
        hw = image_hw(x[i])
        for what, v in (("target mask", y), ("predicted mask", value)):
            if v is None:
                continue
            if not isinstance(v, Tensor) or v.ndim not in (3, 4) or v.shape[0] != n:
                raise InputError(
                    f"{owner}(task='segmentation'): the {stage} {what}s are a {describe(v)} for a batch "
                    f"of {n} images; expected class ids (N, H, W) or scores (N, C, H, W)."
                )
            if _mask_hw(v) != hw:
                raise InputError(
                    f"{owner}(task='segmentation'): sample {i} of the first {stage} batch: the {what} is "
                    f"{_mask_hw(v)[0]}x{_mask_hw(v)[1]} but the image is {hw[0]}x{hw[1]} (inputs {describe(x)}, "
                    f"{what}s {describe(v)}); a mask must have its image's height and width."
                )
        if y is None and value is None:
            break
    tops = []
    if isinstance(value, Tensor) and value.ndim == 4 and value.shape[1] > 1:
        tops.append(("scores", int(value.shape[1]) - 1))
    for what, v in (("target", y), ("prediction", value)):
        if isinstance(v, Tensor):
            ids = class_ids(v)
            if ignored and what == "target":
                ids = ids[~torch.isin(ids, torch.tensor(sorted(ignored), dtype=ids.dtype, device=ids.device))]
            top = int(ids.max()) if ids.numel() else 0
            tops.append((what, top))
            if ignored and top >= IGNORED:
                raise InputError(
                    f"{owner}(ignore_index={sorted(ignored)}): the first {stage} batch holds {what} class "
                    f"{top}; with ignored labels, masks hold classes 0..{IGNORED - 1} ({IGNORED} stands for the "
                    "ignored pixels)."
                )
    for what, top in tops:
        if top >= _MAX_MASK_CLASSES:
            raise InputError(
                f"{owner}(task='segmentation'): the first {stage} batch holds {what} class {top}; W&B "
                f"masks hold at most {_MAX_MASK_CLASSES} classes (ids 0..255)."
            )
        if class_names is not None and top >= len(class_names):
            raise InputError(
                f"{owner}(class_names=<{len(class_names)} names>): the first {stage} batch holds "
                f"{what} masks up to class {top}, which needs at least {top + 1} class names. Pass one name per "
                "class in id order, or class_names=None to show the numbers."
            )


def class_ids(v: Tensor) -> Tensor:
    """Class-id masks ``(k, H, W)`` of a few rows: ids as given, or the argmax / threshold of scores."""
    v = v.detach()
    if v.ndim == 4:
        if v.shape[1] == 1:
            v = v[:, 0]
        else:
            return v.argmax(dim=1)
    if v.is_floating_point():
        finite = torch.isfinite(v)
        if bool(finite.all()) and bool((v == v.round()).all()) and bool((v >= 0).all()):
            return v.long()
        p = v if bool(((v >= 0) & (v <= 1)).all()) else torch.sigmoid(v)
        return (p > 0.5).long()
    if v.dtype == torch.bool:
        return v.long()
    return v


def mask_array(v: Tensor) -> np.ndarray:
    return class_ids(v).cpu().numpy().astype(np.uint8)  # ids < 256: checked at the first batch


def mask_rows(v: Tensor, rows: Sequence[int]) -> np.ndarray:
    """``mask_array(v[rows])`` in its own memory mapping (:func:`off_heap`), made without copying the
    rows first: scores ``(N, C, H, W)`` are reduced one row at a time (``argmax`` on the CPU written to
    a mapping too) and integer / boolean ids are converted as they are copied, so capturing a sample
    puts nothing of a row's size on the ``malloc`` heap among the batches'."""
    v = v.detach()
    rows = list(rows)
    h, w = _mask_hw(v)
    out = off_heap_empty((len(rows), h, w), np.uint8)
    dst = torch.from_numpy(out)
    if v.ndim == 4 and v.shape[1] > 1:
        scratch = torch.from_numpy(off_heap_empty((h, w), np.int64)) if v.device.type == "cpu" else None
        for j, i in enumerate(rows):
            if scratch is not None:
                dst[j].copy_(torch.argmax(v[i], dim=0, out=scratch))
            else:
                dst[j].copy_(v[i].argmax(dim=0))
        return out
    ids = v[:, 0] if v.ndim == 4 else v
    if ids.is_floating_point():  # whole numbers, probabilities or logits: told from these rows together
        index = torch.as_tensor(rows, dtype=torch.long, device=ids.device)
        out[...] = mask_array(ids.index_select(0, index))
        return out
    for j, i in enumerate(rows):
        dst[j].copy_(ids[i])  # as ``.long()`` then ``astype(uint8)``: booleans 0 / 1, ids as given
    return out


def truth_mask(y: Tensor, i: int, ignored: frozenset[int]) -> np.ndarray:
    """Row ``i`` of the target masks as uint8 class ids in its own mapping, ignored labels as :data:`IGNORED`."""
    if not ignored:
        return mask_rows(y, [i])[0]
    ids = class_ids(y[i : i + 1])[0]
    out = off_heap_empty(tuple(ids.shape), np.uint8)
    skip = torch.isin(ids, torch.tensor(sorted(ignored), dtype=ids.dtype, device=ids.device))
    out[...] = torch.where(skip, torch.full_like(ids, IGNORED), ids).cpu().numpy().astype(np.uint8)
    return out


def mask_iou(truth: np.ndarray, pred: np.ndarray, ignore: bool = False) -> float:
    """Mean IoU over the classes present in the truth or the prediction; with ``ignore``, over the pixels
    whose truth is not :data:`IGNORED` (torchmetrics' ``ignore_index`` convention)."""
    if ignore:
        valid = truth != IGNORED
        truth, pred = truth[valid], pred[valid]
    classes = np.union1d(np.unique(truth), np.unique(pred))
    ious = []
    for c in classes.tolist():
        t, p = truth == c, pred == c
        union = int(np.count_nonzero(t | p))
        if union:
            ious.append(np.count_nonzero(t & p) / union)
    return round(float(np.mean(ious)), 6) if ious else math.nan


def palette(mask: np.ndarray, ignore: bool = False) -> np.ndarray:
    """A colour image of a class-id mask; with ``ignore``, :data:`IGNORED` pixels in neutral grey."""
    ids = mask % len(_PALETTE) if mask.dtype == np.uint8 else mask.astype(np.int64) % len(_PALETTE)
    out = _PALETTE[ids]  # uint8 ids index as they are: no int64 copy of the mask
    if ignore:
        out[mask == IGNORED] = _IGNORED_COLOUR
    return out
