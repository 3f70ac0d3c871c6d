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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lw_callbacks.core.tasks import InputError, describe

__all__ = ["GAP", "check", "looks_like", "mse", "reference", "reshape_like", "side_by_side"]

GAP = 2  # pixels of neutral grey between the input and its reconstruction in the panel's images
_GREY = 128


def _per_row(v: Tensor | np.ndarray) -> int:
    return math.prod(tuple(v.shape[1:]))


def _fits(x: Tensor | np.ndarray, out: Tensor | np.ndarray) -> bool:
    """``out`` has as many values per example as ``x``: ``x``'s shape, or flattened ``(N, D)``."""
    if out.ndim < 2 or out.shape[0] != x.shape[0] or _per_row(out) != _per_row(x):
        return False
    return tuple(out.shape[1:]) == tuple(x.shape[1:]) or out.ndim == 2


def _is_float(v: Tensor | np.ndarray) -> bool:
    return bool(v.is_floating_point()) if isinstance(v, Tensor) else v.dtype.kind == "f"


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
    return _is_float(out) and _fits(x, out) and not _is_mask(y)


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
    if same_size and _is_float(y_row):
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
