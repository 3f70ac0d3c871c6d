"""The ``reconstruction`` task of ``LogPredictionSamples``: an output shaped like the input image (an
autoencoder's, a denoiser's), shown as an image beside its input.

Told (``task="auto"``) from image inputs ``(N, ...)`` and a floating-point output with as many values
per example as the input: the input's own shape, or flattened ``(N, C*H*W)`` as a ``Linear`` decoder
gives it, unless the targets are masks (integer or 0 / 1 tensors of three or more dimensions, which
make the batch a segmentation one). Each epoch's table holds the reconstruction as an image and
``mse``, the mean squared error against the target when the target is an image of the input's size
(a denoiser's clean image), else against the input.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lw_callbacks.core.batches import InputError, describe, take
from lw_callbacks.core.pixels import display_range, to_uint8
from lw_callbacks.core.tasks import Chosen, FirstBatch, Sample, Task, as_tensor, cell, is_float
from lw_callbacks.core.tasks.classification import label_truths

if TYPE_CHECKING:
    from lw_callbacks.core.samples import StageState

__all__ = ["GAP", "Reconstruction", "check", "looks_like", "mse", "reference", "reshape_like", "side_by_side"]

GAP = 2  # pixels of neutral grey between the input and its reconstruction in the panel's images
_GREY = 128


class Reconstruction(Task):
    """An output shaped like the input image, shown beside it with its mean squared error."""

    name = "reconstruction"
    guess_rank = 40
    output_keys = ("x_hat", "reconstruction", "reconstructions")

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        return first.image and looks_like(first.x, first.y, first.out)

    def check(self, stage: str, x: Any, y: Any, outputs: Any, raw: Any, n: int, what: str) -> str:
        check(x, raw, n, stage, self.owner)
        return "image"

    def has_predictions(self, outputs: Any, n: int, stage: str) -> bool:
        raw = self.core.raw_output(outputs)
        return isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0

    def collect(self, st: StageState, c: Chosen) -> None:
        """The input's pixels once per sample id; each epoch the output as an image drawn on the input's
        scale, and its mean squared error."""
        raw = as_tensor(self.core.raw_output(c.out))
        if not isinstance(raw, Tensor) or raw.shape[0] != c.n_out:
            raise InputError(
                f"{self.owner}(task='reconstruction'): the {c.what} on the chosen {c.stage} samples is a "
                f"{describe(raw)}; expected one image per example, shaped like the input or flattened."
            )
        x, y = c.x, c.y
        image_targets = isinstance(y, (Tensor, np.ndarray)) and looks_like(x, None, y)
        no_labels = y is None or image_targets
        truths = [None] * len(c.local) if no_labels else label_truths(take(y, c.local), self.core.ignored)
        for j, pos in enumerate(c.positions):
            sid, i = c.ids[j], c.local[j]
            if sid not in st.images:
                row = x[i].detach().cpu().numpy() if isinstance(x[i], Tensor) else np.asarray(x[i])
                scale = display_range(row)
                st.images[sid] = (to_uint8(row, scale), scale)
            shown, scale = st.images[sid]
            recon = reshape_like(raw[c.rows[j]], x[i])
            ref = reference(x[i], y[i] if image_targets else None)
            st.collected[pos] = Sample(
                id=sid, display=shown, truth=truths[j], pred=to_uint8(recon, scale), metric=mse(recon, ref)
            )

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        import wandb

        columns: list[str | int] = ["id", "sample", "ground truth", "reconstruction", "mse"]
        rows = [
            [s.id, ref, cell(self.core.label_name(s.truth)), wandb.Image(s.pred), s.metric]
            for s, ref in zip(samples, refs, strict=True)
        ]
        return columns, rows

    def images(self, st: StageState, samples: list[Sample]) -> list[Any] | None:
        import wandb

        return [wandb.Image(side_by_side(s.display, s.pred), caption=self.caption(s)) for s in samples]

    def caption(self, s: Sample) -> str:
        error = "-" if s.metric is None else f"{s.metric:.4g}"
        truth = "" if s.truth is None else f"Ground Truth: {self.core.label_name(s.truth)} - "
        return f"{truth}Input | Reconstruction - MSE {error}"


def _per_row(v: Tensor | np.ndarray) -> int:
    return math.prod(tuple(v.shape[1:]))


def _fits(x: Tensor | np.ndarray, out: Tensor | np.ndarray) -> bool:
    """``out`` has as many values per example as ``x``: ``x``'s shape, or flattened ``(N, D)``."""
    if out.ndim < 2 or out.shape[0] != x.shape[0] or _per_row(out) != _per_row(x):
        return False
    return tuple(out.shape[1:]) == tuple(x.shape[1:]) or out.ndim == 2


def _is_mask(y: Any) -> bool:
    """Targets that make the batch a segmentation one: integer / boolean masks, or 0 / 1 floats, (N, ..., H, W)."""
    if not isinstance(y, Tensor) or y.ndim < 3:
        return False
    if not y.is_floating_point():
        return True
    finite = y[torch.isfinite(y)]
    return bool(((finite == 0) | (finite == 1)).all())


def looks_like(x: Any, y: Any, out: Any) -> bool:
    """Whether a first batch (image inputs ``x``, targets ``y``, output ``out``) is a reconstruction one."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(x, (Tensor, np.ndarray)) or not isinstance(out, Tensor) or x.ndim < 3:
        return False
    return is_float(out) and _fits(x, out) and not _is_mask(y)


def check(x: Any, out: Any, n: int, stage: str, owner: str = "LogPredictionSamples") -> None:
    """First-batch check of ``task="reconstruction"`` (or the output of the module's predict / forward)."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(x, (Tensor, np.ndarray)) or x.ndim < 3:
        raise InputError(
            f"{owner}(task='reconstruction'): the {stage} inputs are a {describe(x)}; reconstruction "
            "needs image tensors (N, C, H, W) / (N, H, W) / (N, H, W, C)."
        )
    if out is None:
        return
    if not isinstance(out, Tensor) or not _fits(x, out) or out.shape[0] != n:
        raise InputError(
            f"{owner}(task='reconstruction'): the {stage} output is a {describe(out)} for inputs "
            f"{describe(x)}; expected one image per example, shaped like the input or flattened (N, "
            f"{_per_row(x)})."
        )


def reshape_like(row: Tensor | np.ndarray, like: Tensor | np.ndarray) -> np.ndarray:
    """One example's output as an array of its input's shape (float32)."""
    arr = row.detach().float().cpu().numpy() if isinstance(row, Tensor) else np.asarray(row, dtype=np.float32)
    return arr.reshape(tuple(like.shape))


def reference(x_row: Any, y_row: Any) -> Any:
    """What a reconstruction is compared with: the target when it is an image of the input's size, else the input."""
    same_size = isinstance(y_row, (Tensor, np.ndarray)) and math.prod(y_row.shape) == math.prod(x_row.shape)
    if same_size and is_float(y_row):
        return y_row
    return x_row


def mse(recon: np.ndarray, ref: Any) -> float | None:
    """Mean squared error over the finite values of both; ``None`` when there are none."""
    r = ref.detach().float().cpu().numpy() if isinstance(ref, Tensor) else np.asarray(ref, dtype=np.float32)
    a = recon.reshape(-1).astype(np.float64)
    b = r.reshape(-1).astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return None
    return round(float(np.mean((a[finite] - b[finite]) ** 2)), 6)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two uint8 images of one shape (``(H, W)`` or ``(H, W, C)``) next to each other, a grey gap between."""
    gap = np.full((left.shape[0], GAP, *left.shape[2:]), _GREY, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
