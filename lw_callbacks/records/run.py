"""A run's data model, built from the records of its transaction log, and the readers behind
:mod:`lw_callbacks.records`."""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lw_callbacks.records._log import iter_records, manifest_rows, records_from

STEP_KEY = "trainer/global_step"


class IncompleteRunError(RuntimeError):
    """The log has no ``exit`` record (yet): the run is still running, or its writer died."""


@dataclass(frozen=True)
class MetricDefinition:
    """One ``define_metric`` call as recorded: the key (or glob) and its options."""

    name: str | None
    glob: str | None
    step_metric: str
    summary: frozenset[str]
    step_sync: bool
    hidden: bool

    @property
    def key(self) -> str:
        """The metric name, or its glob for a glob definition."""
        return self.name if self.name is not None else (self.glob or "")


@dataclass(frozen=True)
class ArtifactEntry:
    """One file of an artifact's manifest."""

    path: str
    digest: str
    size: int
    local_path: str | None
    ref: str | None


@dataclass
class ArtifactVersion:
    """One version of an artifact collection, as this run logged it.

    ``version`` is the index W&B gives it on upload (``v0``, ``v1``, ...), counted in log order
    among versions of distinct content: logging the same content again adds aliases to the
    existing version, as the server does. ``aliases`` are the aliases that version holds at the end
    of the run (an alias such as ``best`` moves to the newest version logged with it).
    """

    name: str
    type: str
    version: int
    digest: str
    metadata: dict[str, Any]
    entries: tuple[ArtifactEntry, ...]
    aliases: list[str] = field(default_factory=list)
    logged_aliases: list[str] = field(default_factory=list)
    description: str = ""

    def entry(self, path: str) -> ArtifactEntry:
        """The manifest entry for ``path``; ``KeyError`` listing the paths there are."""
        for entry in self.entries:
            if entry.path == path:
                return entry
        raise KeyError(f"{self.name}:v{self.version} has no file {path!r}; it has {[e.path for e in self.entries]}")


