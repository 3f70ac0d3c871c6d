"""A run's records as pandas DataFrames, shaped as W&B's public API gives them for online runs.

``pandas`` is an optional extra (``pip install "lw-callbacks[pandas]"``), imported only when a
DataFrame is asked for. The history is decoded straight into columns (typed arrays for numbers), so
a run of a million rows is never held as rows and as a frame at once.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lw_callbacks.records._log import records_from

if TYPE_CHECKING:
    import pandas as pd

    from lw_callbacks.records.run import LoggedTable, RunRecords

PANDAS_EXTRA = 'pip install "lw-callbacks[pandas]"'


def require_pandas(what: str) -> Any:
    """The ``pandas`` module; an ``ImportError`` naming the extra when it is not installed."""
    try:
        import pandas
    except ImportError as err:
        raise ImportError(f"{what} needs pandas, an optional dependency of lw-callbacks: {PANDAS_EXTRA}") from err
    return pandas


# ----------------------------------------------------------------------------------------- cells
def media_cell(value: dict[str, Any], folder: Path | None) -> Any:
    """A media value (``{"_type": ..., "path": ...}``) as the path of its file, or a list of paths for
    a list of images; other typed values (histograms) are left as they are. ``folder`` is the run's
    folder, whose ``files/`` holds the history's media; ``None`` leaves the path as W&B wrote it."""
    if "path" in value:
        return str(folder / "files" / value["path"]) if folder is not None else value["path"]
    if "filenames" in value:
        return [str(folder / "files" / f) if folder is not None else f for f in value["filenames"]]
    return value


def _flatten(prefix: str, value: Any, out: dict[str, Any], folder: Path | None) -> None:
    if isinstance(value, dict):
        if "_type" in value:
            out[prefix] = media_cell(value, folder)
            return
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out, folder)
        return
    out[prefix] = value


def _row_of(record: Any, folder: Path) -> dict[str, Any]:
    items = record.history.item
    # One parse of all the row's values (a JSON array): several times faster than one per item.
    values = json.loads("[" + ",".join([item.value_json for item in items]) + "]")
    row: dict[str, Any] = {}
    nested: dict[str, Any] | None = None  # W&B writes a dict value as one item per leaf (nested_key)
    for item, value in zip(items, values, strict=True):
        path = item.nested_key
        if path:
            if nested is None:
                nested = {}
            target = nested
            *parents, last = path
            for part in parents:
                child = target.get(part)
                if not isinstance(child, dict):
                    child = target[part] = {}
                target = child
            target[last] = value
        elif type(value) is dict:
            _flatten(item.key, value, row, folder)
        else:
            row[item.key] = value
    if nested is not None:
        for key, value in nested.items():
            _flatten(key, value, row, folder)
    return row


