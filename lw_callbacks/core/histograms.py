"""Parameter selection, histogram computation and logging at a step, and graph recording.

:class:`WatchOptions` holds the checked options; a :class:`HistogramCore` selects a module's
parameters, logs ``gradients/<name>`` / ``parameters/<name>`` histograms at a logging step through
the doorway, records the module graph from one forward pass, and removes every hook it installed.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lw_callbacks._errors import ConfigurationError, Option, WarnOnce, warn
from lw_callbacks._wandb import log, update_summary

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.utils.hooks import RemovableHandle
    from wandb.data_types import Graph
    from wandb.sdk.wandb_run import Run

__all__ = ["GRAPH_KEY", "LOG_CHOICES", "MAX_BINS", "HistogramCore", "WatchBase", "WatchOptions", "histograms"]

LOG_CHOICES = ("gradients", "parameters", "all")
MAX_BINS = 512  # wandb.Histogram.MAX_LENGTH
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
GRAPH_KEY = "graph_0"
OWNER = "WatchModel"  # the name warnings give, for the Trainer callback and the Fabric class


@dataclass(frozen=True)
class WatchOptions:
    """The options of one ``WatchModel`` or ``FabricWatchModel``, checked once by :meth:`check`."""

    log_mode: str = "gradients"
    log_freq: int = 100
    log_graph: bool = False
    include: list[str] | None = None
    exclude: list[str] | None = None
    bins: int = 64
    owner: str = field(default=OWNER, compare=False)  # the class the user built, named in messages

    @classmethod
    def check(
        cls, log: Any, log_freq: Any, log_graph: Any, include: Any, exclude: Any, bins: Any, owner: str = OWNER
    ) -> WatchOptions:
        """The options of the constructor's arguments, ``include`` / ``exclude`` as lists of patterns.

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
        return cls(log, log_freq, log_graph, _patterns("include", include, owner), _patterns("exclude", exclude, owner),
                   bins, owner)

    @property
    def log_gradients(self) -> bool:
        """Whether gradient histograms are logged."""
        return self.log_mode in ("gradients", "all")

    @property
    def log_parameters(self) -> bool:
        """Whether parameter histograms are logged."""
        return self.log_mode in ("parameters", "all")


class WatchBase:
    """The constructor and the read-only options shared by ``WatchModel`` and ``FabricWatchModel``: the
    options checked once into :class:`WatchOptions`, and the :class:`HistogramCore` that uses them."""

    def __init__(
        self,
        log: Literal["gradients", "parameters", "all"] = "gradients",
        log_freq: int = 100,
        log_graph: bool = False,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        bins: int = 64,
    ) -> None:
        super().__init__()
        self._options = WatchOptions.check(log, log_freq, log_graph, include, exclude, bins, type(self).__name__)
        self.core = HistogramCore(self._options)

    @property
    def options(self) -> WatchOptions:
        """The checked options (frozen), shared with the core."""
        return self._options

    @property
    def watched_names(self) -> list[str]:
        """Names of the watched parameters (rank 0, while watching; empty otherwise)."""
        return self.core.watched_names

    # not ``log``: Lightning sets ``callback.log = pl_module.log`` on every callback at fit start
    log_mode = Option[str](
        'What is logged: ``"gradients"``, ``"parameters"`` or ``"all"`` (the ``log`` argument).', via="options"
    )
    log_freq = Option[int]("Optimizer steps between two logs.", via="options")
    log_graph = Option[bool]("Whether the module graph is logged from the first training batch.", via="options")
    include = Option["list[str] | None"]("Parameter-name patterns to watch (``None``: every trainable one).",
                                        via="options")
    exclude = Option["list[str] | None"]("Parameter-name patterns not to watch.", via="options")
    bins = Option[int]("Bins per histogram.", via="options")