@dataclass(frozen=True)
class LoggedTable:
    """One ``wandb.Table`` logged under a history key, as stored in its ``run_table`` artifact.

    ``data`` is the table's full JSON (``columns``, ``data``, ``column_types``), whose image cells
    name entries of ``entries``; the copy under ``files/media/table/`` has placeholder image cells.
    ``client_id`` identifies the artifact in ``wandb-client-artifact://<client_id>/...`` references.
    """

    key: str
    artifact: str
    client_id: str
    data: dict[str, Any]
    entries: tuple[ArtifactEntry, ...]

    @property
    def columns(self) -> list[str]:
        return list(self.data.get("columns", []))

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as ``{column: cell}`` dicts."""
        return [dict(zip(self.columns, row, strict=False)) for row in self.data.get("data", [])]

    def entry(self, path: str) -> ArtifactEntry:
        """The manifest entry for ``path`` (an image cell's ``path``); ``KeyError`` if absent."""
        for entry in self.entries:
            if entry.path == path:
                return entry
        raise KeyError(f"{self.artifact} has no file {path!r}; it has {[e.path for e in self.entries]}")


@dataclass
class RunRecords:
    """Everything a run recorded, decoded from its ``.wandb`` log."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    display_name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[MetricDefinition] = field(default_factory=list)
    artifact_log: list[ArtifactVersion] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None
    started_at: float | None = None
    segments: list[Path] = field(default_factory=list)
    cut_segments: list[Path] = field(default_factory=list)
    damaged: list[tuple[Path, int, int]] = field(default_factory=list)
    history_rows: int = 0
    """How many history rows the log holds (also when ``history`` was not kept: ``keep_history=False``)."""
    """``(log, start, end)``: byte ranges of a segment's log that were damaged and skipped (the records
    with a chunk there are lost; the rest of the run is read)."""

    @property
    def run_dir(self) -> Path:
        """The run's own folder (``.../wandb/offline-run-<date>-<id>``)."""
        return self.path.parent

    @property
    def complete(self) -> bool:
        """True once the log holds the run's ``exit`` record."""
        return self.exit_code is not None

    def digests(self, name: str | None = None) -> set[tuple[str, str]]:
        """``(collection, digest)`` of every file of every artifact version (of ``name``), and of each
        version's manifest."""
        files = {(a.name, e.digest) for a in self.artifacts(name) for e in a.entries}
        return files | {(a.name, a.digest) for a in self.artifacts(name) if a.digest}

    def metric(self, key: str) -> MetricDefinition | None:
        """The latest definition recorded for a metric name or glob, or ``None``."""
        found = None
        for definition in self.metrics:
            if definition.key == key:
                found = definition
        return found

    def rows(self, key: str) -> list[dict[str, Any]]:
        """History rows that hold ``key`` (a top-level key such as ``val_acc`` or ``samples``)."""
        return [row for row in self.history if key in row]

    def series(self, key: str, step_key: str = STEP_KEY) -> list[tuple[Any, Any]]:
        """``(step, value)`` for every history row holding ``key``; step is ``None`` if absent."""
        return [(row.get(step_key), row[key]) for row in self.history if key in row]

    def keys(self) -> set[str]:
        """Every top-level key that appears in the history (W&B's own ``_step`` etc. excluded)."""
        return {k for row in self.history for k in row if not k.startswith("_")}

    def artifacts(self, name: str | None = None, type: str | None = None) -> list[ArtifactVersion]:
        """Artifact versions in log order, optionally of one collection name and / or type."""
        return [
            a
            for a in self.artifact_log
            if (name is None or a.name == name) and (type is None or a.type == type)
        ]

    def artifact_names(self, type: str | None = None) -> list[str]:
        """Names of the artifact collections this run logged to, in first-logged order."""
        return list(dict.fromkeys(a.name for a in self.artifacts(type=type)))

    def resolve_artifact(self, name: str, alias_or_version: str = "latest") -> ArtifactVersion:
        """The version of ``name`` that holds an alias (``best``) or has an index (``v3``).

        Raises:
            KeyError: no such collection, alias or version; the message lists what exists.
        """
        versions = self.artifacts(name)
        if not versions:
            raise KeyError(f"no artifact named {name!r} in this run; it has {self.artifact_names()}")
        tag = alias_or_version
        if tag.startswith("v") and tag[1:].isdigit():
            for version in versions:
                if version.version == int(tag[1:]):
                    return version
        for version in versions:
            if tag in version.aliases:
                return version
        known = sorted({a for v in versions for a in v.aliases} | {f"v{v.version}" for v in versions})
        raise KeyError(f"artifact {name!r} has no version or alias {tag!r}; it has {known}")


    def tables(self, key: str) -> list[LoggedTable]:
        """Every ``wandb.Table`` logged under history key ``key``, in log order, read from the
        staged ``<key>.table.json`` of its ``run_table`` artifact (one per log call, even when two
        calls logged identical content)."""
        found: list[LoggedTable] = []
        entry_name = f"{key}.table.json"
        logs = [log_file_of(s) for s in self.segments[:-1]] + [self.path] if self.segments else [self.path]
        records = (r for log in logs for r in iter_records(log, damaged=[]))  # damage: see ``damaged``
        for record in records:
            if record.WhichOneof("record_type") != "artifact" or record.artifact.type != "run_table":
                continue
            entries = _manifest_entries(record.artifact.manifest)
            table_entry = next((e for e in entries if e.path == entry_name), None)
            if table_entry is None or table_entry.local_path is None:
                continue
            data = json.loads(Path(table_entry.local_path).read_text(encoding="utf-8"))
            found.append(LoggedTable(key, record.artifact.name, record.artifact.client_id, data, entries))
        return found

    def iter_history(self, keys: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Each history row, one at a time, read again from the log: for a run too big for memory.

        Rows are flattened as in :meth:`history_frame` (nested keys joined with ".", media as file
        paths, ``_step`` continued across the segments of a resumed run), like W&B's ``scan_history``.

        Args:
            keys: only the rows holding every one of these keys, with only them (and W&B's ``_step``,
                ``_runtime`` and ``_timestamp``); ``None`` for every row and key.
        """
        from lw_callbacks.records.frames import iter_history_rows

        return iter_history_rows(self, keys)

    def history_frame(self, keys: list[str] | None = None, x_axis: str | None = STEP_KEY) -> Any:
        """The run's history as a DataFrame, as ``wandb.Api().run(path).history(pandas=True)`` gives it
        for an online run (every row: nothing sampled).

        One row per history row, in log order; the columns are W&B's ``_step``, ``_runtime`` and
        ``_timestamp`` and every logged key, nested keys joined with "." (``{"val": {"acc": 1}}`` is
        ``val.acc``), a missing cell NaN (or None); a media value (image, table, audio) is the path of
        its file in the run's folder, a list of images a list of paths, a histogram its dict. For a
        run resumed offline (:func:`read_resumed`), the segments follow one another and ``_step``
        continues across them, as W&B numbers the rows of a resumed run. The rows are decoded again
        from the log straight into columns, so the frame is the only copy of them
        (``read_run(..., keep_history=False)`` keeps none in ``history`` either).

        Args:
            keys: only the rows holding every one of these keys (and the x-axis), with only them
                and W&B's ``_`` columns; ``None`` for everything.
            x_axis: the column to index by (``None``: a plain row index).

        Returns:
            A ``pandas.DataFrame``.

        Raises:
            ImportError: pandas is not installed (``pip install "lw-callbacks[pandas]"``).
            KeyError: no such ``x_axis`` in the history (the message lists the keys).

        Example::

            frame = read_run("runs/wandb/offline-run-20260101_120000-abc123").history_frame()
            frame["val_acc"].dropna()  # val_acc by trainer/global_step
        """
        from lw_callbacks.records.frames import history_frame

        return history_frame(self, keys, x_axis)

    def table_frame(self, key: str, index: int = -1) -> Any:
        """A logged ``wandb.Table`` as a DataFrame: the ``index``-th one logged under ``key``
        (``-1``: the last), with image / audio cells as the paths of their files, and an image's
        masks as the files of ``<column>.masks.<layer>`` columns.

        Raises:
            ImportError: pandas is not installed (``pip install "lw-callbacks[pandas]"``).
            KeyError: no table under ``key`` (the message lists the table keys).
            IndexError: fewer tables than ``index`` asks for.
        """
        from lw_callbacks.records.frames import table_frame

        return table_frame(self, key, index)


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[path[-1]] = value


def _remove_path(target: dict[str, Any], path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part, {})
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _apply_updates(target: dict[str, Any], record: Any) -> None:
    for item in record.update:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in record.remove:
        _remove_path(target, _item_path(item))


def _manifest_entries(manifest: Any) -> tuple[ArtifactEntry, ...]:
    return tuple(ArtifactEntry(*row) for row in manifest_rows(manifest))


def _add_artifact(run: RunRecords, record: Any) -> None:
    aliases = list(record.aliases)
    metadata = json.loads(record.metadata) if record.metadata else {}
    existing = run.artifacts(record.name)
    same = next((v for v in existing if v.digest == record.digest), None)
    if same is None:
        same = ArtifactVersion(
            name=record.name,
            type=record.type,
            version=len(existing),
            digest=record.digest,
            metadata=metadata,
            entries=_manifest_entries(record.manifest),
            description=record.description,
        )
        run.artifact_log.append(same)
    for alias in aliases:  # an alias lives on one version of a collection at a time
        for version in existing:
            if alias in version.aliases:
                version.aliases.remove(alias)
        if alias not in same.aliases:
            same.aliases.append(alias)
        if alias not in same.logged_aliases:
            same.logged_aliases.append(alias)


class RunReader:
    """Builds a run's records from its log as the log grows: each :meth:`read` decodes only the bytes
    appended since the previous one.

    It keeps the records built so far and the offset after the last whole record; a record (or chunk)
    not yet whole at the log's end is "not yet", read again from its start next time.

    Args:
        log: the ``run-<id>.wandb`` file.
        into: the records of the run's earlier segments, which this segment continues (copied, left
            untouched).
    """

    def __init__(self, log: Path, into: RunRecords | None = None, keep_history: bool = True) -> None:
        if into is None:
            run = RunRecords(path=log)
        else:  # a later segment of the same run continues the earlier ones
            run = copy.deepcopy(into)
            run.path, run.exit_code = log, None
        run.segments.append(log.parent)
        self.log = log
        self.run = run
        self.keep_history = keep_history
        self.offset = 0  # after the last whole record read (0: nothing read yet)

    def read(self) -> RunRecords:
        """The run's records with those appended to the log since the last call added (the same object
        each time)."""
        damaged: list[tuple[int, int]] = []
        for record, end in records_from(self.log, self.offset, damaged):
            _add_record(self.run, record, self.keep_history)
            self.offset = end
        for start, stop in damaged:  # a range at the tail is found again by the next read, maybe longer
            known = [i for i, (log, s, _e) in enumerate(self.run.damaged) if log == self.log and s == start]
            if known:
                self.run.damaged[known[0]] = (self.log, start, stop)
            else:
                self.run.damaged.append((self.log, start, stop))
        self.run.config.pop("_wandb", None)
        return self.run


def _add_record(run: RunRecords, record: Any, keep_history: bool = True) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        run.run_id, run.project, run.entity = r.run_id, r.project, r.entity
        if run.started_at is None and r.HasField("start_time"):
            run.started_at = r.start_time.seconds + r.start_time.nanos / 1e9
        run.display_name = r.display_name or run.display_name
        _apply_updates(run.config, r.config)
        _apply_updates(run.summary, r.summary)
    elif kind == "config":
        _apply_updates(run.config, record.config)
    elif kind == "history":
        run.history_rows += 1
        if not keep_history:
            return
        row: dict[str, Any] = {}
        for item in record.history.item:
            _set_path(row, _item_path(item), json.loads(item.value_json))
        run.history.append(row)
    elif kind == "summary":
        _apply_updates(run.summary, record.summary)
    elif kind == "metric":
        m = record.metric
        summary = frozenset(f.name for f, on in m.summary.ListFields() if on)
        run.metrics.append(
            MetricDefinition(
                name=m.name or None,
                glob=m.glob_name or None,
                step_metric=m.step_metric,
                summary=summary,
                step_sync=m.options.step_sync,
                hidden=m.options.hidden,
            )
        )
    elif kind == "artifact":
        _add_artifact(run, record.artifact)
    elif kind == "files":
        run.files.extend(f.path for f in record.files.files if f.path not in run.files)
    elif kind == "exit":
        run.exit_code = record.exit.exit_code


def log_file_of(path: Path) -> Path:
    """The ``run-<id>.wandb`` log at ``path``: the file itself, the log in a run's folder, or the log of
    the one run under a folder (``FileNotFoundError`` for none; ``ValueError`` listing several)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no W&B run at {path}")
    logs = sorted(path.glob("run-*.wandb"))
    if len(logs) == 1:
        return logs[0]
    runs = find_runs(path)
    if len(runs) == 1:
        return next(runs[0].glob("run-*.wandb"))
    if not runs:
        raise FileNotFoundError(f"no run-<id>.wandb under {path}")
    raise ValueError(f"{path} holds {len(runs)} runs; pass one of: {[str(r) for r in runs]}")


