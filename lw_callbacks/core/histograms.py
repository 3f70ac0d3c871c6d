"""Parameter selection, histogram computation and logging at a step, and graph recording.

:func:`check_arguments` validates the options; a :class:`HistogramCore` selects a module's
parameters, logs ``gradients/<name>`` / ``parameters/<name>`` histograms at a logging step through
the doorway, records the module graph from one forward pass, and removes every hook it installed.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lw_callbacks._errors import ConfigurationError, WarnOnce, warn
from lw_callbacks._wandb import log, update_summary

__all__ = ["GRAPH_KEY", "LOG_CHOICES", "MAX_BINS", "HistogramCore", "check_arguments", "histograms"]

LOG_CHOICES = ("gradients", "parameters", "all")
MAX_BINS = 512  # wandb.Histogram.MAX_LENGTH
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
GRAPH_KEY = "graph_0"
OWNER = "WatchModel"  # the name warnings give, for the Trainer callback and the Fabric class


def check_arguments(
    log: Any, log_freq: Any, log_graph: Any, include: Any, exclude: Any, bins: Any, owner: str = OWNER
) -> tuple[list[str] | None, list[str] | None]:
    """Validate ``WatchModel``'s arguments; returns ``include`` and ``exclude`` as lists of patterns.

    Raises:
        ConfigurationError: for any argument ``WatchModel`` does not accept, naming it and the fix.
    """
    if log not in LOG_CHOICES:
        raise ConfigurationError(
            f"{owner}(log={log!r}) is not supported: `log` must be one of "
            f"{', '.join(repr(c) for c in LOG_CHOICES)}. To log nothing, leave {owner} out of the callbacks."
        )
    if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
        raise ConfigurationError(
            f"{owner}(log_freq={log_freq!r}) is not supported: `log_freq` must be an int >= 1 "
            "(the number of optimizer steps between two logs), e.g. log_freq=100."
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ConfigurationError(
            f"{owner}(bins={bins!r}) is not supported: `bins` must be an int from 1 to {MAX_BINS} "
            "(W&B keeps at most 512 bins per histogram), e.g. bins=64."
        )
    if not isinstance(log_graph, bool):
        raise ConfigurationError(
            f"{owner}(log_graph={log_graph!r}) is not supported: `log_graph` must be True or False, "
            f"got {type(log_graph).__name__}."
        )
    return _patterns("include", include, owner), _patterns("exclude", exclude, owner)


class HistogramCore:
    """The histograms and graph of one ``WatchModel`` (Trainer or Fabric); options as validated by
    :func:`check_arguments`. Between :meth:`start` and :meth:`release` it holds the run and the
    watched parameters; only global rank 0 starts it."""

    def __init__(
        self,
        log_mode: str = "gradients",
        log_freq: int = 100,
        log_graph: bool = False,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        bins: int = 64,
        owner: str = OWNER,
    ) -> None:
        self.owner = owner  # the class the user built, named in warnings
        self.log_mode = log_mode
        self.log_freq = log_freq
        self.log_graph = log_graph
        self.include = include
        self.exclude = exclude
        self.bins = bins
        self._run: Any | None = None
        self._watched: list[tuple[str, nn.Parameter]] = []
        self._last_step: int | None = None
        self._graph_pending = False
        self._graph: Any | None = None
        self._graph_handles: list[Any] = []
        self._warnings = WarnOnce()

    @property
    def run(self) -> Any | None:
        """The run histograms are logged to (between :meth:`start` and :meth:`release`, on rank 0)."""
        return self._run

    @property
    def log_gradients(self) -> bool:
        """Whether gradient histograms are logged."""
        return self.log_mode in ("gradients", "all")

    @property
    def log_parameters(self) -> bool:
        """Whether parameter histograms are logged."""
        return self.log_mode in ("parameters", "all")

    @property
    def watched_names(self) -> list[str]:
        """Names of the watched parameters (empty before :meth:`start`, after :meth:`release`, off rank 0)."""
        return [name for name, _ in self._watched]

    def select(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The trainable parameters that pass ``include`` / ``exclude``; warns about unmatched patterns."""
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        names = [n for n, _ in trainable]
        unmatched = tuple(
            f"{kind}={pattern!r}"
            for kind, patterns in (("include", self.include), ("exclude", self.exclude))
            for pattern in patterns or ()
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names)
        )
        if unmatched:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            self._warnings.warn(
                f"{self.owner}: these patterns match no trainable parameter of {type(module).__name__}: "
                f"{', '.join(unmatched)}. Parameter names look like: {shown or '(none)'}."
            )
        watched = [
            (n, p)
            for n, p in trainable
            if (self.include is None or any(fnmatch.fnmatchcase(n, pat) for pat in self.include))
            and not any(fnmatch.fnmatchcase(n, pat) for pat in self.exclude or ())
        ]
        if not watched:
            why = "it has no trainable parameter" if not trainable else "`include` / `exclude` leave none"
            self._warnings.warn(
                f"{self.owner}: nothing to watch in {type(module).__name__}: {why}. No histogram is logged."
            )
        return watched

    def start(self, run: Any | None, watched: list[tuple[str, nn.Parameter]]) -> bool:
        """Watch ``watched`` (from :meth:`select`) on ``run``; a graph is pending with ``log_graph``.
        ``False`` when ``run`` is ``None`` (W&B disabled): then nothing is watched."""
        self._run = run
        if run is None:
            return False
        self._watched = watched
        self._last_step = None
        self._graph_pending = self.log_graph
        return True

    def log_histograms(self, step: int, wandb_step: int | None = None) -> None:
        """Log the watched tensors' histograms when optimizer step ``step`` is a logging step, at W&B
        step ``wandb_step`` (the step metrics are logged at for this batch; ``step`` when ``None``)."""
        if self._run is None or step % self.log_freq != 0 or step == self._last_step or not self._watched:
            return
        self._last_step = step
        tensors: list[tuple[str, Tensor]] = []
        if self.log_gradients:
            tensors += [(f"gradients/{n}", p.grad) for n, p in self._watched if p.grad is not None]
        if self.log_parameters:
            tensors += [(f"parameters/{n}", p) for n, p in self._watched]
        try:
            payload = histograms(tensors, self.bins)  # both kinds in one pass
        except Exception as err:  # a logging failure must never end a training run
            warn(
                f"{self.owner}: computing histograms at step {step} failed ({type(err).__name__}: {err}); "
                "training goes on without them."
            )
            return
        if payload:
            log(self._run, payload, step if wandb_step is None else wandb_step, self.owner)

    # --------------------------------------------------------------------------------------- graph

    def arm_graph(self, module: nn.Module) -> None:
        """Put forward hooks on ``module``'s children that record the graph, when a graph is pending
        and not yet armed."""
        if not self._graph_pending or self._graph_handles:
            return
        import wandb
        from wandb.data_types import Node

        graph = wandb.Graph(format="torch")
        self._graph = graph

        def node_hook(name: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                if id(module) in graph.nodes_by_id:
                    return
                try:
                    params = [(pname, list(p.size())) for pname, p in module.named_parameters()]
                    graph.add_node(
                        Node(
                            id=id(module),
                            name=name,
                            class_name=str(module),
                            output_shape=_nested_shape(output),
                            parameters=params,
                            num_parameters=[math.prod(size) for _, size in params],
                        )
                    )
                except Exception as err:  # a logging failure must never end a training run
                    warn(f"{self.owner}: describing {name} for the graph failed ({type(err).__name__}: {err}).")

            return hook

        for name, child in _graph_modules(module):
            self._graph_handles.append(child.register_forward_hook(node_hook(name)))

    def finish_graph(self) -> None:
        """When a graph is pending: remove its hooks and write what they recorded to the run summary."""
        if not self._graph_pending:
            return
        self._graph_pending = False
        self._disarm_graph()
        graph, self._graph = self._graph, None
        if graph is None or self._run is None:
            return
        if not graph.nodes:
            warn(f"{self.owner}: no module ran in the first training batch, so no graph was logged.")
            return
        update_summary(self._run, {GRAPH_KEY: graph}, self.owner)

    def _disarm_graph(self) -> None:
        for handle in self._graph_handles:
            handle.remove()
        self._graph_handles = []

    def release(self) -> None:
        """Remove every hook this core installed and drop its references to the model and the run."""
        self._disarm_graph()
        self._graph = None
        self._graph_pending = False
        self._watched = []
        self._run = None


def _patterns(argument: str, value: str | Sequence[str] | None, owner: str = OWNER) -> list[str] | None:
    if value is None:
        return None
    try:
        patterns = [value] if isinstance(value, str) else list(value)
    except TypeError:
        patterns = [value]  # type: ignore[list-item]
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise ConfigurationError(
            f"{owner}({argument}={value!r}) is not supported: `{argument}` must be a parameter-name pattern "
            f"or a list of them (fnmatch style, e.g. {argument}=['layer_1.*', '*.bias']); got {bad!r}."
        )
    return patterns


def _graph_modules(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules ``wandb.watch`` draws as graph nodes: children, looking inside plain containers."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, _CONTAINERS):
            found.extend(_graph_modules(child, full))
        else:
            found.append((full, child))
    return found


def _nested_shape(value: Any) -> Any:
    if isinstance(value, Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_nested_shape(v) for v in value]
    if isinstance(value, dict):
        return [_nested_shape(v) for v in value.values()]
    return []


def histograms(named: Sequence[tuple[str, Tensor]], bins: int) -> dict[str, Any]:
    """``wandb.Histogram`` of each tensor: ``bins`` equal bins between its finite min and max.

    Works on the tensors' own device. The ranges come back to the CPU in one transfer; the counts of
    all tensors are taken by one ``bincount`` per chunk of about a million values (``torch.histc``
    per tensor has a fixed cost of several milliseconds on a busy multi-threaded CPU, and is not
    deterministic on CUDA) and come back in one more. Values that are NaN or infinite are left
    out; a tensor with no finite value (or no element) is skipped.
    """
    import wandb

    keys: list[str] = []
    flats: list[Tensor] = []
    extra_zeros: list[int] = []
    for key, tensor in named:
        flat, zeros = _flat_values(tensor)
        if flat.numel() == 0 and zeros == 0:
            continue
        keys.append(key)
        flats.append(flat)
        extra_zeros.append(zeros)
    if not flats:
        return {}
    ranges = _to_cpu([torch.stack(torch.aminmax(f)) if f.numel() else f.new_zeros(2) for f in flats]).tolist()
    for i, (lo, hi) in enumerate(ranges):
        if not (math.isfinite(lo) and math.isfinite(hi)):  # rare: drop NaN / inf, then measure again
            flat = flats[i] = flats[i][torch.isfinite(flats[i])]
            lo, hi = _to_cpu(list(torch.aminmax(flat))).tolist() if flat.numel() else (math.nan, math.nan)
            if math.isnan(lo) and extra_zeros[i]:
                lo = hi = 0.0
        if extra_zeros[i]:  # a sparse tensor's implicit zeros must fall inside the range
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        ranges[i] = [lo, hi]
    spread = [i for i, (lo, hi) in enumerate(ranges) if lo < hi]
    counts = _bincounts([flats[i] for i in spread], [ranges[i] for i in spread], bins) if spread else None
    if counts is not None:
        lows = np.array([ranges[i][0] for i in spread])
        highs = np.array([ranges[i][1] for i in spread])
        edges = lows[:, None] + (highs - lows)[:, None] * (np.arange(bins + 1) / bins)
        edges[:, -1] = highs
    row = {i: r for r, i in enumerate(spread)}
    out: dict[str, Any] = {}
    for i, (key, flat, zeros, (lo, hi)) in enumerate(zip(keys, flats, extra_zeros, ranges, strict=True)):
        if math.isnan(lo):
            continue
        if i not in row:  # every value equal: one bin, as wandb.watch does
            out[key] = wandb.Histogram(np_histogram=(np.array([flat.numel() + zeros]), np.array([lo, hi])))
            continue
        assert counts is not None
        values = counts[row[i]]
        if zeros:
            values[min(int((0.0 - lo) / (hi - lo) * bins), bins - 1)] += zeros
        out[key] = wandb.Histogram(np_histogram=(values, edges[row[i]]))
    return out


_CHUNK = 1 << 20  # values per bincount: bounds the temporary memory to ~12 MB


def _bincounts(flats: Sequence[Tensor], ranges: Sequence[Sequence[float]], bins: int) -> np.ndarray:
    """Counts of ``bins`` equal bins over ``[lo, hi]`` for each flat tensor, as ``torch.histc`` gives."""
    n = len(flats)
    device = flats[0].device
    lows = torch.tensor([lo for lo, _ in ranges], dtype=torch.float32, device=device)
    scales = torch.tensor([bins / (hi - lo) for lo, hi in ranges], dtype=torch.float32, device=device)
    total = torch.zeros(n * bins, dtype=torch.int64, device=device)
    pieces: list[Tensor] = []
    owners: list[int] = []
    lengths: list[int] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        if not pieces:
            return
        values = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        owner, offset = _owners(tuple(owners), tuple(lengths), device, bins)
        index = (values - lows.index_select(0, owner)).mul_(scales.index_select(0, owner))
        index = index.to(torch.int64).clamp_(0, bins - 1)
        index += offset
        total.add_(torch.bincount(index, minlength=n * bins))
        pieces.clear()
        owners.clear()
        lengths.clear()
        pending = 0

    for i, flat in enumerate(flats):
        if flat.device != device:
            flat = flat.to(device)
        for start in range(0, flat.numel(), _CHUNK):
            piece = flat[start : start + _CHUNK]
            if pending + piece.numel() > _CHUNK:
                flush()
            pieces.append(piece)
            owners.append(i)
            lengths.append(piece.numel())
            pending += piece.numel()
    flush()
    return total.reshape(n, bins).cpu().numpy()


@functools.lru_cache(maxsize=8)
def _owners(
    owners: tuple[int, ...], lengths: tuple[int, ...], device: torch.device, bins: int
) -> tuple[Tensor, Tensor]:
    """For each value of a concatenation: the index of its tensor, and that tensor's first bin.

    The watched tensors keep their sizes from one log step to the next, so this is built once.
    """
    owner = torch.repeat_interleave(torch.tensor(owners, device=device), torch.tensor(lengths, device=device))
    return owner, owner * bins


def _flat_values(tensor: Tensor) -> tuple[Tensor, int]:
    """A 1-D float view of ``tensor``'s values, and the count of a sparse tensor's implicit zeros."""
    t = tensor.detach()
    zeros = 0
    if t.is_sparse:
        t = t.coalesce()
        values = t.values()
        zeros = t.numel() - values.numel()
        t = values
    flat = t.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat, zeros


def _to_cpu(tensors: list[Tensor]) -> Tensor:
    """Stack same-shaped tensors and copy them to the CPU, in one transfer when they share a device."""
    try:
        return torch.stack([t.float() for t in tensors]).cpu()
    except RuntimeError:  # tensors on several devices
        return torch.stack([t.float().cpu() for t in tensors])
