"""Gradient and parameter histograms in a Fabric loop: :class:`FabricWatchModel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from lw_callbacks._errors import ConfigurationError, Option
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.histograms import HistogramCore
from lw_callbacks.core.histograms import check_arguments as histogram_arguments
from lw_callbacks.fabric._common import unwrap


class FabricWatchModel:
    r"""Gradient and parameter histograms of a model trained in a Fabric loop, and a clean unwatch.

    :meth:`watch` selects the parameters (``include`` / ``exclude``) and puts one hook on the
    optimizer (``register_step_pre_hook``): at every ``log_freq``-th optimizer step, right before
    it, global rank 0 logs ``gradients/<name>`` / ``parameters/<name>`` histograms at
    ``trainer/global_step`` = the number of optimizer steps taken since :meth:`watch`, computed by
    :class:`~lw_callbacks.WatchModel`'s core. No hook per parameter. With ``log_graph`` the model's
    graph is recorded during the first forward. :meth:`unwatch` (and ``training_done``) removes
    every hook.

    Args:
        log: ``"gradients"``, ``"parameters"`` or ``"all"``.
        log_freq: optimizer steps between two logs.
        log_graph: log the model graph from the first forward.
        include: glob(s) of parameter names to watch (``None``: all trainable).
        exclude: glob(s) of parameter names to leave out.
        bins: histogram bins (1-512).

    Raises:
        ValueError: at construction, for bad arguments (as ``WatchModel``); from :meth:`watch`, for
            an optimizer that takes no step hooks.
        ConfigurationError: from a hook, when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricWatchModel
        >>> watch = FabricWatchModel(log="all", log_freq=50)
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[watch])
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 1))
        >>> model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> fabric.call("watch", fabric, model, optimizer)
        >>> watch.watched_names
        ['0.weight', '0.bias']
        >>> for step in range(3):  # histograms at step 0
        ...     fabric.backward(model(torch.randn(4, 8)).pow(2).mean())
        ...     optimizer.step()
        ...     optimizer.zero_grad()
        >>> fabric.call("unwatch", fabric)
        >>> watch.watched_names
        []
    """

    def __init__(
        self,
        log: Literal["gradients", "parameters", "all"] = "gradients",
        log_freq: int = 100,
        log_graph: bool = False,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        bins: int = 64,
    ) -> None:
        owner = type(self).__name__
        include_patterns, exclude_patterns = histogram_arguments(
            log, log_freq, log_graph, include, exclude, bins, owner
        )
        self.core = HistogramCore(log, log_freq, log_graph, include_patterns, exclude_patterns, bins, owner)
        self._handle: Any = None
        self._steps = 0

    log_mode = Option[str]('What is logged: ``"gradients"``, ``"parameters"`` or ``"all"`` (the ``log`` argument).',
                           via="core")
    log_freq = Option[int]("Optimizer steps between two logs.", via="core")
    log_graph = Option[bool]("Whether the module graph is logged from the first forward.", via="core")
    include = Option["list[str] | None"]("Parameter-name patterns to watch (``None``: every one).", via="core")
    exclude = Option["list[str] | None"]("Parameter-name patterns not to watch.", via="core")
    bins = Option[int]("Bins per histogram.", via="core")

    @property
    def watched_names(self) -> list[str]:
        """Names of the watched parameters (rank 0, between watch and unwatch)."""
        return self.core.watched_names

    def watch(self, fabric: Any, model: nn.Module, optimizer: Any) -> None:
        """Start watching ``model``, whose parameters ``optimizer`` steps (both as ``fabric.setup`` returned)."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        inner = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper delegates step to it
        if not hasattr(inner, "register_step_pre_hook"):
            raise ConfigurationError(
                f"{type(self).__name__}.watch(optimizer=...): got {type(optimizer).__name__}, not a torch optimizer; "
                "pass the optimizer returned by `fabric.setup(model, optimizer)`."
            )
        self.unwatch(fabric)
        core = self.core
        module = unwrap(model)
        watched = core.select(module)
        if fabric.global_rank != 0:
            return
        if not core.start(run_of(logger, 0), watched):
            return
        self._steps = 0
        core.arm_graph(module)  # with log_graph: recorded during the first forward
        self._handle = inner.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.core.finish_graph()
        self.core.log_histograms(self._steps)
        self._steps += 1

    def unwatch(self, fabric: Any = None) -> None:
        """Remove the optimizer hook and any graph hook; drop the references to the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.core.release()

    def training_done(self, fabric: Any = None) -> None:
        """Same as :meth:`unwatch`."""
        self.unwatch(fabric)
