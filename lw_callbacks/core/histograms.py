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

from torch import Tensor, nn

from lw_callbacks._errors import ConfigurationError, Option, WarnOnce, warn
from lw_callbacks._wandb import log, update_summary
from lw_callbacks.core.bins import histograms

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