class HistogramCore:
    """The histograms and graph of one ``WatchModel`` (Trainer or Fabric), with its :class:`WatchOptions`.
    Between :meth:`start` and :meth:`release` it holds the run and the watched parameters; only global
    rank 0 starts it."""

    def __init__(self, options: WatchOptions) -> None:
        self.options = options
        self.owner = options.owner  # the class the user built, named in warnings
        self._run: Run | None = None
        self._watched: list[tuple[str, nn.Parameter]] = []
        self._last_step: int | None = None
        self.graph_pending = False  # log_graph, until the first training batch recorded it
        self._graph: Graph | None = None
        self._graph_handles: list[RemovableHandle] = []
        self._warnings = WarnOnce()
        # optimizer steps counted, per optimizer (a model with several), so that a resumed fit goes on counting
        self.optimizer_steps: dict[int, int] = {}

    @property
    def run(self) -> Run | None:
        """The run histograms are logged to (between :meth:`start` and :meth:`release`, on rank 0)."""
        return self._run

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
            for kind, patterns in (("include", self.options.include), ("exclude", self.options.exclude))
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
            if (self.options.include is None or any(fnmatch.fnmatchcase(n, pat) for pat in self.options.include))
            and not any(fnmatch.fnmatchcase(n, pat) for pat in self.options.exclude or ())
        ]
        if not watched:
            why = "it has no trainable parameter" if not trainable else "`include` / `exclude` leave none"
            self._warnings.warn(
                f"{self.owner}: nothing to watch in {type(module).__name__}: {why}. No histogram is logged."
            )
        return watched

    def start(self, run: Run | None, watched: list[tuple[str, nn.Parameter]]) -> bool:
        """Watch ``watched`` (from :meth:`select`) on ``run``; a graph is pending with ``log_graph``.
        ``False`` when ``run`` is ``None`` (W&B disabled): then nothing is watched."""
        self._run = run
        if run is None:
            return False
        self._watched = watched
        self._last_step = None
        self.graph_pending = self.options.log_graph
        return True

    def log_histograms(self, step: int, wandb_step: int | None = None, optimizer: Optimizer | None = None) -> None:
        """Log the watched tensors' histograms when optimizer step ``step`` is a logging step, at W&B
        step ``wandb_step`` (the step metrics are logged at for this batch; ``step`` when ``None``).

        With ``optimizer`` (a model with several optimizers: ``step`` counts that optimizer's steps),
        only the watched parameters in its ``param_groups`` are logged: their gradients are the ones
        it is about to step with, while the others' may be left over from another optimizer's step.
        """
        if self._run is None or step % self.options.log_freq != 0 or not self._watched:
            return
        if optimizer is None:
            if step == self._last_step:
                return
            self._last_step = step
            watched = self._watched
        else:
            owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
            watched = [(n, p) for n, p in self._watched if id(p) in owned]
        tensors: list[tuple[str, Tensor]] = []
        if self.options.log_gradients:
            tensors += [(f"gradients/{n}", p.grad) for n, p in watched if p.grad is not None]
        if self.options.log_parameters:
            tensors += [(f"parameters/{n}", p) for n, p in watched]
        try:
            payload = histograms(tensors, self.options.bins)  # both kinds in one pass
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
        if not self.graph_pending or self._graph_handles:
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
        if not self.graph_pending:
            return
        self.graph_pending = False
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
        self.graph_pending = False
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
    row = np.repeat(np.arange(len(flats)), lengths)
    scaled = values - lows[row]
    scaled *= np.float32(bins)
    scaled /= (highs - lows)[row]
    slots = scaled.astype(np.int64)
    np.minimum(slots, bins - 1, out=slots)
    slots += row * bins
    counts = np.bincount(slots, minlength=len(flats) * bins).reshape(len(flats), bins).tolist()
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
            row = np.repeat(np.arange(len(group)), lengths)
            scaled = values - lows[row]
            scaled *= np.float32(bins)
            scaled /= (highs - lows)[row]
            slots = scaled.astype(np.int64)
            np.minimum(slots, bins - 1, out=slots)
            slots += row * bins
            table = np.bincount(slots, minlength=len(group) * bins).reshape(len(group), bins)
            out.update((i, table[k]) for k, i in members)
        return out


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
