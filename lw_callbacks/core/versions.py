"""The options of a checkpoint upload (:class:`UploadOptions`), and the names, aliases and metadata of
its versions, shared by :class:`~lw_callbacks.UploadCheckpoints` and
:class:`~lw_callbacks.fabric.FabricUploadCheckpoints`.

It also keeps what was logged in this process (:data:`LOGGED`), which
:func:`~lw_callbacks.restore.restore_checkpoint` reads before the run's log reaches the disk.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from lw_callbacks._errors import ConfigurationError, Option, check_bool, check_path, check_seconds
from lw_callbacks.core import files

OWNER = "UploadCheckpoints"
NAME_FIELDS = ("run_id", "monitor", "mode", "index")
DEFAULT_PG_TIMEOUT_S = 1800.0
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|best|v\d+|epoch-\d+|step-\d+)$")

# What was logged in this process (on rank 0, and shared with every rank at the end of fit):
# collection -> versions as the run's records will show them (see :func:`version_record`). A running
# run's log is written to disk only every 15 s (wandb's `x_transaction_log_flush_interval`), so
# `restore_checkpoint` looks here first for a collection of a run that is still being written.
LOGGED: dict[str, list[dict[str, Any]]] = {}


# ---------------------------------------------------------------------- versions
def version_record(
    version: int, digest: str, size: int, local_path: str | None, aliases: Sequence[str], metadata: Any,
    files: Sequence[tuple[str, str, int, str | None]] = (),
) -> dict[str, Any]:
    """One version of a collection in :data:`LOGGED`, as the run's records will show it; ``files``
    (path, digest, size, local path) are a folder checkpoint's entries."""
    return {
        "version": version, "digest": digest, "size": size, "local_path": local_path,
        "aliases": list(aliases), "metadata": metadata, "files": [list(f) for f in files],
    }


