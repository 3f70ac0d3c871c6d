"""Gradient and parameter histograms in a Fabric loop: :class:`FabricWatchModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from lw_callbacks._errors import ConfigurationError
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.histograms import WatchBase
from lw_callbacks.fabric._common import unwrap

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from lw_callbacks.fabric._common import Fabric


class FabricWatchModel(WatchBase):
    r"""Gradient and parameter histograms of a model trained in a Fabric loop, and a clean unwatch.

    :meth:`watch` puts one hook on the optimizer: right before every ``log_freq``-th step, global
    rank 0 logs what :class:`~lw_callbacks.WatchModel` logs, at ``trainer/global_step`` = the
    optimizer steps taken since :meth:`watch`. :meth:`unwatch` (or ``training_done``) removes it.

    Args:
        log: ``"gradients"``, ``"parameters"`` or ``"all"``.
        log_freq: optimizer steps between two logs.
        log_graph: log the model graph from the first forward.
        include: parameter-name patterns to watch; ``None``: every trainable parameter.
        exclude: parameter-name patterns not to watch.
        bins: bins per histogram, 1 to 512.

    Raises:
        ConfigurationError:
            At construction, for the arguments ``WatchModel`` refuses.
        ConfigurationError:
            From :meth:`watch`, if ``optimizer`` takes no step hooks or the Fabric has no W&B logger.

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
    """

    _handle: RemovableHandle | None = None  # the optimizer's step hook, while watching

    def watch(self, fabric: Fabric, model: nn.Module, optimizer: Optimizer) -> None:
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
        core.optimizer_steps = {0: 0}
        core.arm_graph(module)  # with log_graph: recorded during the first forward
        self._handle = inner.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.core.finish_graph()
        step = self.core.optimizer_steps.get(0, 0)  # optimizer steps since watch
        self.core.log_histograms(step)
        self.core.optimizer_steps[0] = step + 1

    def unwatch(self, fabric: Fabric | None = None) -> None:
        """Remove the optimizer hook and any graph hook; drop the references to the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.core.release()

    def training_done(self, fabric: Fabric | None = None) -> None:
        """Same as :meth:`unwatch`."""
        self.unwatch(fabric)