def _started(folder: Path) -> str:
    found = re.search(r"\d{8}_\d{6}", folder.name)  # offline-run-<date>_<time>-<id>[-N]
    return found.group(0) if found else ""


def run_id_of(folder: Path) -> str:
    """The run id of the run folder ``folder``, from its log's name (``run-<id>.wandb``)."""
    return next(folder.glob("run-*.wandb")).stem[len("run-") :]


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder (one holding a ``run-<id>.wandb``) under ``root``, oldest first."""
    found = set()
    # os.walk skips a folder removed while it walks (staged checkpoints are removed in the background
    # once W&B holds them), where Path.rglob raises.
    for folder, _dirs, files in os.walk(root):
        if any(f.startswith("run-") and f.endswith(".wandb") for f in files):
            found.add(Path(folder))
    return sorted(found, key=lambda p: (_started(p), str(p)))


def read_run(
    path: str | Path, *, timeout: float = 10.0, require_exit: bool = True, keep_history: bool = True
) -> RunRecords:
    """Decode a run's log.

    Args:
        path: the ``run-<id>.wandb`` file, the run's folder, or a folder holding exactly one run.
        timeout: seconds to wait for the ``exit`` record. ``run.finish()`` can return before the
            log's tail is on disk, so a missing tail is taken as "not yet" and read again.
        require_exit: with ``False``, a run still in progress is returned as far as it is written
            (``complete`` is then ``False``) instead of raising.
        keep_history: with ``False``, the history rows are counted (``history_rows``) but not kept:
            for a long run read with :meth:`RunRecords.history_frame` or ``iter_history``.

    Raises:
        FileNotFoundError: no run there.
        ValueError: the folder holds several runs (the message lists them), or the file is not a
            W&B log.
        IncompleteRunError: ``require_exit`` and no ``exit`` record within ``timeout``.
    """
    log = log_file_of(Path(path))
    run = _decode_waiting(log, timeout, require_exit, keep_history=keep_history)
    if not run.complete:
        run.cut_segments.append(run.run_dir)
    return run


def _decode_waiting(
    log: Path, timeout: float, require_exit: bool, into: RunRecords | None = None, keep_history: bool = True
) -> RunRecords:
    """Decode ``log`` (continuing ``into``, left untouched), then what is appended to it, until its exit
    record is there."""
    deadline = time.monotonic() + timeout
    reader = RunReader(log, into, keep_history)
    while True:
        run = reader.read()
        if run.complete or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if require_exit and not run.complete:
        raise IncompleteRunError(f"{log} has no exit record after {timeout:.0f}s: the run has not finished")
    return run


def segments_of(root: str | Path, run_id: str | None = None) -> list[Path]:
    """The folders of every segment of run ``run_id`` under ``root``, in start order.

    Raises:
        FileNotFoundError: no segment of that run under ``root``.
        ValueError: ``run_id`` is ``None`` and ``root`` holds runs of several ids.
    """
    segments = find_runs(root)
    ids = {run_id_of(p) for p in segments}  # not from the folder name: a second one started
    # in the same second as another of the same id is named offline-run-<date>-<id>-1
    if run_id is None:
        if len(ids) > 1:
            raise ValueError(f"{root} holds runs {sorted(ids)}; pass run_id")
        run_id = next(iter(ids), None)
    segments = [p for p in segments if run_id_of(p) == run_id]
    if not segments:
        raise FileNotFoundError(f"no segment of run {run_id!r} under {root}")
    return segments


def read_segments(
    segments: list[Path], *, timeout: float = 10.0, require_exit: bool = False, keep_history: bool = True
) -> RunRecords:
    """Merge the given segments of one run, in the order given (see :func:`read_resumed`)."""
    merged: RunRecords | None = None
    for index, segment in enumerate(segments):
        newest = index == len(segments) - 1
        # An earlier segment ended before the next one began: no exit record means it was cut.
        merged = _decode_waiting(
            log_file_of(Path(segment)), timeout if newest else 0, require_exit and newest, merged, keep_history
        )
        if not merged.complete:
            merged.cut_segments.append(merged.run_dir)
    if merged is None:
        raise FileNotFoundError("no segment to read")
    return merged


def read_resumed(
    root: str | Path,
    run_id: str | None = None,
    *,
    timeout: float = 10.0,
    require_exit: bool = False,
    keep_history: bool = True,
) -> RunRecords:
    """One view of a run that was resumed offline, merged from its segments.

    Offline, each ``wandb.init(id=..., resume="allow")`` of the same run writes a folder of its own
    (``offline-run-<date>-<id>``); ``wandb sync`` of those folders uploads them into one run. This
    reads every segment of ``run_id`` under ``root`` in start order and merges them as W&B does:
    history rows appended, summary and config updated, artifact versions continued across
    segments (numbered in log order, deduplicated by digest, as the server numbers them) and aliases
    moved. ``path`` of the result is the newest segment's log; ``segments`` lists every segment read.

    A segment whose process was killed has no ``exit`` record and may end in a truncated record:
    what was written is read and the cut tail is that segment's end; such segments are listed in
    ``cut_segments``. Only the newest segment is waited for (up to ``timeout``; its writer may still
    be finishing); when it has no ``exit`` record then, it is in ``cut_segments`` too (or still running).

    Raises:
        FileNotFoundError: no segment of that run under ``root``.
        ValueError: ``run_id`` is ``None`` and ``root`` holds runs of several ids.
        IncompleteRunError: ``require_exit`` and the newest segment has no ``exit`` record within
            ``timeout``.
    """
    segments = segments_of(root, run_id)
    return read_segments(segments, timeout=timeout, require_exit=require_exit, keep_history=keep_history)