def records_versions(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`version_record` of each :class:`~lw_callbacks.records.ArtifactVersion` a run's records hold."""
    out = []
    for v in versions:
        folder = isinstance(v.metadata, dict) and bool(v.metadata.get("folder"))
        files = [(e.path, e.digest, e.size, e.local_path) for e in v.entries] if folder else []
        out.append(version_record(
            v.version,
            v.digest if folder or not v.entries else v.entries[0].digest,
            sum(e.size for e in v.entries) if folder else (v.entries[0].size if v.entries else 0),
            None if folder or not v.entries else v.entries[0].local_path,
            v.aliases,
            v.metadata,
            files,
        ))
    return out


def version_metadata(
    path: str | os.PathLike[str],
    *,
    score: float | None,
    monitor: str | None,
    mode: str,
    epoch: int | None,
    global_step: int | None,
    is_last: bool,
    step: dict[str, int | None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A version's metadata: ``score`` (``None`` unless finite), ``monitor``, ``mode``, ``epoch``,
    ``global_step``, ``step`` (when given as ``{"step": n}``), ``original_filename``, ``original_path``,
    ``is_last``, then ``extra``."""
    return {
        "score": score if score is not None and math.isfinite(score) else None,
        "monitor": monitor,
        "mode": mode,
        "epoch": epoch,
        "global_step": global_step,
        **(step or {}),
        "original_filename": os.path.basename(path),
        "original_path": os.fspath(path) if files.is_remote(path) else os.path.abspath(path),
        "is_last": is_last,
        **(extra or {}),
    }


def version_aliases(epoch: int | None, step: int | None, *more: Sequence[str]) -> list[str]:
    """``epoch-<n>`` and ``step-<n>`` (where known), then each of ``more``, without repeats."""
    names = ([f"epoch-{epoch}"] if epoch is not None else []) + ([f"step-{step}"] if step is not None else [])
    return list(dict.fromkeys([*names, *(a for group in more for a in group)]))


def name_for(template: str | None, run_id: str, monitor: str | None, mode: str, index: int) -> str:
    """One collection's artifact name from the ``name`` template (or the default)."""
    fld = sanitize(monitor) if monitor else "none"
    if template is None:
        return f"model-{run_id}-{fld}" if monitor else f"model-{run_id}"
    return sanitize(template.format(run_id=run_id, monitor=fld, mode=mode, index=index))


def check_template(name: str | None, owner: str = OWNER) -> str | None:
    """``name`` if it is a valid collection name template, else ``ConfigurationError``
    (naming ``owner``, the class or call the user wrote)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigurationError(
            f"{owner}(name={name!r}): `name` must be a template string or None, got {type(name).__name__}, "
            "e.g. `name='model-{run_id}-{monitor}'`."
        )
    accepted = ", ".join("{" + f + "}" for f in NAME_FIELDS)
    problem = None
    try:
        fields = [(lit, fld, spec, conv) for lit, fld, spec, conv in string.Formatter().parse(name)]
    except ValueError as err:
        fields, problem = [], str(err)
    for literal, fld, _spec, _conv in fields:
        if literal and not _SAFE.match(literal):
            problem = f"{literal!r} has characters other than letters, digits, '_', '.', '-'"
        if fld is not None and fld not in NAME_FIELDS:
            problem = f"unknown field {{{fld}}}"
    if problem is None and not name:
        problem = "it is empty"
    if problem is not None:
        raise ConfigurationError(
            f"{owner}(name={name!r}) is not a valid artifact name template: {problem}. Use letters, "
            f"digits, '_', '.', '-' and the fields {accepted}, e.g. `name='model-{{run_id}}-{{monitor}}'`."
        )
    return name


def check_aliases(aliases: Sequence[str], owner: str = OWNER) -> tuple[str, ...]:
    """The user's extra aliases, checked and without repeats, else ``ConfigurationError``
    (naming ``owner``, the class or call the user wrote). A single string is one alias."""
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, (list, tuple)):
        raise ConfigurationError(
            f"{owner}(aliases={aliases!r}): `aliases` must be a list of alias strings, got "
            f"{type(aliases).__name__}, e.g. `aliases=['baseline', 'lr-1e-3']` (or `aliases=[]`)."
        )
    out = []
    for alias in aliases:
        if not isinstance(alias, str) or not _SAFE.match(alias) or len(alias) > 128:
            raise ConfigurationError(
                f"{owner}(aliases=...) got {alias!r}: an alias is 1-128 letters, digits, '_', '.' or '-' "
                "(no '/', ':' or spaces), e.g. `aliases=['baseline', 'lr-1e-3']`."
            )
        if _RESERVED_ALIAS.match(alias):
            raise ConfigurationError(
                f"{owner}(aliases=...) got {alias!r}, which the callback sets itself ('latest', 'best', "
                "'epoch-<n>', 'step-<n>') or which W&B reserves for versions ('v<n>'); choose another name."
            )
        out.append(alias)
    return tuple(dict.fromkeys(out))


def check_flush_timeout(flush_timeout: Any, owner: str = OWNER) -> float:
    """Seconds to wait for pending uploads: a finite number > 0 (not ``bool``), else ``ConfigurationError``."""
    seconds = check_seconds(owner, "flush_timeout", flush_timeout, example="600")
    assert seconds is not None
    return seconds


def sanitize(text: str) -> str:
    """``text`` with every character outside ``A-Z a-z 0-9 _ . -`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def as_float(value: Any) -> float | None:
    """A number, or a one-element tensor, as a float; ``None`` for anything else."""
    if value is None:
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def flush_limit(flush_timeout: float, world_size: int, strategy: Any) -> float:
    """How long rank 0 may flush at the end of training while the other ranks wait in a collective:
    ``flush_timeout``, but under several processes at most half the process group's timeout."""
    if world_size <= 1:
        return flush_timeout
    timeout = getattr(strategy, "_timeout", None)
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else DEFAULT_PG_TIMEOUT_S
    return max(1.0, min(flush_timeout, seconds / 2))


# ---------------------------------------------------------------------- options
@dataclass(frozen=True)
class UploadOptions:
    """The options of a checkpoint upload, checked once: the Trainer callback, the Fabric class and their
    :class:`~lw_callbacks.core.publish.Publisher` share this one copy, read-only.

    Args:
        name: the collection name template (:func:`check_template`), or ``None`` for the default names.
        aliases: extra aliases of every new version (:func:`check_aliases`); kept as a tuple.
        flush_timeout: seconds to wait for pending uploads when training ends or fails.
        staging_dir: where hand-over links are made; ``None``: ``.upload-staging`` beside each file.
        progress_bar: show a progress bar while flushing 64 MiB or more.
        owner: the class named in messages and warnings.

    Raises:
        ConfigurationError: ``name`` is not a template of the accepted fields.
        ConfigurationError: an alias is not letters, digits and ``_ . -``, or is reserved.
        ConfigurationError: ``flush_timeout`` is not a number of seconds >= 0.
        ConfigurationError: ``staging_dir`` is not a path or ``None``.
        ConfigurationError: ``progress_bar`` is not ``True`` or ``False``.

    Example::

        >>> UploadOptions(aliases=["baseline"], flush_timeout=60).aliases
        ('baseline',)
    """

    name: str | None = None
    aliases: Sequence[str] = ()
    flush_timeout: float = 600.0
    staging_dir: str | os.PathLike[str] | None = None
    progress_bar: bool = True
    owner: str = OWNER

    def __post_init__(self) -> None:
        checked = {
            "name": check_template(self.name, self.owner),
            "aliases": check_aliases(self.aliases, self.owner),
            "flush_timeout": check_flush_timeout(self.flush_timeout, self.owner),
            "staging_dir": check_path(self.owner, "staging_dir", self.staging_dir),
            "progress_bar": check_bool(self.owner, "progress_bar", self.progress_bar),
        }
        for field_name, value in checked.items():
            object.__setattr__(self, field_name, value)


class UploadOptionsMixin:
    """The options shared by ``UploadCheckpoints`` and ``FabricUploadCheckpoints``, as read-only attributes
    of the object that keeps them under ``_options``."""

    _options: UploadOptions

    @property
    def options(self) -> UploadOptions:
        """The checked options (frozen), shared with the publisher."""
        return self._options

    name = Option[str | None]("The collection name template, or ``None`` for the default names.", via="options")
    aliases = Option[tuple[str, ...]]("The extra aliases of every new version, each once.", via="options")
    flush_timeout = Option[float]("Seconds to wait for pending uploads when training ends or fails.", via="options")
    staging_dir = Option[str | None]("Where hand-over links are made, or ``None``: beside each file.", via="options")
    progress_bar = Option[bool]("Whether a progress bar shows while flushing large files.", via="options")
