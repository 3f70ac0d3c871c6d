"""MetricSummaries: W&B run-summary aggregates (min / max / mean / first / last) for chosen metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lw_callbacks import _compat, _state
from lw_callbacks._errors import ConfigurationError, Option
from lw_callbacks._wandb import finish_after_interrupted_cell, is_disabled, lightning_step, require_wandb_logger, run_of
from lw_callbacks.core.summaries import SUMMARY_KINDS, SummaryCore, SummaryOptions, SummaryOptionsMixin, SummaryValue

__all__ = ["SUMMARY_KINDS", "MetricSummaries"]


class MetricSummaries(SummaryOptionsMixin, Callback):
    r"""Choose the aggregates W&B keeps in the run summary for chosen metrics, and record their best steps.

    Each entry is defined on global rank 0 before its first value, keeping WandbLogger's
    ``trainer/global_step`` x-axis; at the end of fit, ``<metric>.best_step`` and ``.best_epoch`` (and
    ``.best_checkpoint_step`` per monitored ``ModelCheckpoint``) are written for each ``min`` / ``max``
    entry. One ``MetricSummaries`` per Trainer.

    Args:
        summaries: metric name, or suffix glob such as ``"val/*"``, to one or several of ``"min"``,
            ``"max"``, ``"mean"``, ``"first"``, ``"last"`` (a list or ``"min,max"``), or ``"none"``.
            ``None``: only the entries derived from the Trainer's callbacks.
        from_callbacks: derive ``min`` / ``max`` entries from the ``monitor`` and ``mode`` of every
            ``ModelCheckpoint`` and ``EarlyStopping``; an explicit entry wins.
        hidden: hide from W&B's automatic charts every entry (``True``) or the names and globs listed.
        dataloader_suffixes: an entry ``"val_acc"`` also applies to ``"val_acc/dataloader_idx_<n>"``.
        record_best_step: write the best steps and epochs at the end of fit.
        warn_missing: at the end of fit, warn once naming every entry that matched no logged metric.

    Raises:
        ConfigurationError:
            If ``summaries`` is empty or not a mapping, or a key is not a metric name or suffix glob.
        ConfigurationError:
            If a summary is unknown, or ``"none"`` is combined with another.
        ConfigurationError:
            If ``hidden`` is not a bool or a list of names, or a flag is not a bool.
        ConfigurationError:
            At ``setup``, if the Trainer has no ``WandbLogger`` or a second ``MetricSummaries``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import MetricSummaries
        >>> summaries = MetricSummaries({"val_loss": "min", "train_*": ["mean", "last"]})
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> trainer = Trainer(logger=WandbLogger(project="digits"), max_epochs=2, limit_train_batches=2,
        ...                   callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"), summaries],
        ...                   limit_val_batches=1, log_every_n_steps=1, enable_progress_bar=False,
        ...                   enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        >>> summary = trainer.logger.experiment.summary  # val_acc {"max": ...}, val_loss {"min": ...}
        >>> sorted(key for key in summary.keys() if ".best_" in key)
        ['val_acc.best_checkpoint_step', 'val_acc.best_epoch', 'val_acc.best_step', 'val_loss.best_epoch',
         'val_loss.best_step']
    """

    def __init__(
        self,
        summaries: Mapping[str, SummaryValue] | None = None,
        from_callbacks: bool = True,
        hidden: bool | Sequence[str] = False,
        dataloader_suffixes: bool = False,
        record_best_step: bool = True,
        warn_missing: bool = True,
    ) -> None:
        super().__init__()
        self._options = SummaryOptions.check(
            summaries, from_callbacks, hidden, dataloader_suffixes, record_best_step, warn_missing, type(self).__name__
        )
        self._core = SummaryCore(self._options)
        # (step, epoch) of a training epoch end whose metrics Lightning logs after this callback's hook
        self._epoch_end: tuple[int, int] | None = None
        # Lightning reads state_key on every hook call; it names no option, so it is built here, once.
        self._state_key = self._generate_state_key()
        # ModelCheckpoints with a monitor: (callback, runs before this one), their best path last seen,
        # and the step of the hook they last had a chance to save in
        self._monitored: list[tuple[Any, bool]] = []
        self._best_paths: dict[int, str] = {}
        self._pending_step: int | None = None
        self._saves_in_batches = False  # a monitored ModelCheckpoint may save after a training batch
        self._connector: Any = None

    from_callbacks = Option[bool]("Whether entries are derived from ModelCheckpoint / EarlyStopping.", via="options")
    dataloader_suffixes = Option[bool](
        "Whether an entry also applies to its ``<name>/dataloader_idx_N`` keys.", via="options"
    )

    @property
    @override
    def state_key(self) -> str:
        # One instance per Trainer (checked at setup); the options may change before a resume and the
        # saved best steps still apply, so no option is part of the key: the class's name, built once.
        return self._state_key

    # ------------------------------------------------------------------ observation

    def _logged(self, trainer: pl.Trainer) -> Mapping[str, Any]:
        # Read on every rank: computing an epoch-level value may sync across ranks (sync_dist=True),
        # and a collective must be entered by every rank or by none.
        return trainer.logged_metrics

    def _scan_and_observe(self, trainer: pl.Trainer, logs: bool, expand: bool = True) -> None:
        if is_disabled():
            return
        metrics = self._logged(trainer)
        if expand and self._core.needs_scan:
            self._core.expand(metrics)
        self._core.observe(metrics, logs, lightning_step(trainer), trainer.current_epoch)

    def _observe_epoch_end(self, trainer: pl.Trainer) -> None:
        """Observe what Lightning logged at the last training epoch end, at that epoch's step."""
        pending, self._epoch_end = self._epoch_end, None
        if pending is None or is_disabled():
            return
        step, epoch = pending
        metrics = self._logged(trainer)
        if self._core.needs_scan:
            self._core.expand(metrics)
        self._core.observe(metrics, True, step, epoch)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [cb for cb in trainer.callbacks if isinstance(cb, MetricSummaries) and cb is not self]  # type: ignore[attr-defined]
        if others:
            raise ConfigurationError(
                "MetricSummaries: the Trainer has more than one MetricSummaries callback; W&B keeps one definition "
                "per metric, so put every entry into one `MetricSummaries({...})`."
            )
        self._core.resolve(_derived(trainer.callbacks) if self.from_callbacks else None)  # type: ignore[attr-defined]
        logger = require_wandb_logger(trainer, type(self).__name__)
        self._core.use_logger(logger)
        self._core.apply(run_of(logger, trainer.global_rank))
        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        mine = next((i for i, cb in enumerate(callbacks) if cb is self), len(callbacks))
        self._monitored = [
            (mc, i < mine) for i, mc in enumerate(callbacks) if _compat.is_model_checkpoint(mc) and mc.monitor
        ]
        self._saves_in_batches = any(
            getattr(mc, "_every_n_train_steps", 0) or getattr(mc, "_train_time_interval", None)
            for mc, _ in self._monitored
        )
        # Lightning's logger connector (one per Trainer), when it stores the logged values in a dict
        connector = getattr(trainer, "_logger_connector", None)
        self._connector = connector if isinstance(getattr(connector, "_logged_metrics", None), dict) else None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint was restored: keep its best values only if this is the same W&B run.
        self._core.start()
        self._epoch_end = None
        self._best_paths = {id(mc): mc.best_model_path for mc, _ in self._monitored}
        self._pending_step = None

    def _track_checkpoints(self, trainer: pl.Trainer, now: int | None) -> None:
        """Note the step at which each monitored ModelCheckpoint's best checkpoint was saved.

        Lightning runs a ``ModelCheckpoint`` after this callback in each hook (it runs checkpoint
        callbacks last), so a new best path seen here was saved in the hook this callback last ran in
        before (``now`` of that call); one that runs before this callback saved it in this hook.
        """
        if not self._core.active:
            return
        for mc, before in self._monitored:
            path = mc.best_model_path
            if path and path != self._best_paths.get(id(mc)):
                step = now if before else self._pending_step
                if step is not None:
                    self._core.note_checkpoint(mc.monitor, step)
            self._best_paths[id(mc)] = path
        self._pending_step = now

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning sends step metrics to the loggers on logging batches only, and reading them
        # (``trainer.logged_metrics``) computes every logged value: read them on those batches alone.
        if self._saves_in_batches:
            self._track_checkpoints(trainer, lightning_step(trainer))
        if _logs_this_batch(trainer):
            self._scan_and_observe(trainer, logs=True)
        else:
            self._hold_stored(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._saves_in_batches:
            self._track_checkpoints(trainer, None)

    def _hold_stored(self, trainer: pl.Trainer) -> None:
        """Note the values Lightning holds as logged, without computing any (a batch it does not log):
        a value it stored again after a validation is then not taken for a newly logged one."""
        connector = self._connector
        if connector is not None:  # the dict itself (Lightning replaces it when it resets its metrics)
            self._core.hold(connector._logged_metrics)
        elif self._core.active:  # another Lightning: read them as logged metrics, noting nothing as logged
            self._scan_and_observe(trainer, logs=False)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._after_epoch_end(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this hook before the LightningModule's own `on_train_epoch_end` and logs the
        # epoch's metrics after both: they are observed at the next epoch start or at train end.
        self._epoch_end = (lightning_step(trainer), trainer.current_epoch)
        if self._monitored:
            self._track_checkpoints(trainer, self._epoch_end[0])

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._after_epoch_end(trainer)

    def _after_epoch_end(self, trainer: pl.Trainer) -> None:
        """At the next epoch start or at train end: what Lightning logged and saved after the last epoch end."""
        if self._monitored:
            self._track_checkpoints(trainer, None)
        self._observe_epoch_end(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._monitored and trainer.state.fn == "fit":
            self._track_checkpoints(trainer, None)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._core.needs_scan and not is_disabled():  # define before Lightning logs the epoch values
            self._core.expand(self._logged(trainer))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        if self._monitored:
            self._track_checkpoints(trainer, lightning_step(trainer))
        if trainer.sanity_checking:
            return
        self._scan_and_observe(trainer, logs=True, expand=False)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._core.needs_scan and not is_disabled():
            self._core.expand(self._logged(trainer))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._core.finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "fit":
            self._core.finish(warn=False)
        finish_after_interrupted_cell(trainer, exception)

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return _state.save(self._core.state_dict())

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._core.load_state_dict(_state.load(type(self).__name__, state_dict))


# ---------------------------------------------------------------------- helpers


def _derived(callbacks: Sequence[Any]) -> dict[str, tuple[set[str], str]]:
    """Monitored key -> (its ``min`` / ``max`` modes, the first callback's name), from every
    ``ModelCheckpoint`` and ``EarlyStopping`` with a ``monitor``."""
    derived: dict[str, tuple[set[str], str]] = {}
    for callback in callbacks:
        if (_compat.is_model_checkpoint(callback) or _compat.is_early_stopping(callback)) and callback.monitor:
            mode = getattr(callback, "mode", None)
            if mode in ("min", "max"):
                derived.setdefault(callback.monitor, (set(), type(callback).__name__))[0].add(mode)
    return derived


def _logs_this_batch(trainer: pl.Trainer) -> bool:
    """Whether Lightning sends this training batch's step metrics to the loggers, as its logger
    connector's ``update_train_step_metrics`` decides, tested on integers first: it runs on every batch
    (the connector's own ``should_update_logs`` walks the Trainer's state properties, about 3 µs a call
    inside a fit)."""
    try:
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # 0: no step logs (but under fast_dev_run)
        due = bool(every) and ((trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % every == 0
                               or trainer.should_stop)
        if not (due or trainer.fast_dev_run):  # type: ignore[attr-defined]
            return False
        fit_loop = trainer.fit_loop
    except AttributeError:  # another Lightning: read the logged values on every batch
        return True
    # a batch that only accumulates gradients logs nothing (automatic optimization)
    accumulates = getattr(fit_loop, "_should_accumulate", None)
    return not (callable(accumulates) and accumulates() and trainer.lightning_module.automatic_optimization)