def iter_history_rows(run: RunRecords, keys: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Each history row of every segment of ``run``, flattened (see :meth:`RunRecords.iter_history`)."""
    from lw_callbacks.records.run import log_file_of

    wanted = list(keys) if keys is not None else None
    logs = [log_file_of(s) for s in run.segments[:-1]] + [run.path] if run.segments else [run.path]
    next_step = 0
    for log in logs:
        folder = log.parent
        for record, _end in records_from(log, 0, []):  # damaged ranges: see ``run.damaged``
            if record.WhichOneof("record_type") != "history":
                continue
            row = _row_of(record, folder)
            step = row.get("_step")
            if isinstance(step, int):  # a resumed segment starts again at 0: W&B continues the steps
                row["_step"] = step = max(step, next_step)
                next_step = step + 1
            if wanted is not None:
                if not all(k in row for k in wanted):
                    continue
                row = {k: v for k, v in row.items() if k in wanted or k.startswith("_")}
            yield row


# --------------------------------------------------------------------------------------- columns
class _Column:
    """One column built row by row: int64, then float64 (NaN for missing), then Python objects."""

    __slots__ = ("data", "fast", "kind")

    def __init__(self) -> None:
        self.kind = "int"
        self.data: Any = array("q")
        self.fast: type | None = int  # the type appended without a check (None: any)

    def _to_float(self) -> None:
        self.kind, self.data, self.fast = "float", array("d", self.data), float

    def _to_object(self) -> None:
        old = self.data
        self.kind, self.fast = "object", None
        self.data = [None if isinstance(v, float) and math.isnan(v) else v for v in old] if old else []

    def pad(self, n: int) -> None:
        missing = n - len(self.data)
        if missing <= 0:
            return
        if self.kind == "int":
            self._to_float()
        if self.kind == "float":
            self.data.extend(array("d", [math.nan]) * missing)
        else:
            self.data.extend([None] * missing)

    def append(self, index: int, value: Any) -> None:
        if len(self.data) < index:
            self.pad(index)
        kind = type(value)
        if self.kind == "int":
            if kind is int and -(2**63) <= value < 2**63:
                self.data.append(value)
                return
            if kind is float:
                self._to_float()
            else:
                self._to_object()
        if self.kind == "float":
            if kind is float or kind is int:
                self.data.append(value)
                return
            self._to_object()
        self.data.append(value)

    def series_data(self, n: int) -> Any:
        import numpy as np

        self.pad(n)
        if self.kind == "int":
            return np.frombuffer(self.data, dtype=np.int64) if len(self.data) else np.empty(0, np.int64)
        if self.kind == "float":
            return np.frombuffer(self.data, dtype=np.float64) if len(self.data) else np.empty(0, np.float64)
        out = np.empty(n, dtype=object)
        out[:] = self.data
        self.data = []
        return out


def frame_of_rows(rows: Iterable[dict[str, Any]], index: str | None = None) -> pd.DataFrame:
    """A DataFrame of ``rows`` (dicts), built column by column as the rows come, without a copy of
    the numbers: columns in first-seen order, missing cells NaN (numbers) or None."""
    pd = require_pandas("a DataFrame of a run's records")
    columns: dict[str, _Column] = {}
    n = 0
    for row in rows:
        for key, value in row.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = _Column()
            data = column.data
            fast = column.fast
            if len(data) == n and (fast is None or type(value) is fast):
                try:
                    data.append(value)
                    continue
                except OverflowError:  # an int beyond int64
                    pass
            column.append(n, value)
        n += 1
    data = {key: column.series_data(n) for key, column in columns.items()}
    columns.clear()
    idx = None
    if index is not None:
        if index not in data:
            raise KeyError(f"no history key {index!r} to index by; the keys are {sorted(data)} (x_axis=None: none)")
        idx = pd.Index(data.pop(index), name=index)
    return pd.DataFrame(data, index=idx, copy=False)


# ---------------------------------------------------------------------------------------- frames
def history_frame(run: RunRecords, keys: list[str] | None = None, x_axis: str | None = "trainer/global_step") -> Any:
    """See :meth:`RunRecords.history_frame`."""
    require_pandas("RunRecords.history_frame")
    if keys is not None and x_axis is not None and x_axis not in keys:
        keys = [*keys, x_axis]
    return frame_of_rows(iter_history_rows(run, keys), index=x_axis)


def table_cell(value: Any, table: LoggedTable) -> Any:
    """A table cell, with an image / audio / mask cell as the path of its staged file."""
    if isinstance(value, dict) and "_type" in value and "path" in value:
        try:
            entry = table.entry(value["path"])
        except KeyError:
            return value["path"]
        return entry.local_path or entry.ref or entry.path
    return value


def _cells(column: str, value: Any, table: LoggedTable) -> dict[str, Any]:
    """``{column: cell}``, and for an image with masks ``{column}.masks.<layer>``: each mask's file."""
    out = {column: table_cell(value, table)}
    if isinstance(value, dict) and isinstance(value.get("masks"), dict):
        for layer, mask in value["masks"].items():
            out[f"{column}.masks.{layer}"] = table_cell(mask, table)
    return out


def table_frame(run: RunRecords, key: str, index: int = -1) -> Any:
    """See :meth:`RunRecords.table_frame`."""
    pd = require_pandas("RunRecords.table_frame")
    tables = run.tables(key)
    if not tables:
        raise KeyError(f"no table logged under {key!r}; the table keys are {table_keys(run)}")
    table = tables[index]
    rows: list[dict[str, Any]] = []
    for cells in table.data.get("data", []):
        row: dict[str, Any] = {}
        for column, value in zip(table.columns, cells, strict=False):
            row.update(_cells(str(column), value, table))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*map(str, table.columns), *(k for r in rows for k in r)])))


def table_keys(run: RunRecords) -> list[str]:
    """The history keys under which the run logged a ``wandb.Table``, in first-logged order."""
    values = _last_values(run, first=True)
    return [k for k, v in values.items() if isinstance(v, dict) and v.get("_type") == "table-file"]


