"""Histogram counts and edges of a step's tensors, as ``torch.histc`` with each tensor's finite min
and max gives them: small CPU tensors counted together in one ``bincount``, large ones in chunks,
tensors on another device counted there and read once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def histograms(named: Sequence[tuple[str, Tensor]], bins: int) -> dict[str, Any]:
    """``wandb.Histogram`` of each tensor: ``bins`` equal bins between its finite min and max.

    The counts are those of ``torch.histc(t, bins, min, max)`` with ``t``'s finite min and max (the
    value ``v`` counts in bin ``int((v - min) * bins / (max - min))`` in float32 arithmetic, ``max``
    in the last bin), the edges those of ``torch.linspace(min, max, bins + 1)``. Values that are NaN
    or infinite are left out; a tensor with no finite value (or no element) is skipped; a sparse
    tensor's implicit zeros are counted; a tensor whose values are all equal gets one bin.

    One read of each tensor for its range and one for its counts. On the CPU, tensors of up to
    ``_SMALL`` values are concatenated in groups (their ranges by one segmented reduction, their
    counts by one ``bincount`` per group), and each larger one is counted chunk by chunk through two
    buffers that stay in the CPU's cache: about 2 MB of temporaries whatever the model's size
    (besides a float32 copy of a float16 / bfloat16 tensor). On another device (CUDA), a tensor's
    counts are one ``bincount`` per chunk of ``_DEVICE_CHUNK`` values, about 50 MB of temporaries
    (``bincount`` without weights is deterministic on CUDA, ``histc`` is not), and the ranges and
    the counts come back to the CPU in one transfer each.
    """
    import wandb

    small = _small_on_cpu(named, bins)
    if small is not None:
        return {key: wandb.Histogram(np_histogram=row) for key, row in small.items()}  # type: ignore[arg-type]
    keys: list[str] = []
    flats: list[np.ndarray | Tensor] = []
    extra_zeros: list[int] = []
    for key, tensor in named:
        flat, zeros = _flat_values(tensor)
        if _size(flat) == 0 and zeros == 0:
            continue
        keys.append(key)
        flats.append(flat)
        extra_zeros.append(zeros)
    if not flats:
        return {}
    on_cpu = _CpuGroups({i: f for i, f in enumerate(flats) if isinstance(f, np.ndarray)})
    on_device = {i: f for i, f in enumerate(flats) if isinstance(f, Tensor)}
    ranges = on_cpu.ranges()
    if on_device:
        found = _device_stack([torch.stack(torch.aminmax(f)) for f in on_device.values()]).tolist()
        ranges.update(zip(on_device, (tuple(r) for r in found), strict=True))
    for i in range(len(flats)):
        lo, hi = ranges[i]
        if not (math.isfinite(lo) and math.isfinite(hi)):  # rare: drop NaN / inf, then measure again
            lo, hi = on_cpu.keep_finite(i) if i in on_cpu.flats else _keep_finite(on_device, i)
            if math.isnan(lo) and extra_zeros[i]:
                lo = hi = 0.0
        if extra_zeros[i]:  # a sparse tensor's implicit zeros fall inside the range
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        ranges[i] = (lo, hi)
    spread = [i for i in range(len(flats)) if ranges[i][0] < ranges[i][1]]
    counts = on_cpu.counts([i for i in spread if i in on_cpu.flats], ranges, bins)
    counts.update(_device_counts({i: on_device[i] for i in spread if i in on_device}, ranges, bins))
    table = np.stack([counts[i] for i in spread]) if spread else np.zeros((0, bins), dtype=np.int64)
    for row, i in enumerate(spread):
        if extra_zeros[i]:
            table[row, _bin_of_zero(*ranges[i], bins)] += extra_zeros[i]
    lows = np.array([ranges[i][0] for i in spread], dtype=np.float32)[:, None]
    highs = np.array([ranges[i][1] for i in spread], dtype=np.float32)[:, None]
    edges = _linspace(lows, highs, bins)
    rows = dict(zip(spread, zip(table.tolist(), edges.tolist(), strict=True), strict=True))
    out: dict[str, Any] = {}
    for i, key in enumerate(keys):
        lo, hi = ranges[i]
        if i in rows:
            out[key] = wandb.Histogram(np_histogram=rows[i])  # lists are taken as is
        elif not math.isnan(lo):  # every value equal: one bin, as wandb.watch does
            out[key] = wandb.Histogram(np_histogram=([_size(flats[i]) + extra_zeros[i]], [lo, hi]))  # type: ignore[arg-type]
    return out


def _small_on_cpu(named: Sequence[tuple[str, Tensor]], bins: int) -> dict[str, tuple[list[int], list[float]]] | None:
    """A small model's log step (every tensor dense float32 on the CPU, finite, not all one value, all of
    them together at most ``_CPU_CHUNK`` values): the same counts and edges as the general path, in one
    concatenation, one segmented min / max and one ``bincount``, with little Python around them
    (about half the general path's time for a few tiny tensors); ``None`` for any other case."""
    flats = []
    total = 0
    for _, tensor in named:
        size = tensor.numel()
        if tensor.is_sparse or tensor.dtype != torch.float32 or tensor.device.type != "cpu" or not 0 < size <= _SMALL:
            return None
        total += size
        flats.append(tensor.detach().reshape(-1).numpy())
    if not flats or total > _CPU_CHUNK:
        return None
    values = np.concatenate(flats) if len(flats) > 1 else flats[0]
    lengths = np.fromiter((f.size for f in flats), dtype=np.int64, count=len(flats))
    starts = np.cumsum(lengths) - lengths
    lows, highs = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
    if not (np.isfinite(lows).all() and np.isfinite(highs).all() and (lows < highs).all()):
        return None  # a NaN, an infinity or a tensor of one value: the general path
    counts = _segment_counts(values, lengths, lows, highs, bins).tolist()
    edges = _linspace(lows[:, None], highs[:, None], bins).tolist()
    return {key: (counts[k], edges[k]) for k, (key, _) in enumerate(named)}


_SMALL = 1 << 14  # values: a tensor up to this size is counted with others in one bincount
_CPU_CHUNK = 1 << 16  # values per step on the CPU: the buffers (~0.8 MB) stay in the cache
_DEVICE_CHUNK = 1 << 22  # values per bincount on another device: ~50 MB of temporaries


class _CpuGroups:
    """The flat float32 arrays of one log step on the CPU: the small ones concatenated in groups of
    up to ``_CPU_CHUNK`` values, the large ones on their own."""

    def __init__(self, flats: dict[int, np.ndarray]) -> None:
        self.flats = flats
        self.small: list[list[int]] = []  # groups of indices of small arrays
        self.large: list[int] = []
        self._joined: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        group: list[int] = []
        size = 0
        for i, flat in flats.items():
            if flat.size > _SMALL:
                self.large.append(i)
                continue
            if size + flat.size > _CPU_CHUNK and group:
                self.small.append(group)
                group, size = [], 0
            group.append(i)
            size += flat.size
        if group:
            self.small.append(group)

    def _join(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Group ``g``'s values concatenated, and the length of each of its arrays."""
        if g not in self._joined:
            parts = [self.flats[i] for i in self.small[g]]
            lengths = np.array([p.size for p in parts])
            self._joined[g] = (np.concatenate(parts) if len(parts) > 1 else parts[0], lengths)
        return self._joined[g]

    def ranges(self) -> dict[int, tuple[float, float]]:
        """Each array's (min, max) as floats (NaN where it holds a NaN or no value)."""
        out: dict[int, tuple[float, float]] = {}
        for g, group in enumerate(self.small):
            values, lengths = self._join(g)
            present = lengths > 0
            if not present.any():
                out.update((i, (math.nan, math.nan)) for i in group)
                continue
            starts = (np.cumsum(lengths) - lengths)[present]
            found = zip(np.minimum.reduceat(values, starts).tolist(), np.maximum.reduceat(values, starts).tolist(),
                        strict=True)
            for i, here in zip(group, present.tolist(), strict=True):
                out[i] = next(found) if here else (math.nan, math.nan)
        if self.large:
            found_large = torch.stack(
                [torch.stack(torch.aminmax(torch.from_numpy(self.flats[i]))) for i in self.large]
            ).tolist()
            out.update(zip(self.large, (tuple(r) for r in found_large), strict=True))
        return out

    def keep_finite(self, i: int) -> tuple[float, float]:
        """Drop array ``i``'s NaN and infinite values; its new (min, max) (NaN when none is left)."""
        flat = self.flats[i] = self.flats[i][np.isfinite(self.flats[i])]
        for g, group in enumerate(self.small):
            if i in group:
                self._joined.pop(g, None)
        return (float(flat.min()), float(flat.max())) if flat.size else (math.nan, math.nan)

    def counts(self, which: list[int], ranges: dict[int, tuple[float, float]], bins: int) -> dict[int, np.ndarray]:
        """The counts of arrays ``which`` (each finite with ``lo < hi``), as ``torch.histc`` gives them."""
        wanted = set(which)
        out = {i: _cpu_counts(self.flats[i], *ranges[i], bins) for i in self.large if i in wanted}
        for g, group in enumerate(self.small):
            members = [(k, i) for k, i in enumerate(group) if i in wanted]
            if not members:
                continue
            values, lengths = self._join(g)
            # the others (all values equal, or none left) fall in their first bin, and are not read
            lows = np.array([ranges[i][0] for i in group], dtype=np.float32)
            highs = np.array([ranges[i][1] if i in wanted else ranges[i][0] + 1.0 for i in group], dtype=np.float32)
            table = _segment_counts(values, lengths, lows, highs, bins)
            out.update((i, table[k]) for k, i in members)
        return out


def _segment_counts(
    values: np.ndarray, lengths: np.ndarray, lows: np.ndarray, highs: np.ndarray, bins: int
) -> np.ndarray:
    """The counts of each segment of ``values`` (segment ``k``: the next ``lengths[k]`` values) in
    ``bins`` bins between ``lows[k]`` and ``highs[k]`` (float32, ``lows < highs``, every value within),
    as ``torch.histc`` gives them: one row per segment, from one ``bincount``."""
    row = np.repeat(np.arange(len(lengths)), lengths)
    scaled = values - lows[row]
    scaled *= np.float32(bins)
    scaled /= (highs - lows)[row]
    slots = scaled.astype(np.int64)
    np.minimum(slots, bins - 1, out=slots)
    slots += row * bins
    return np.bincount(slots, minlength=len(lengths) * bins).reshape(len(lengths), bins)


def _cpu_counts(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """``torch.histc(values, bins, lo, hi)`` of finite float32 values within ``[lo, hi]``, as int64,
    in steps of ``_CPU_CHUNK`` values through two buffers that stay in the cache."""
    low = np.float32(lo)
    width = np.float32(hi) - low
    scale = np.float32(bins)
    chunk = min(values.size, _CPU_CHUNK)
    scaled = np.empty(chunk, dtype=np.float32)
    slots = np.empty(chunk, dtype=np.int64)
    total = np.zeros(bins + 1, dtype=np.int64)
    for start in range(0, values.size, chunk):
        piece = values[start : start + chunk]
        f, s = scaled[: piece.size], slots[: piece.size]
        np.subtract(piece, low, out=f)
        np.multiply(f, scale, out=f)
        np.divide(f, width, out=f)
        np.copyto(s, f, casting="unsafe")
        total += np.bincount(s, minlength=bins + 1)
    total[bins - 1] += total[bins]  # the max itself (and what rounds up to it) is in the last bin
    return total[:bins]


def _keep_finite(flats: dict[int, Tensor], i: int) -> tuple[float, float]:
    """Drop tensor ``i``'s NaN and infinite values; its new (min, max) (NaN when none is left)."""
    flat = flats[i] = flats[i][torch.isfinite(flats[i])]
    if not flat.numel():
        return math.nan, math.nan
    lo, hi = torch.stack(torch.aminmax(flat)).tolist()
    return lo, hi


def _device_counts(
    flats: dict[int, Tensor], ranges: dict[int, tuple[float, float]], bins: int
) -> dict[int, np.ndarray]:
    """The counts of tensors on a device (CUDA): ``bincount`` per chunk, summed there, one transfer."""
    if not flats:
        return {}
    rows = []
    for i, flat in flats.items():
        lo, hi = ranges[i]
        low = torch.tensor(lo, dtype=torch.float32, device=flat.device)
        width = torch.tensor(hi, dtype=torch.float32, device=flat.device) - low
        total = torch.zeros(bins, dtype=torch.int64, device=flat.device)
        for start in range(0, flat.numel(), _DEVICE_CHUNK):
            index = (flat[start : start + _DEVICE_CHUNK] - low).mul_(bins).div_(width)
            total += torch.bincount(index.to(torch.int64).clamp_(max=bins - 1), minlength=bins)
        rows.append(total)
    table = _device_stack(rows).numpy()
    return {i: table[k] for k, i in enumerate(flats)}


def _linspace(lows: np.ndarray, highs: np.ndarray, bins: int) -> np.ndarray:
    """``torch.linspace(lo, hi, bins + 1)`` (float32) of each row's ``lo`` and ``hi``, as float64."""
    step = ((highs - lows) / np.float32(bins)).astype(np.float64)
    k = np.arange(bins + 1, dtype=np.float64)
    # torch fills the first half up from ``lo`` and the rest down from ``hi``, each a fused multiply-add
    # (the float32 product is exact in float64, so one rounding to float32 follows, as in an FMA)
    edges = np.where(k < (bins + 1) // 2, lows + step * k, highs - step * (bins - k))
    return edges.astype(np.float32).astype(np.float64)


def _bin_of_zero(lo: float, hi: float, bins: int) -> int:
    """The bin ``torch.histc`` counts a 0.0 in, for a range ``lo <= 0 <= hi``."""
    low = np.float32(lo)
    return min(int((np.float32(0.0) - low) * np.float32(bins) / (np.float32(hi) - low)), bins - 1)


def _size(flat: np.ndarray | Tensor) -> int:
    return flat.size if isinstance(flat, np.ndarray) else flat.numel()


def _flat_values(tensor: Tensor) -> tuple[np.ndarray | Tensor, int]:
    """``tensor``'s values as one flat float32 array (a NumPy view on the CPU, a tensor elsewhere),
    and the count of a sparse tensor's implicit zeros."""
    t = tensor.detach()
    zeros = 0
    if t.is_sparse:
        t = t.coalesce()
        values = t.values()
        zeros = t.numel() - values.numel()
        t = values
    if t.dtype != torch.float32:
        t = t.float()
    if t.device.type == "cpu":
        return np.ascontiguousarray(t.numpy().reshape(-1)), zeros
    return t.reshape(-1).contiguous(), zeros


def _device_stack(tensors: list[Tensor]) -> Tensor:
    """Stack same-shaped tensors and copy them to the CPU, in one transfer when they share a device."""
    try:
        return torch.stack(tensors).cpu()
    except RuntimeError:  # tensors on several devices
        return torch.stack([t.cpu() for t in tensors])
