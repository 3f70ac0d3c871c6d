"""Summary bookkeeping: which aggregates W&B keeps for which metric, and when each best value happened.

:class:`SummaryOptions` holds the checked options; a :class:`SummaryCore` resolves them into named and
glob definitions, defines them on a run, observes the values logged at a step (and epoch), and at
the end writes each min / max entry's best step and epoch into the run summary through the doorway.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lw_callbacks import _errors
from lw_callbacks._errors import ConfigurationError, Option, check_bool
from lw_callbacks._wandb import STEP_KEY, define_metric, update_summary

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

__all__ = [
    "DATALOADER_SUFFIX",
    "OWNER",
    "SUMMARY_KINDS",
    "Spec",
    "SummaryCore",
    "SummaryOptions",
    "SummaryOptionsMixin",
    "SummaryValue",
]

OWNER = "MetricSummaries"  # the name warnings and errors give, for the Trainer callback and the Fabric class

SUMMARY_KINDS = ("min", "max", "mean", "first", "last", "none")
"""Aggregates accepted in a ``MetricSummaries`` mapping (wandb's ``define_metric(summary=...)``)."""

DATALOADER_SUFFIX = re.compile(r"^(?P<base>.+)/dataloader_idx_\d+$")
# `self.log(name, on_step=True, on_epoch=True)`: the loggers get `name_step` and `name_epoch` (before a
# `/dataloader_idx_N` suffix); `callback_metrics` hold `name`, the epoch value.
FORKED = re.compile(r"^(?P<base>.+)_(?P<kind>step|epoch)(?P<suffix>/dataloader_idx_\d+)?$")


def forked(name: str, kind: str) -> str:
    """``name``'s key when logged with both ``on_step`` and ``on_epoch``: ``kind`` is ``"step"`` / ``"epoch"``."""
    match = DATALOADER_SUFFIX.match(name)
    if match:
        return f"{match['base']}_{kind}{name[len(match['base']):]}"
    return f"{name}_{kind}"
SummaryValue = str | Sequence[str]


@dataclass(frozen=True)
class Spec:
    """One resolved definition: the aggregates of a key and whether its charts are hidden."""

    summary: tuple[str, ...]  # empty: leave W&B's default (last value) alone
    hidden: bool = False
    source: str = "summaries"  # "summaries", "hidden", or the derived-from callback's name

    def as_arg(self) -> str | None:
        return ",".join(self.summary) if self.summary else None


@dataclass(frozen=True)
class SummaryOptions:
    """The options of one ``MetricSummaries`` or ``FabricMetricSummaries``, checked once by :meth:`check`."""

    summaries: dict[str, tuple[str, ...]]
    from_callbacks: bool = True
    hidden: bool | tuple[str, ...] = False
    dataloader_suffixes: bool = False
    record_best_step: bool = True
    warn_missing: bool = True
    owner: str = field(default=OWNER, compare=False)  # the class the user built, named in messages

    @classmethod
    def check(
        cls, summaries: Any, from_callbacks: Any, hidden: Any, dataloader_suffixes: Any, record_best_step: Any,
        warn_missing: Any, owner: str = OWNER,
    ) -> SummaryOptions:
        """The options of the constructor's arguments, ``summaries`` and ``hidden`` parsed.

        Raises:
            ConfigurationError: for any argument ``MetricSummaries`` does not accept, naming it and the fix.
        """
        flags = {"from_callbacks": from_callbacks, "dataloader_suffixes": dataloader_suffixes,
                 "record_best_step": record_best_step, "warn_missing": warn_missing}
        for flag, value in flags.items():
            check_bool(owner, flag, value)
        if summaries is None and not from_callbacks:
            raise ConfigurationError(
                f"{owner}(summaries=None): there is nothing to define. Pass a mapping such as "
                '`summaries={"val_acc": "max"}`'
                + ("" if owner.startswith("Fabric") else ", or keep `from_callbacks=True` to derive summaries from "
                   "the Trainer's ModelCheckpoint / EarlyStopping")
                + "."
            )
        parsed = _parse_summaries(summaries, owner)
        if not isinstance(hidden, bool):
            if isinstance(hidden, str) or not isinstance(hidden, Sequence):
                raise ConfigurationError(
                    f"{owner}(hidden={hidden!r}): `hidden` must be True / False or a list of metric names or "
                    f"suffix globs, got {type(hidden).__name__}."
                    + (f" Write `hidden=[{hidden!r}]` to hide one metric." if isinstance(hidden, str) else "")
                )
            hidden = tuple(_check_key(key, "hidden", owner) for key in hidden)
        return cls(parsed, from_callbacks, hidden, dataloader_suffixes, record_best_step, warn_missing, owner)


class SummaryOptionsMixin:
    """The options shared by ``MetricSummaries`` and ``FabricMetricSummaries``, as read-only attributes of
    the object that keeps them under ``_options``."""

    _options: SummaryOptions

    @property
    def options(self) -> SummaryOptions:
        """The checked options (frozen), shared with the core."""
        return self._options

    summaries = Option["dict[str, tuple[str, ...]]"](
        "Metric name or suffix glob -> the aggregates W&B keeps for it (parsed).", via="options"
    )
    hidden = Option["bool | tuple[str, ...]"](
        "``True`` / ``False``, or the names and suffix globs whose charts are hidden.", via="options"
    )
    record_best_step = Option[bool](
        "Whether ``<metric>.best_step`` and ``<metric>.best_epoch`` are written at the end.", via="options"
    )
    warn_missing = Option[bool](
        "Whether entries that matched no logged metric are named in a warning at the end.", via="options"
    )


class SummaryCore:
    """Definitions, observed values and best steps of one ``MetricSummaries`` (Trainer or Fabric), with its
    :class:`SummaryOptions`. The state saved in a checkpoint (:meth:`state_dict`) is the run id, the best
    values and the entries seen logged.
    """

    def __init__(self, options: SummaryOptions) -> None:
        self.options = options
        self.owner = options.owner  # the class the user built, named in warnings
        # What the logger puts before every key it sends (WandbLogger(prefix="p") sends "p-<key>").
        self.prefix = ""
        self.separator = "-"
        # Resolved by `resolve`: exact names and globs (prefix -> spec), explicit and derived.
        self._names: dict[str, Spec] = {}
        self._globs: dict[str, Spec] = {}
        self._derived: dict[str, Spec] = {}
        self._needs_scan = False
        # Definitions sent to the current run object (name or glob -> spec).
        self._defined: dict[str, Spec] = {}
        self._current_run: Run | None = None
        self._active = False
        # Observation on rank 0: the tensor last seen per logged key, keys seen logged, best values.
        self._held: dict[str, Any] = {}
        self._seen: set[str] = set()
        self._best: dict[str, dict[str, list[Any]]] = {}  # key -> direction -> [value, step, epoch or None]
        self._checkpoint_steps: dict[str, int] = {}  # monitored entry -> step of its best checkpoint
        self._run_id: str | None = None

    @property
    def active(self) -> bool:
        """Whether a run was applied (global rank 0, W&B enabled): only then is anything observed."""
        return self._active

    @property
    def run(self) -> Run | None:
        """The run the definitions were sent to, while active."""
        return self._current_run if self._active else None

    @property
    def needs_scan(self) -> bool:
        """Whether logged keys must be scanned for glob (or dataloader-suffix) matches to define by name."""
        return self._needs_scan

    @property
    def run_id(self) -> str | None:
        """Id of the run the best values belong to."""
        return self._run_id

    def use_logger(self, logger: object) -> None:
        """Name keys as ``logger`` sends them: with its ``prefix`` and separator (``WandbLogger(prefix="p")``
        sends ``p-val_acc`` for ``val_acc``)."""
        prefix = getattr(logger, "_prefix", "") if logger is not None else ""
        self.prefix = prefix if isinstance(prefix, str) else ""
        separator = getattr(logger, "LOGGER_JOIN_CHAR", "-")
        self.separator = separator if isinstance(separator, str) else "-"

    def wandb_key(self, key: str) -> str:
        """The key W&B receives for a key Lightning logs: the logger's prefix and separator before it."""
        return f"{self.prefix}{self.separator}{key}" if self.prefix else key

    # ------------------------------------------------------------------ resolution

    def resolve(self, derived: Mapping[str, tuple[Iterable[str], str]] | None = None) -> None:
        """Exact names and globs from ``summaries`` and ``hidden``, plus ``derived`` ones: monitored
        key -> (its modes, ``"min"`` / ``"max"``, and the name of the callback it comes from)."""
        names: dict[str, Spec] = {}
        globs: dict[str, Spec] = {}
        hide_all = self.options.hidden is True
        for key, summary in self.options.summaries.items():
            spec = Spec(summary=summary, hidden=hide_all)
            (globs if key.endswith("*") else names)[key.rstrip("*") if key.endswith("*") else key] = spec
        if isinstance(self.options.hidden, tuple):
            for key in self.options.hidden:
                table, bare = (globs, key[:-1]) if key.endswith("*") else (names, key)
                old = table.get(bare)
                table[bare] = Spec(summary=old.summary if old else (), hidden=True,
                                   source=old.source if old else "hidden")
        self._derived = {}
        for key, (modes, source) in (derived or {}).items():
            if _explicit_spec(key, names, globs) is not None:
                continue  # an explicit entry wins
            spec = Spec(summary=tuple(m for m in ("min", "max") if m in set(modes)), hidden=hide_all, source=source)
            self._derived[key] = spec
            names[key] = spec
        self._names, self._globs = names, globs
        # names too: a metric logged with on_step and on_epoch reaches W&B as `<name>_epoch`, defined when seen
        self._needs_scan = bool(globs) or self.options.dataloader_suffixes or bool(names)

    def _spec_for(self, key: str) -> tuple[str, Spec] | None:
        """The entry (name or glob) that applies to a logged key, and its spec: name beats glob,
        the longest glob prefix beats a shorter one, and with ``dataloader_suffixes`` the base name
        of ``<name>/dataloader_idx_N`` counts as a name."""
        if key in self._names:
            return key, self._names[key]
        if self.options.dataloader_suffixes:
            match = DATALOADER_SUFFIX.match(key)
            if match and match["base"] in self._names:
                return match["base"], self._names[match["base"]]
        # an entry `name` logged with on_step and on_epoch is its epoch value (what ModelCheckpoint and
        # EarlyStopping read as `name`): `name_epoch`, `name_epoch/dataloader_idx_N`
        forked_key = FORKED.match(key)
        if forked_key and forked_key["kind"] == "epoch":
            plain = forked_key["base"] + (forked_key["suffix"] or "")
            for entry in (plain, forked_key["base"] if self.options.dataloader_suffixes else None):
                if entry is not None and entry in self._names:
                    return entry, self._names[entry]
        prefix = max((p for p in self._globs if key.startswith(p)), key=len, default=None)
        if prefix is not None:
            return prefix + "*", self._globs[prefix]
        return None

    # ------------------------------------------------------------------ definitions

    def _define(self, run: Run, name: str, spec: Spec) -> None:
        if self._defined.get(name) == spec:
            return  # already defined on this run: no duplicate record
        try:
            # overwrite: a changed spec replaces the earlier one instead of merging with it
            define_metric(run, self.wandb_key(name), summary=spec.as_arg(), hidden=spec.hidden,
                          overwrite=name in self._defined)
        except Exception as err:  # a logging failure must never end a training run
            _errors.warn(
                f"{self.owner}: defining the W&B summary of {self.wandb_key(name)!r} failed "
                f"({type(err).__name__}: {err}); "
                "training goes on without it."
            )
            return
        self._defined[name] = spec

    def apply(self, run: Run | None) -> None:
        """Define every name and glob on ``run`` (``None`` off rank 0 or when disabled: nothing to do)."""
        self._active = run is not None
        if run is None:
            return
        if run is not self._current_run:
            self._defined = {}  # a new run object (new run, or a resumed one): define everything again
            self._current_run = run
        for name, spec in self._names.items():
            self._define(run, name, spec)
            if self.options.dataloader_suffixes and not DATALOADER_SUFFIX.match(name):
                self._define(run, f"{name}/dataloader_idx_*", spec)
        for prefix, spec in self._globs.items():
            self._define(run, prefix + "*", spec)

    def expand(self, keys: Iterable[str]) -> None:
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
            elif (forked_key := FORKED.match(key)) and forked_key["kind"] == "step":
                # `name_step` comes first (per batch); define `name_epoch` before its first value
                twin = f"{forked_key['base']}_epoch{forked_key['suffix'] or ''}"
                found = self._spec_for(twin)
                if found is not None and twin not in self._defined:
                    self._define(run, twin, found[1])

    # ------------------------------------------------------------------ observation

    def start(self, forget_held: bool = True) -> None:
        """Begin observing on the applied run: keep the best values only if they belong to this run."""
        run = self.run
        run_id = str(run.id) if run is not None else None
        if run_id != self._run_id:
            self._best, self._seen, self._checkpoint_steps = {}, set(), {}
        self._run_id = run_id
        if forget_held:
            self._held = {}

    def hold(self, values: Mapping[str, Any]) -> None:
        """Note values as held without observing them: the same object seen again is not newly logged."""
        if self._active:
            self._held.update(values)

    def observe(
        self, metrics: Mapping[str, Any], logs: bool, step: int, epoch: int | None, fresh: bool = False
    ) -> None:
        """Note which keys were logged and each min / max entry's best value, step and epoch.

        A value that is the same object as the one last seen for its key is not newly logged, unless
        ``fresh`` (every value counts as logged). ``logs=False`` only notes the values as held.
        """
        if not self._active:
            return
        if fresh:
            for key in metrics:
                self._held.pop(key, None)
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
            if not directions or not self.options.record_best_step:
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

    def finish(self, warn: bool = True) -> None:
        """Write each min / max entry's best step and epoch to the summary; warn about entries never logged."""
        run = self._current_run
        if not self._active or run is None:
            return
        payload: dict[str, int] = {}
        if self.options.record_best_step and self._best:
            for key, best in self._best.items():
                single = len(best) == 1
                name = self.wandb_key(key)
                for direction, (_, step, epoch) in best.items():
                    label = "best" if single else direction
                    payload[f"{name}.{label}_step"] = int(step)
                    if epoch is not None:  # a Fabric loop may give no epoch
                        payload[f"{name}.{label}_epoch"] = int(epoch)
        if self.options.record_best_step:
            for monitor, step in self._checkpoint_steps.items():
                payload[f"{self.wandb_key(self.logged_key(monitor))}.best_checkpoint_step"] = int(step)
        if payload:
            update_summary(run, payload, self.owner)
        if warn and self.options.warn_missing:
            elsewhere = _run_keys(run)  # logged around Lightning, e.g. by LearningRateMonitor
            missing = [
                k for k in self._entry_names()
                if k not in self._seen and not _matches(k, elsewhere) and not _matches(self.wandb_key(k), elsewhere)
            ]
            if missing:
                received = sorted(self.wandb_key(k) for k in self._logged_keys())
                _errors.warn(
                    f"{self.owner}: {missing} matched no metric logged during this fit, so W&B has no summary "
                    f"for them. Check the names against the keys logged with `self.log(...)` "
                    f"(W&B received: {received})."
                )

    def _entry_names(self) -> list[str]:
        names = [k for k, spec in self._names.items() if spec.source != "hidden"]
        return names + [p + "*" for p, spec in self._globs.items() if spec.source != "hidden"]

    def _logged_keys(self) -> set[str]:
        return {k for k in self._held if k != STEP_KEY}

    def logged_key(self, entry: str) -> str:
        """The key Lightning logs an entry's values under: ``entry`` itself, or ``<entry>_epoch`` for a
        metric logged with both ``on_step`` and ``on_epoch`` (before the logger's prefix)."""
        logged = self._logged_keys() | set(self._best)
        epoch = forked(entry, "epoch")
        return epoch if entry not in logged and epoch in logged else entry

    def note_checkpoint(self, monitor: str, step: int) -> None:
        """Record that the best checkpoint of a ``ModelCheckpoint(monitor=monitor)`` is now the one saved at
        ``step`` (the ``trainer/global_step`` of that moment, as ``UploadCheckpoints``' ``step-<n>`` alias)."""
        if self._active:
            self._checkpoint_steps[monitor] = int(step)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The run id, best values, entries seen and best-checkpoint steps:
        ``{"run_id", "best", "seen", "checkpoint_steps"}``."""
        return {
            "run_id": self._run_id,
            "best": {k: {d: list(v) for d, v in b.items()} for k, b in self._best.items()},
            "seen": sorted(self._seen),
            "checkpoint_steps": dict(self._checkpoint_steps),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._run_id = state_dict.get("run_id")
        self._best = {k: {d: list(v) for d, v in b.items()} for k, b in state_dict.get("best", {}).items()}
        self._seen = set(state_dict.get("seen", ()))
        self._checkpoint_steps = {str(k): int(v) for k, v in state_dict.get("checkpoint_steps", {}).items()}

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles callbacks: leave the live run and tensors behind.
        state = self.__dict__.copy()
        state.update(_current_run=None, _active=False, _defined={}, _held={})
        return state


# ---------------------------------------------------------------------- helpers


def _explicit_spec(key: str, names: Mapping[str, Spec], globs: Mapping[str, Spec]) -> Spec | None:
    if key in names:
        return names[key]
    best = max((prefix for prefix in globs if key.startswith(prefix)), key=len, default=None)
    return globs[best] if best is not None else None


def _check_key(key: Any, argument: str, owner: str = OWNER) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"{owner}({argument}=...): every key of `{argument}` must be a non-empty metric name or suffix "
            "glob such as "
            f"'val_acc' or 'val/*', got {key!r} ({type(key).__name__}). Write the metric's name as a string."
        )
    if key == STEP_KEY:
        raise ConfigurationError(
            f"{owner}({argument}=...): key {key!r} is the x-axis every metric is plotted against; it cannot "
            "have a summary. Remove it."
        )
    if key.startswith("_"):
        raise ConfigurationError(
            f"{owner}({argument}=...): key {key!r} starts with '_', which W&B keeps for its own keys "
            "(`_step`, `_runtime`, ...). Use the name your LightningModule logs."
        )
    if "*" in key[:-1] or key == "*":
        raise ConfigurationError(
            f"{owner}({argument}=...): key {key!r} is not a suffix glob. W&B accepts '*' only at the end, after "
            "a prefix ('val/*', 'train_*'); a bare '*' would replace WandbLogger's own rule for every key. List the "
            "metrics, or use a prefix."
        )
    return key


def _parse_summary(key: str, value: Any, owner: str = OWNER) -> tuple[str, ...]:
    accepted = ", ".join(repr(k) for k in SUMMARY_KINDS)
    if isinstance(value, str):
        items = [part.strip().lower() for part in value.split(",")]
    elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        items = [part.strip().lower() for part in value]
    else:
        raise ConfigurationError(
            f"{owner}(summaries=...): the summary of {key!r} must be one of {accepted}, a list of them "
            "or a comma-separated "
            f"string such as 'min,max'; got {value!r}."
        )
    if not items or any(not part for part in items):
        raise ConfigurationError(
            f"{owner}(summaries=...): the summary of {key!r} is empty ({value!r}). Give one or several of {accepted}."
        )
    for part in items:
        if part not in SUMMARY_KINDS:
            hint = ""
            if part == "best":
                hint = " ('best' is deprecated in W&B: use 'max' or 'min')"
            elif part == "copy":
                hint = " ('copy' is deprecated in W&B: use 'last')"
            raise ConfigurationError(
                f"{owner}(summaries=...): unknown summary {part!r} for {key!r}{hint}. Accepted: {accepted}."
            )
    if "none" in items and len(set(items)) > 1:
        raise ConfigurationError(
            f"{owner}(summaries=...): the summary of {key!r} combines 'none' with {sorted(set(items) - {'none'})}; W&B "
            "then keeps no summary at all. Use 'none' alone (leave the key out of the run summary) or drop it."
        )
    return tuple(kind for kind in SUMMARY_KINDS if kind in items)  # canonical order, no duplicates


def _parse_summaries(summaries: Any, owner: str = OWNER) -> dict[str, tuple[str, ...]]:
    if summaries is None:
        return {}
    if not isinstance(summaries, Mapping):
        raise ConfigurationError(
            f"{owner}(summaries={summaries!r}): `summaries` must be a mapping of metric name or suffix "
            "glob to summary, such as "
            f'{{"val_acc": "max", "train/*": ["mean", "last"]}}; got {type(summaries).__name__}.'
        )
    if not summaries:
        raise ConfigurationError(
            f"{owner}(summaries={{}}): `summaries` is an empty mapping, so there is nothing to define. Give at "
            "least one "
            'entry such as {"val_acc": "max"}, or pass `summaries=None` to use only the summaries derived from the '
            "Trainer's ModelCheckpoint / EarlyStopping."
        )
    return {_check_key(key, "summaries", owner): _parse_summary(key, value, owner) for key, value in summaries.items()}


def _run_keys(run: Run) -> set[str]:
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
        (m := DATALOADER_SUFFIX.match(k)) is not None and m["base"] == entry for k in keys
    )