def _last_values(run: RunRecords, first: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for row in run.history:
        for key, value in row.items():
            if not first or key not in found:
                found[key] = value
    return found


def _foreign_tables(table: LoggedTable) -> dict[str, str]:
    """``{column: client id of the table it indexes}`` for the table's foreign-index columns."""
    types = table.data.get("column_types", {}).get("params", {}).get("type_map", {})
    found: dict[str, str] = {}
    for column, spec in types.items():
        if spec.get("wb_type") != "foreignIndex":
            continue
        path = spec.get("params", {}).get("table", "")
        try:
            ref = table.entry(path).ref or ""
        except KeyError:
            continue
        if ref.startswith("wandb-client-artifact://"):
            found[column] = ref[len("wandb-client-artifact://") :].split("/", 1)[0].split(":", 1)[0]
    return found


_CLIENT = "wandb-client-artifact://"


def _client_id(value: Any) -> str:
    path = value.get("artifact_path", "") if isinstance(value, dict) else ""
    return path[len(_CLIENT) :].split("/", 1)[0] if path.startswith(_CLIENT) else ""


def samples_frame(run: RunRecords, key: str = "predictions", x_axis: str = "trainer/global_step") -> Any:
    """The prediction samples of every logged epoch, joined with their inputs: one row per (step, sample).

    ``LogPredictionSamples`` logs the samples' inputs once (``<key>/inputs``: id, image / text /
    input, ground truth) and, at every validation, a table of predictions (``<key>/table``) whose
    ``sample`` column is an index into the inputs table. This resolves that index for you.

    Args:
        run: the run's records (:func:`lw_callbacks.records.read_run`, or ``read_resumed``).
        key: the callback's ``key`` (``"predictions"``; ``"predictions_test"`` for the test stage).
        x_axis: the history key giving each table's step.

    Returns:
        A DataFrame with the columns ``step``, ``id``, the input (an image's file path, or the value),
        ``ground truth``, ``prediction`` and the rest of the predictions table (scores, errors),
        in log order.

    Raises:
        ImportError: pandas is not installed (``pip install "lw-callbacks[pandas]"``).
        KeyError: the run logged no predictions table under ``key``.

    Example::

        frame = samples_frame(read_run("runs/wandb/offline-run-20260101_120000-abc123"))
        frame.pivot(index="id", columns="step", values="prediction")  # how each sample's prediction evolved
    """
    pd = require_pandas("samples_frame")
    tables = run.tables(f"{key}/table")
    if not tables:
        raise KeyError(f"no table logged under {key + '/table'!r}; the table keys are {table_keys(run)}")
    inputs = {t.client_id: t for t in run.tables(f"{key}/inputs")}
    steps: dict[str, Any] = {}
    ordered: list[Any] = []
    for logged in run.history:
        value = logged.get(f"{key}/table")
        if value is not None:
            steps[_client_id(value)] = logged.get(x_axis)
            ordered.append(logged.get(x_axis))
    out: list[dict[str, Any]] = []
    from_inputs: dict[str, None] = {}
    for position, table in enumerate(tables):
        step = steps.get(table.client_id, ordered[position] if position < len(ordered) else None)
        foreign = _foreign_tables(table)
        for cells in table.data.get("data", []):
            row: dict[str, Any] = {"step": step}
            joined: dict[str, Any] = {}
            for column, cell in zip(table.columns, cells, strict=False):
                source = inputs.get(foreign.get(column, ""))
                if source is not None and isinstance(cell, int) and 0 <= cell < len(source.data.get("data", [])):
                    for inner, value in zip(source.columns, source.data["data"][cell], strict=False):
                        joined.update(_cells(str(inner), value, source))
                    continue
                row.update(_cells(str(column), cell, table))
            for inner, value in joined.items():  # the input's columns after id; the table's own win
                if inner not in row:
                    row[inner] = value
                    from_inputs[inner] = None
            out.append(row)
    frame = pd.DataFrame(out)
    first = [c for c in ("step", "id") if c in frame.columns]
    rest = [c for c in frame.columns if c not in first]
    inputs_cols = [c for c in rest if c in from_inputs]
    return frame[first + inputs_cols + [c for c in rest if c not in inputs_cols]]


def _state(run: RunRecords) -> str:
    if run.exit_code is not None:
        return "finished" if run.exit_code == 0 else "failed"
    try:
        recent = time.time() - run.path.stat().st_mtime < 60
    except OSError:
        recent = False
    return "running" if recent else "crashed"


def runs_frame(root: str | Path, timeout: float = 0.0) -> Any:
    """Every run under ``root``, one row each, as W&B's runs table shows them.

    A run resumed offline (several folders of one run id) is one row, its segments merged.

    Args:
        root: a folder holding runs (``wandb/``, or a folder above it).
        timeout: seconds to wait for a run's ``exit`` record (0: read what is written).

    Returns:
        A DataFrame with the columns ``id``, ``name``, ``project``, ``state`` (``finished``,
        ``failed``; without an ``exit`` record, ``running`` when its log changed in the last minute,
        else ``crashed``), ``created_at``, ``path`` (the newest segment's folder), ``segments``, then
        the config flattened as ``config.<key>`` (nested keys joined with ".") and the summary as
        ``summary.<key>`` (media as file paths; a resumed run's summary is the merged one, its
        ``summary._step`` as the newest segment recorded it).

    Raises:
        ImportError: pandas is not installed (``pip install "lw-callbacks[pandas]"``).
        FileNotFoundError: no run under ``root``.
    """
    pd = require_pandas("runs_frame")
    from lw_callbacks.records.run import find_runs, read_segments, run_id_of

    folders = find_runs(root)
    if not folders:
        raise FileNotFoundError(f"no run-<id>.wandb under {root}")
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        groups.setdefault(run_id_of(folder), []).append(folder)
    rows: list[dict[str, Any]] = []
    for run_id, segments in groups.items():
        run = read_segments(segments, timeout=timeout, keep_history=False)
        row: dict[str, Any] = {
            "id": run.run_id or run_id,
            "name": run.display_name,
            "project": run.project,
            "state": _state(run),
            "created_at": pd.Timestamp(run.started_at, unit="s", tz="UTC") if run.started_at else None,
            "path": str(run.run_dir),
            "segments": len(run.segments),
        }
        _flatten("config", run.config, row, None)
        _flatten("summary", {k: v for k, v in run.summary.items() if k != "_wandb"}, row, run.run_dir)
        rows.append(row)
    return pd.DataFrame(rows)
