"""Reading evaluation batches and step outputs: the error for unreadable input, batch sizes, the chosen
rows of a batch, the module's own ``predict_step``, and where each example of a rank's stream comes from.
Nothing here knows a task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from lw_callbacks._errors import ConfigurationError

__all__ = [
    "ACCEPTED_BATCH", "HOW_TO_PREDICT", "InputError", "batch_len", "callable_name", "dataset_index", "describe",
    "int_values", "is_strings",
    "label_list", "plain", "plain_output", "predict_step_of", "stream_length", "sub_batch", "take",
]

ACCEPTED_BATCH = (
    "a tuple / list `(x, y, ...)`, a dict holding the input and target under `input_key` / `target_key`, "
    "or a bare input tensor (no targets)"
)

HOW_TO_PREDICT = (
    "Pass {owner}(predict=<callable(module, batch) -> predictions>) (from LightningCLI YAML, its "
    "import path), give the module a predict_step that returns predictions for a batch, or return the "
    "predictions from the {stage} step."
)


class InputError(ConfigurationError):
    """A batch or step output ``LogPredictionSamples`` cannot read: a configuration error, raised at the
    first batch (or, first seen after training began, warned about once)."""


def describe(obj: Any) -> str:
    if isinstance(obj, (Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple)):
        inner = f" of {type(obj[0]).__name__}" if obj else ""
        return f"{type(obj).__name__} of {len(obj)}{inner}"
    return type(obj).__name__


def is_strings(v: Any) -> bool:
    """A non-empty list or tuple of strings (text inputs, or generated text)."""
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(s, str) for s in v)


def batch_len(x: Any, owner: str = "LogPredictionSamples") -> int:
    if isinstance(x, (Tensor, np.ndarray)):
        if x.ndim == 0:
            raise InputError(
                f"{owner}: the batch input is a scalar ({describe(x)}); expected a first (batch) "
                f"dimension. Accepted batches: {ACCEPTED_BATCH}."
            )
        return int(x.shape[0])
    try:
        return len(x)
    except TypeError:
        raise InputError(
            f"{owner}: cannot tell the batch size of a {type(x).__name__}. Accepted batches: "
            f"{ACCEPTED_BATCH}."
        ) from None


def sub_batch(batch: Any, local: list[int], n: int) -> Any:
    """A batch of ``batch``'s structure holding only rows ``local`` of its ``n`` examples: each tensor, array,
    list or tuple of length ``n`` (in a tuple / list / named tuple / dict batch, or the bare batch) keeps
    those rows; anything else is passed as it is. Tensors stay on their device."""

    def rows(v: Any) -> Any:
        if isinstance(v, (Tensor, np.ndarray)) and v.ndim > 0 and v.shape[0] == n:
            return take(v, local, keep_device=True)
        if isinstance(v, (list, tuple)) and not hasattr(v, "_fields") and len(v) == n:
            picked = [v[i] for i in local]
            return picked if isinstance(v, list) else tuple(picked)
        return v

    if isinstance(batch, Mapping):
        return {k: rows(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(rows(v) for v in batch))
    if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], str):
        parts = [rows(v) for v in batch]
        return parts if isinstance(batch, list) else tuple(parts)
    return rows(batch)


def predict_step_of(module: torch.nn.Module) -> str | None:
    """``"<Class>.predict_step"`` when the module defines its own ``predict_step`` (not Lightning's default)."""
    for cls in type(module).__mro__:
        if "predict_step" in vars(cls):
            package = (cls.__module__ or "").split(".")[0]
            if package in ("lightning", "pytorch_lightning", "lightning_fabric"):
                return None
            return f"{cls.__name__}.predict_step"
    return None


def plain_output(out: Any) -> Any:
    """A fallback's output as a step output: the first of ``(predictions, extras)``, tensors on the CPU."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]
    if isinstance(out, Tensor):
        out = out.detach().cpu()
    return out


def callable_name(fn: Callable[..., Any] | str | None) -> str:
    if isinstance(fn, str):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}" if module else str(name)


def take(x: Any, local: list[int], keep_device: bool = False) -> Any:
    """Rows ``local`` of a batch element, copied (never a view that keeps the whole batch alive)."""
    if isinstance(x, Tensor):
        idx = torch.as_tensor(local, dtype=torch.long, device=x.device)
        rows = x.detach().index_select(0, idx)
        return rows if keep_device else rows.cpu()
    if isinstance(x, np.ndarray):
        return x[np.asarray(local)].copy()
    return [x[i] for i in local]


def label_list(values: Any) -> list[Any]:
    if isinstance(values, Tensor):
        v = values.detach().cpu()
        if v.ndim == 2:  # one-hot targets
            v = v.argmax(dim=1)
        return [plain(a) for a in v.tolist()]
    if isinstance(values, np.ndarray):
        return [plain(a) for a in (values.argmax(axis=1) if values.ndim == 2 else values).tolist()]
    return [plain(a) for a in values]


def plain(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def int_values(values: Any) -> list[int]:
    if values is None:
        return []
    try:
        return [v for v in label_list(values) if isinstance(v, int) and not isinstance(v, bool)]
    except Exception:
        return []


def stream_length(loader: DataLoader[Any] | None, num_batches: Any) -> int | None:
    """How many examples this rank's evaluation stream yields, or ``None`` when it cannot be told."""
    if loader is None:
        return None
    sampler = getattr(loader, "sampler", None)
    length: int | None = None
    try:
        length = len(sampler) if sampler is not None else None
    except TypeError:
        length = None
    batch_size = getattr(loader, "batch_size", None)
    if isinstance(num_batches, int) and isinstance(batch_size, int) and batch_size > 0:
        capped = num_batches * batch_size
        length = capped if length is None else min(length, capped)
    return length


def dataset_index(loader: DataLoader[Any] | None, position: int) -> int:
    """The dataset index of the example at ``position`` of this rank's stream (the position if unknown)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return position
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        total = len(sampler.dataset)  # type: ignore[arg-type]
        if total:
            return (sampler.rank + position * sampler.num_replicas) % total
    return position
