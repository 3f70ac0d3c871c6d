"""Arrays in their own anonymous memory mappings, off the ``malloc`` heap.

The kept prediction samples live for the whole run and are made while the evaluation loop allocates
and frees batch-sized tensors. On the ``malloc`` heap, a few small long-lived arrays among those
batches keep freed batch memory from going back to the system (glibc raises its mmap threshold after
large frees, so batches land on the heap too): measured, 92 MiB kept after ``validate`` on 8,000
256x256 masks, against 5 MiB with the samples in their own mappings.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["is_off_heap", "off_heap", "off_heap_empty"]


def off_heap(arr: Any) -> Any:
    """A copy of ``arr`` in its own anonymous memory mapping (any other value, or an array already in one,
    as it is)."""
    if not isinstance(arr, np.ndarray) or arr.nbytes == 0 or arr.dtype.hasobject or is_off_heap(arr):
        return arr
    out = off_heap_empty(arr.shape, arr.dtype)
    out[...] = arr
    return out


def off_heap_empty(shape: Sequence[int], dtype: DTypeLike) -> np.ndarray:
    """An uninitialised array in its own anonymous memory mapping (see :func:`off_heap`)."""
    count = math.prod(shape)
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(tuple(shape), dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).reshape(tuple(shape))


def is_off_heap(arr: np.ndarray) -> bool:
    """Whether ``arr`` views an anonymous mapping made by :func:`off_heap_empty`."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
