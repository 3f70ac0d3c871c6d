"""MetricSummaries: W&B run-summary aggregates (min / max / mean / first / last) for chosen metrics."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lw_callbacks._errors import ConfigurationError
from lw_callbacks._wandb import STEP_KEY, define_metric, get_run, is_disabled, lightning_step, update_summary

__all__ = ["SUMMARY_KINDS", "MetricSummaries"]

SUMMARY_KINDS = ("min", "max", "mean", "first", "last", "none")
"""Aggregates accepted in a ``MetricSummaries`` mapping (wandb's ``define_metric(summary=...)``)."""

_DATALOADER_SUFFIX = re.compile(r"^(?P<base>.+)/dataloader_idx_\d+$")
_SummaryValue = str | Sequence[str]


@dataclass(frozen=True)
class _Spec:
    """One resolved definition: the aggregates of a key and whether its charts are hidden."""

    summary: tuple[str, ...]  # empty: leave W&B's default (last value) alone
    hidden: bool = False
    source: str = "summaries"  # "summaries", "hidden", or the derived-from callback's name

    def as_arg(self) -> str | None:
        return ",".join(self.summary) if self.summary else None


class MetricSummaries(Callback):
    r"""Choose what the W&B runs table shows for a metric, and record when its best value happened.

    Unless told otherwise W&B keeps the *last* value of every metric in the run summary. This
    callback defines, on global rank 0 and before the first value is logged, which aggregates W&B
    keeps instead (``{"val_acc": "max"}`` makes the summary ``{"max": 0.97}``). Every definition
    keeps WandbLogger's x-axis (``step_metric="trainer/global_step"``, ``step_sync=True``). The
    LightningModule needs no change: no ``wandb.define_metric``, no rank checks.

    By default it also derives a summary from each ``ModelCheckpoint`` and ``EarlyStopping`` of the
    Trainer that has a ``monitor`` (``mode="max"`` gives ``max``, ``mode="min"`` gives ``min``), so the
    checkpoint metric's best value shows in the runs table with no configuration. An explicit entry
    (a name, or a glob matching the monitored key) wins over a derived one.

    At the end of fit it writes, for every metric summarised with ``min`` or ``max``, the
    ``trainer/global_step`` and epoch at which that best value was logged into the run summary:
    ``<metric>.best_step`` and ``<metric>.best_epoch`` (a metric summarised with both ``min`` and
    ``max`` gets ``<metric>.min_step``, ``.min_epoch``, ``.max_step``, ``.max_epoch``). W&B cannot
    show this by itself. The values are the ones this callback observes on rank 0 where Lightning
    hands metrics to the loggers: after each training batch that Lightning logs, after each
    validation run of fit, and after each training epoch end (including metrics the
    LightningModule logs in its own ``on_train_epoch_end``, which Lightning runs after callbacks), at
    the step Lightning passes to ``WandbLogger.log_metrics`` (the history's ``trainer/global_step``)
    and the epoch they belong to. Ties keep the first step. This state is saved in checkpoints, so a
    resumed run (same W&B run id) keeps its best step. One ``MetricSummaries`` per Trainer: put every
    entry in one mapping.

    Args:
        summaries: metric name, or suffix glob such as ``"val/*"``, to the aggregates W&B keeps for
            it: one or several of ``"min"``, ``"max"``, ``"mean"``, ``"first"``, ``"last"``, as a
            list or a comma-separated string (``"min,max"``), or ``"none"`` (the key is left out of
            the run summary). ``None`` (default) uses only the summaries derived from the Trainer's
            callbacks. W&B's own globs are unreliable beside WandbLogger's ``"*"`` rule (which glob
            applies to a key is chosen at random), so this callback expands a glob into a named
            definition for each matching key as soon as Lightning has computed it, before it is
            logged; the glob itself is also defined, for keys logged outside Lightning.
        from_callbacks: derive ``min`` / ``max`` summaries from the ``monitor`` and ``mode`` of every
            ``ModelCheckpoint`` and ``EarlyStopping`` of the Trainer.
        hidden: hide metrics from W&B's automatic charts: ``True`` hides every metric of
            ``summaries``; a list of names or suffix globs hides those (with their summary, if they
            are in ``summaries``, else with W&B's default summary).
        dataloader_suffixes: an entry ``"val_acc"`` also applies to Lightning's per-dataloader keys
            ``"val_acc/dataloader_idx_0"``, ``"val_acc/dataloader_idx_1"``, ... (several validation
            dataloaders).
        record_best_step: write ``<metric>.best_step`` and ``<metric>.best_epoch`` at the end of fit.
        warn_missing: at the end of fit, warn once naming every entry of ``summaries`` (and every
            derived one) that matched no metric logged during that fit.

    Raises:
        ConfigurationError: at construction, for an empty mapping, a key that is not a non-empty
            string, a glob that is not a suffix glob (``"*"`` only at the end, after a prefix), the
            x-axis key ``trainer/global_step``, an unknown aggregate, ``"none"`` together with another
            one, or a flag that is not a bool. The message names the key, the accepted values and the
            fix. At ``setup``, when the Trainer has no ``WandbLogger`` (under ``fast_dev_run`` nothing
            is logged and nothing is raised) or holds a second ``MetricSummaries``.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import WandbLogger
        from lw_callbacks import MetricSummaries

        trainer = Trainer(
            logger=WandbLogger(project="mnist"),
            callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"),  # -> val_acc: max
                       MetricSummaries({"val_loss": "min", "train/*": ["mean", "last"]})],
        )
        trainer.fit(model, datamodule=dm)
        # run summary: val_acc {"max": ...}, val_acc.best_step, val_acc.best_epoch,
        #              val_loss {"min": ...}, val_loss.best_step, train/... {"mean": ..., "last": ...}
    """

    def __init__(
        self,
        summaries: Mapping[str, _SummaryValue] | None = None,
        from_callbacks: bool = True,
        hidden: bool | Sequence[str] = False,
        dataloader_suffixes: bool = False,
        record_best_step: bool = True,
        warn_missing: bool = True,
    ) -> None:
        super().__init__()
        for flag, value in (
            ("from_callbacks", from_callbacks),
            ("dataloader_suffixes", dataloader_suffixes),
            ("record_best_step", record_best_step),
            ("warn_missing", warn_missing),
        ):
            if not isinstance(value, bool):
                raise ConfigurationError(f"MetricSummaries({flag}={value!r}): `{flag}` must be True or False.")
        if summaries is None and not from_callbacks:
            raise ConfigurationError(
                "MetricSummaries: `summaries=None` with `from_callbacks=False` has nothing to define. Pass a "
                'mapping such as `summaries={"val_acc": "max"}`, or keep `from_callbacks=True` to derive '
                "summaries from the Trainer's ModelCheckpoint / EarlyStopping."
            )
        self.summaries: dict[str, tuple[str, ...]] = _parse_summaries(summaries)
        self.from_callbacks = bool(from_callbacks)
        self.dataloader_suffixes = bool(dataloader_suffixes)
        self.record_best_step = bool(record_best_step)
        self.warn_missing = bool(warn_missing)
        self.hidden: bool | tuple[str, ...]
        if isinstance(hidden, bool):
            self.hidden = hidden
        elif isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise ConfigurationError(
                f"MetricSummaries: `hidden` must be True / False or a list of metric names or suffix globs, "
                f"got {hidden!r}. Write `hidden=[{hidden!r}]` to hide one metric."
                if isinstance(hidden, str)
                else f"MetricSummaries: `hidden` must be True / False or a list of metric names or suffix globs, "
                f"got {type(hidden).__name__}."
            )
        else:
            self.hidden = tuple(_check_key(key, "hidden") for key in hidden)

        # Resolved at setup: exact names and globs (prefix -> spec), explicit and derived.
        self._names: dict[str, _Spec] = {}
        self._globs: dict[str, _Spec] = {}
        self._derived: dict[str, _Spec] = {}
        self._needs_scan = False
        # Definitions sent to the current run object (name or glob -> spec).
        self._defined: dict[str, _Spec] = {}
        self._current_run: Any = None
        self._active = False
        # Observation on rank 0: the tensor last seen per logged key, keys seen logged, best values.
        self._held: dict[str, Any] = {}
        self._seen: set[str] = set()
        self._best: dict[str, dict[str, list[Any]]] = {}  # key -> direction -> [value, step, epoch or None]
        self._run_id: str | None = None
        # (step, epoch) of a training epoch end whose metrics Lightning logs after this callback's hook
        self._epoch_end: tuple[int, int] | None = None

    @property
    @override
    def state_key(self) -> str:
        # One instance per Trainer (checked at setup); the options may change before a resume and the
        # saved best steps still apply, so no option is part of the key.
        return self._generate_state_key()

    # ------------------------------------------------------------------ resolution

    def _resolve_specs(self, callbacks: Sequence[Any]) -> None:
        """Exact names and globs from ``summaries`` and ``hidden``, plus those derived from ``callbacks``."""
        names: dict[str, _Spec] = {}
        globs: dict[str, _Spec] = {}
        hide_all = self.hidden is True
        for key, summary in self.summaries.items():
            spec = _Spec(summary=summary, hidden=hide_all)
            (globs if key.endswith("*") else names)[key.rstrip("*") if key.endswith("*") else key] = spec
        if isinstance(self.hidden, tuple):
            for key in self.hidden:
                table, bare = (globs, key[:-1]) if key.endswith("*") else (names, key)
                old = table.get(bare)
                table[bare] = _Spec(summary=old.summary if old else (), hidden=True,
                                    source=old.source if old else "hidden")
        derived: dict[str, set[str]] = {}
        sources: dict[str, str] = {}
        if self.from_callbacks:
            for callback in callbacks:
                if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and callback.monitor:
                    mode = getattr(callback, "mode", None)
                    if mode in ("min", "max"):
                        derived.setdefault(callback.monitor, set()).add(mode)
                        sources.setdefault(callback.monitor, type(callback).__name__)
        self._derived = {}
        for key, modes in derived.items():
            if self._explicit_spec(key, names, globs) is not None:
                continue  # an explicit entry wins
            spec = _Spec(summary=tuple(m for m in ("min", "max") if m in modes), hidden=hide_all,
                         source=sources[key])
            self._derived[key] = spec
            names[key] = spec
        self._names, self._globs = names, globs
        self._needs_scan = bool(globs) or self.dataloader_suffixes

    def _explicit_spec(self, key: str, names: Mapping[str, _Spec], globs: Mapping[str, _Spec]) -> _Spec | None:
        if key in names:
            return names[key]
        best = max((prefix for prefix in globs if key.startswith(prefix)), key=len, default=None)
        return globs[best] if best is not None else None

    def _spec_for(self, key: str) -> tuple[str, _Spec] | None:
        """The entry (name or glob) that applies to a logged key, and its spec: name beats glob,
        the longest glob prefix beats a shorter one, and with ``dataloader_suffixes`` the base name
        of ``<name>/dataloader_idx_N`` counts as a name."""
        if key in self._names:
            return key, self._names[key]
        if self.dataloader_suffixes:
            match = _DATALOADER_SUFFIX.match(key)
            if match and match["base"] in self._names:
                return match["base"], self._names[match["base"]]
        prefix = max((p for p in self._globs if key.startswith(p)), key=len, default=None)
        if prefix is not None:
            return prefix + "*", self._globs[prefix]
        return None

    # ------------------------------------------------------------------ definitions

    def _define(self, run: Any, name: str, spec: _Spec) -> None:
        if self._defined.get(name) == spec:
            return  # already defined on this run: no duplicate record
        try:
            # overwrite: a changed spec replaces the earlier one instead of merging with it
            define_metric(run, name, summary=spec.as_arg(), hidden=spec.hidden, overwrite=name in self._defined)
        except Exception as err:  # a logging failure must never end a training run
            rank_zero_warn(
                f"MetricSummaries: defining the W&B summary of {name!r} failed ({type(err).__name__}: {err}); "
                "training goes on without it."
            )
            return
        self._defined[name] = spec

    def _apply(self, trainer: pl.Trainer) -> None:
        self._apply_run(get_run(trainer, type(self).__name__))

    def _apply_run(self, run: Any) -> None:
        """Define every name and glob on ``run`` (``None`` off rank 0 or when disabled: nothing to do)."""
        self._active = run is not None
        if run is None:
            return
        if run is not self._current_run:
            self._defined = {}  # a new run object (new run, or a resumed one): define everything again
            self._current_run = run
        for name, spec in self._names.items():
            self._define(run, name, spec)
            if self.dataloader_suffixes and not _DATALOADER_SUFFIX.match(name):
                self._define(run, f"{name}/dataloader_idx_*", spec)
        for prefix, spec in self._globs.items():
            self._define(run, prefix + "*", spec)

    def _expand(self, keys: Any) -> None:
        """Define each newly seen key matched by a glob (or a dataloader suffix) by its own name."""
        run = self._current_run
        if run is None or not self._active:
            return
        for key in keys:
            if key in self._defined or key in self._names or key == STEP_KEY:
                continue
            found = self._spec_for(key)
            if found is not None:
                self._define(run, key, found[1])

    # ------------------------------------------------------------------ observation

    def _logged(self, trainer: pl.Trainer) -> Mapping[str, Any]:
        # Read on every rank: computing an epoch-level value may sync across ranks (sync_dist=True),
        # and a collective must be entered by every rank or by none.
        return trainer.logged_metrics

    def _observe(self, metrics: Mapping[str, Any], logs: bool, step: int, epoch: int | None) -> None:
        """Note which keys were logged and each min / max entry's best value, step and epoch."""
        if not self._active:
            return
        if logs and metrics and "epoch" in self._names:
            self._seen.add("epoch")  # Lightning adds `epoch` to every row it logs without an explicit step
        for key, value in metrics.items():
            if self._held.get(key) is value:
                continue  # the same tensor as last time: not newly logged
            self._held[key] = value
            if not logs:
                continue
            found = self._spec_for(key)
            if found is None:
                continue
            self._seen.add(found[0])
            directions = [d for d in ("min", "max") if d in found[1].summary]
            if not directions or not self.record_best_step:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if math.isnan(number):
                continue
            best = self._best.setdefault(key, {})
            for direction in directions:
                old = best.get(direction)
                if old is None or (number > old[0] if direction == "max" else number < old[0]):
                    best[direction] = [number, float(step), float(epoch) if epoch is not None else None]

    def _scan_and_observe(self, trainer: pl.Trainer, logs: bool, expand: bool = True) -> None:
        if is_disabled():
            return
        metrics = self._logged(trainer)
        if expand and self._needs_scan:
            self._expand(metrics)
        self._observe(metrics, logs, lightning_step(trainer), trainer.current_epoch)

    def _observe_epoch_end(self, trainer: pl.Trainer) -> None:
        """Observe what Lightning logged at the last training epoch end, at that epoch's step."""
        pending, self._epoch_end = self._epoch_end, None
        if pending is None or is_disabled():
            return
        step, epoch = pending
        metrics = self._logged(trainer)
        if self._needs_scan:
            self._expand(metrics)
        self._observe(metrics, True, step, epoch)

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [cb for cb in trainer.callbacks if isinstance(cb, MetricSummaries) and cb is not self]  # type: ignore[attr-defined]
        if others:
            raise ConfigurationError(
                "MetricSummaries: the Trainer has more than one MetricSummaries callback; W&B keeps one definition "
                "per metric, so put every entry into one `MetricSummaries({...})`."
            )
        self._resolve_specs(trainer.callbacks)  # type: ignore[attr-defined]
        self._apply(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint was restored: keep its best values only if this is the same W&B run.
        run = self._current_run if self._active else None
        run_id = str(run.id) if run is not None else None
        if run_id != self._run_id:
            self._best, self._seen = {}, set()
        self._run_id = run_id
        self._held = {}
        self._epoch_end = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning sends step metrics to the loggers on logging batches only, and reading them
        # (``trainer.logged_metrics``) computes every logged value: read them on those batches alone.
        if _logs_this_batch(trainer):
            self._scan_and_observe(trainer, logs=True)
        else:
            self._hold_stored(trainer)

    def _hold_stored(self, trainer: pl.Trainer) -> None:
        """Note the values Lightning holds as logged, without computing any (a batch it does not log):
        a value it stored again after a validation is then not taken for a newly logged one."""
        if not self._active:
            return
        stored = getattr(getattr(trainer, "_logger_connector", None), "_logged_metrics", None)
        if isinstance(stored, dict):
            self._held.update(stored)
        else:  # another Lightning: read them as logged metrics, noting nothing as logged
            self._scan_and_observe(trainer, logs=False)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._observe_epoch_end(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this hook before the LightningModule's own `on_train_epoch_end` and logs the
        # epoch's metrics after both: they are observed at the next epoch start or at train end.
        self._epoch_end = (lightning_step(trainer), trainer.current_epoch)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._observe_epoch_end(trainer)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._needs_scan and not is_disabled():  # define before Lightning logs the epoch values
            self._expand(self._logged(trainer))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._scan_and_observe(trainer, logs=True, expand=False)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._needs_scan and not is_disabled():
            self._expand(self._logged(trainer))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_fit()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "fit":
            self._finish_fit(warn=False)

    def _finish_fit(self, warn: bool = True) -> None:
        """Write each min / max entry's best step and epoch to the summary; warn about entries never logged."""
        run = self._current_run
        if not self._active or run is None:
            return
        if self.record_best_step and self._best:
            payload: dict[str, int] = {}
            for key, best in self._best.items():
                single = len(best) == 1
                for direction, (_, step, epoch) in best.items():
                    label = "best" if single else direction
                    payload[f"{key}.{label}_step"] = int(step)
                    if epoch is not None:  # a Fabric loop may give no epoch
                        payload[f"{key}.{label}_epoch"] = int(epoch)
            update_summary(run, payload, "MetricSummaries")
        if warn and self.warn_missing:
            elsewhere = _run_keys(run)  # logged around Lightning, e.g. by LearningRateMonitor
            missing = [k for k in self._entry_names() if k not in self._seen and not _matches(k, elsewhere)]
            if missing:
                rank_zero_warn(
                    f"MetricSummaries: {missing} matched no metric logged during this fit, so W&B has no summary "
                    f"for them. Check the names against the keys logged with `self.log(...)` "
                    f"(logged here: {sorted(self._logged_keys())})."
                )

    def _entry_names(self) -> list[str]:
        names = [k for k, spec in self._names.items() if spec.source != "hidden"]
        return names + [p + "*" for p, spec in self._globs.items() if spec.source != "hidden"]

    def _logged_keys(self) -> set[str]:
        return {k for k in self._held if k != STEP_KEY}

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "best": {k: {d: list(v) for d, v in b.items()} for k, b in self._best.items()},
            "seen": sorted(self._seen),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._run_id = state_dict.get("run_id")
        self._best = {k: {d: list(v) for d, v in b.items()} for k, b in state_dict.get("best", {}).items()}
        self._seen = set(state_dict.get("seen", ()))

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks: leave the live run and tensors behind.
        state = self.__dict__.copy()
        state.update(_current_run=None, _active=False, _defined={}, _held={})
        return state


# ---------------------------------------------------------------------- helpers


def _check_key(key: Any, argument: str) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"MetricSummaries: every key of `{argument}` must be a non-empty metric name or suffix glob such as "
            f"'val_acc' or 'val/*', got {key!r} ({type(key).__name__}). Write the metric's name as a string."
        )
    if key == STEP_KEY:
        raise ConfigurationError(
            f"MetricSummaries: `{argument}` key {key!r} is the x-axis every metric is plotted against; it cannot "
            "have a summary. Remove it."
        )
    if key.startswith("_"):
        raise ConfigurationError(
            f"MetricSummaries: `{argument}` key {key!r} starts with '_', which W&B keeps for its own keys "
            "(`_step`, `_runtime`, ...). Use the name your LightningModule logs."
        )
    if "*" in key[:-1] or key == "*":
        raise ConfigurationError(
            f"MetricSummaries: `{argument}` key {key!r} is not a suffix glob. W&B accepts '*' only at the end, after "
            "a prefix ('val/*', 'train_*'); a bare '*' would replace WandbLogger's own rule for every key. List the "
            "metrics, or use a prefix."
        )
    return key


def _parse_summary(key: str, value: Any) -> tuple[str, ...]:
    accepted = ", ".join(repr(k) for k in SUMMARY_KINDS)
    if isinstance(value, str):
        items = [part.strip().lower() for part in value.split(",")]
    elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        items = [part.strip().lower() for part in value]
    else:
        raise ConfigurationError(
            f"MetricSummaries: the summary of {key!r} must be one of {accepted}, a list of them or a comma-separated "
            f"string such as 'min,max'; got {value!r}."
        )
    if not items or any(not part for part in items):
        raise ConfigurationError(
            f"MetricSummaries: the summary of {key!r} is empty ({value!r}). Give one or several of {accepted}."
        )
    for part in items:
        if part not in SUMMARY_KINDS:
            hint = ""
            if part == "best":
                hint = " ('best' is deprecated in W&B: use 'max' or 'min')"
            elif part == "copy":
                hint = " ('copy' is deprecated in W&B: use 'last')"
            raise ConfigurationError(
                f"MetricSummaries: unknown summary {part!r} for {key!r}{hint}. Accepted: {accepted}."
            )
    if "none" in items and len(set(items)) > 1:
        raise ConfigurationError(
            f"MetricSummaries: the summary of {key!r} combines 'none' with {sorted(set(items) - {'none'})}; W&B "
            "then keeps no summary at all. Use 'none' alone (leave the key out of the run summary) or drop it."
        )
    return tuple(kind for kind in SUMMARY_KINDS if kind in items)  # canonical order, no duplicates


def _parse_summaries(summaries: Any) -> dict[str, tuple[str, ...]]:
    if summaries is None:
        return {}
    if not isinstance(summaries, Mapping):
        raise ConfigurationError(
            "MetricSummaries: `summaries` must be a mapping of metric name or suffix glob to summary, such as "
            f'{{"val_acc": "max", "train/*": ["mean", "last"]}}; got {type(summaries).__name__}.'
        )
    if not summaries:
        raise ConfigurationError(
            "MetricSummaries: `summaries` is an empty mapping, so there is nothing to define. Give at least one "
            'entry such as {"val_acc": "max"}, or pass `summaries=None` to use only the summaries derived from the '
            "Trainer's ModelCheckpoint / EarlyStopping."
        )
    return {_check_key(key, "summaries"): _parse_summary(key, value) for key, value in summaries.items()}


def _logs_this_batch(trainer: pl.Trainer) -> bool:
    """Whether Lightning sends this training batch's step metrics to the loggers."""
    connector = getattr(trainer, "_logger_connector", None)
    flag = getattr(connector, "should_update_logs", None)
    if isinstance(flag, bool):
        return flag or bool(getattr(trainer, "fast_dev_run", False))
    return True


def _run_keys(run: Any) -> set[str]:
    """Every key the run has a summary value for, whoever logged it; empty if the run cannot tell."""
    try:
        return {str(k) for k in run.summary.keys()}  # noqa: SIM118 - a wandb Summary, not a dict
    except Exception:
        return set()


def _matches(entry: str, keys: set[str]) -> bool:
    """Whether an entry (a name or a suffix glob) matches one of ``keys``."""
    if entry.endswith("*"):
        return any(k.startswith(entry[:-1]) for k in keys)
    return entry in keys or any(
        (m := _DATALOADER_SUFFIX.match(k)) is not None and m["base"] == entry for k in keys
    )
