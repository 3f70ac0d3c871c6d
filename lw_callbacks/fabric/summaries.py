"""W&B summaries of metrics logged with ``fabric.log_dict``: :class:`FabricMetricSummaries`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lw_callbacks import _state
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.summaries import SummaryCore, SummaryOptions, SummaryOptionsMixin, SummaryValue

if TYPE_CHECKING:
    from lw_callbacks.fabric._common import Fabric


class FabricMetricSummaries(SummaryOptionsMixin):
    r"""Define W&B summaries (min / max / mean / first / last) of metrics logged with ``fabric.log_dict``.

    :meth:`define_summaries` defines each entry as :class:`~lw_callbacks.MetricSummaries` does;
    optionally, :meth:`observe_metrics` beside each ``fabric.log_dict`` records the best steps that
    :meth:`training_done` writes as ``<key>.best_step`` / ``<key>.best_epoch``.

    Args:
        summaries: metric name or suffix glob to ``"min"``, ``"max"``, ``"mean"``, ``"first"``,
            ``"last"``, ``"none"`` or a list of them.
        hidden: hide from W&B's automatic charts every entry (``True``) or the names and globs listed.
        record_best_step: record best steps in :meth:`observe_metrics`.
        warn_missing: at :meth:`training_done`, warn about entries :meth:`observe_metrics` never saw.

    Raises:
        ConfigurationError:
            At construction, for the ``summaries`` or ``hidden`` that ``MetricSummaries`` refuses.
        ConfigurationError:
            From a hook, if the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricMetricSummaries
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[FabricMetricSummaries({"val_acc": "max"})])
        >>> fabric.launch()
        >>> fabric.call("define_summaries", fabric)
        >>> for step, val_acc in enumerate([0.5, 0.8, 0.7]):
        ...     fabric.log_dict({"val_acc": val_acc}, step=step)
        ...     fabric.call("observe_metrics", fabric, {"val_acc": val_acc}, step=step)
        >>> fabric.call("training_done", fabric)
        >>> fabric.logger.experiment.summary["val_acc.best_step"]
        1
    """

    def __init__(
        self,
        summaries: Mapping[str, SummaryValue],
        hidden: bool | Sequence[str] = False,
        record_best_step: bool = True,
        warn_missing: bool = True,
    ) -> None:
        self._options = SummaryOptions.check(
            summaries, False, hidden, False, record_best_step, warn_missing, type(self).__name__
        )
        self.core = SummaryCore(self._options)
        self._observed = False

    def define_summaries(self, fabric: Fabric) -> None:
        """Define every entry on the run (global rank 0; a no-op elsewhere). Call it once, before logging."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        self.core.resolve()
        self.core.use_logger(logger)
        self.core.apply(run_of(logger, fabric.global_rank))
        self.core.start(forget_held=False)

    def observe_metrics(
        self, fabric: Fabric, metrics: Mapping[str, Any], step: int, epoch: int | None = None
    ) -> None:
        """Note the values logged with ``fabric.log_dict(metrics, step=step)`` (optional)."""
        core = self.core
        if not core.active:
            return
        self._observed = True
        if core.needs_scan:
            core.expand(metrics)
        # every call is a new value, even when it is the same object
        core.observe(metrics, True, int(step), epoch, fresh=True)

    def training_done(self, fabric: Fabric) -> None:
        """Write the best steps recorded by :meth:`observe_metrics` to the run summary."""
        self.core.finish(warn=self._observed)

    def state_dict(self) -> dict[str, Any]:
        """Best values seen so far, for ``fabric.save(path, {..., "summaries": callback})``-style resumes."""
        return _state.save(self.core.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.core.load_state_dict(_state.load(type(self).__name__, state_dict))
