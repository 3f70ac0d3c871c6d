"""Pixels for display: which inputs are images, and one image as uint8 ``(H, W)`` / ``(H, W, C)``,
scaled from its own range a band of rows at a time, in its own memory mapping
(:mod:`lw_callbacks.core.offheap`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

from lw_callbacks.core.batches import InputError, describe, plain
from lw_callbacks.core.offheap import off_heap_empty

__all__ = [
    "display", "display_range", "image_hw", "image_layout", "input_kind", "is_pil", "looks_like_images", "to_uint8",
]

MAX_VALUES_SHOWN = 64
BAND_ROWS = 16  # image rows scaled at a time for display (float64 working copies of 16 rows)


def is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "size") and hasattr(obj, "mode")


def image_layout(shape: tuple[int, ...]) -> str | None:
    """For one sample's shape: ``"hw"``, ``"chw"``, ``"hwc"`` or ``None`` (not an image)."""
    if len(shape) == 2:
        return "hw" if min(shape) > 1 else None
    if len(shape) == 3:
        if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            return "chw"
        if shape[-1] in (1, 3, 4):
            return "hwc"
        if shape[0] in (1, 3, 4):
            return "chw"
    return None


def input_kind(x: Any, owner: str = "LogPredictionSamples") -> str:
    if isinstance(x, (Tensor, np.ndarray)):
        shape = tuple(x.shape)
        if len(shape) <= 2:
            return "value"
        if len(shape) in (3, 4) and image_layout(shape[1:]) is not None:
            return "image"
        raise InputError(
            f"{owner}: the batch input is a {describe(x)}, which is neither an image batch "
            "(N, C, H, W) / (N, H, W) / (N, H, W, C) with 1, 3 or 4 channels, nor values per example (N,) / (N, D)."
        )
    if isinstance(x, (list, tuple)) and x:
        first = x[0]
        if is_pil(first):
            return "image"
        if isinstance(first, (Tensor, np.ndarray)) and image_layout(tuple(first.shape)) is not None:
            return "image"
        return "value"
    return "value"


def looks_like_images(x: Any) -> bool:
    try:
        return input_kind(x) == "image"
    except InputError:
        return False


def image_hw(sample: Any) -> tuple[int, int]:
    """Height and width of one image (tensor / array in any accepted layout, or PIL)."""
    if type(sample).__module__.startswith("PIL."):
        w, h = sample.size
        return int(h), int(w)
    shape = tuple(sample.shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return shape[1], shape[2]
    if shape[-1] in (1, 3, 4):
        return shape[0], shape[1]
    return shape[1], shape[2]


def display(sample: Any, kind: str) -> Any:
    """What the table and the image panel show for one sample: uint8 pixels, a PIL image, text or values."""
    if kind == "image":
        if is_pil(sample):
            return sample
        arr = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample)
        return to_uint8(arr)
    if isinstance(sample, str):
        return sample
    if isinstance(sample, (Tensor, np.ndarray)):
        arr = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else sample
        flat = arr.reshape(-1)[:MAX_VALUES_SHOWN]
        vals = [plain(round(float(v), 6)) if arr.dtype.kind == "f" else plain(v) for v in flat.tolist()]
        if arr.ndim == 0:
            return vals[0]
        text = " ".join(str(v) for v in vals)
        return text + (" ..." if arr.size > MAX_VALUES_SHOWN else "")
    return str(sample)


def bands(arr: np.ndarray) -> list[slice]:
    return [slice(r, r + BAND_ROWS) for r in range(0, arr.shape[0], BAND_ROWS)] if arr.ndim else [slice(None)]


def display_range(arr: np.ndarray) -> tuple[float, float]:
    """The values one image's pixels are scaled from: ``(0, 1)`` for floats in [0, 1], ``(0, 255)`` for
    integers in [0, 255], else the finite minimum and maximum."""
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        return 0.0, 255.0
    lo, hi = math.inf, -math.inf
    for band in bands(arr):
        a = arr[band].astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if lo > hi:  # no finite pixel
        lo, hi = 0.0, 1.0
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0  # [0, 1] floats keep their brightness
    elif arr.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    return lo, hi


def to_uint8(arr: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """Display pixels ``(H, W)`` / ``(H, W, C)`` uint8 of one image, in their own memory mapping
    (:func:`~lw_callbacks.core.offheap.off_heap`). Floats and wide integers are scaled from ``scale``
    (default: the image's own :func:`display_range`) a band of rows at a time, so the float64 working
    copies stay small instead of eight times the image."""
    layout = image_layout(tuple(arr.shape))
    if layout == "chw":
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    out = off_heap_empty(arr.shape, np.uint8)
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        out[...] = arr
        if arr.dtype == np.bool_:
            out *= 255
        return out
    row_bands = bands(arr)
    lo, hi = scale if scale is not None else display_range(arr)
    for band in row_bands:
        a = arr[band].astype(np.float64)
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        scaled = np.where(np.isnan(a), 0.0, scaled)
        scaled = np.where(np.isposinf(a), 1.0, scaled)
        scaled = np.where(np.isneginf(a), 0.0, scaled)
        out[band] = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out
