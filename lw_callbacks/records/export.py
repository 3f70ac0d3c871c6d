"""``python -m lw_callbacks export``: a run's records as CSV or parquet files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lw_callbacks.records.frames import require_pandas, runs_frame, table_keys
from lw_callbacks.records.run import STEP_KEY, find_runs, read_segments, run_id_of


def _plain(frame: Any) -> Any:
    """Lists and dicts (a list of image paths, a histogram) as JSON text: CSV and parquet hold neither."""
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return frame


def _write(frame: Any, path: Path, to: str, index: bool) -> Path:
    path = path.with_suffix(f".{to}")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = _plain(frame)
    if to == "csv":
        frame.to_csv(path, index=index)
    else:
        frame.to_parquet(path, index=index)
    return path


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def export(root: Path, out: Path, to: str = "csv") -> Iterator[Path]:
    """Write, for each run under ``root`` (a resumed run once, its segments merged),
    ``<out>/<run id>/history.<to>`` (indexed by ``trainer/global_step`` when the run logged it) and
    ``<out>/<run id>/tables/<key>-<n>.<to>`` for every logged table, then ``<out>/runs.<to>``;
    yield each path written.

    Raises:
        ImportError: pandas (or, for parquet, pyarrow) is not installed.
        FileNotFoundError: no run under ``root``.
        ValueError: ``to`` is neither ``csv`` nor ``parquet``.
    """
    if to not in ("csv", "parquet"):
        raise ValueError(f"export(to={to!r}): expected 'csv' or 'parquet'")
    require_pandas("export")
    if to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "export --to parquet needs pyarrow, which is not installed: pip install pyarrow (or use --to csv)"
            ) from err
    folders = find_runs(root) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no run-<id>.wandb under {root}")
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        groups.setdefault(run_id_of(folder), []).append(folder)
    for run_id, segments in groups.items():
        run = read_segments(segments, timeout=0)
        x_axis = STEP_KEY if any(STEP_KEY in row for row in run.history) else None
        yield _write(run.history_frame(x_axis=x_axis), out / run_id / "history", to, index=x_axis is not None)
        for key in table_keys(run):
            for n, _table in enumerate(run.tables(key)):
                yield _write(run.table_frame(key, n), out / run_id / "tables" / f"{_safe(key)}-{n}", to, index=False)
    yield _write(runs_frame(root), out / "runs", to, index=False)
