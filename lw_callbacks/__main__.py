"""``python -m lw_callbacks inspect RUN_DIR``: what a run recorded, read from its own log.

Checks an offline run before ``wandb sync`` (on an air-gapped cluster, say): history keys with
their step range, summary, metric definitions, artifact versions with aliases, and files. A folder
holding several segments of one resumed run is shown as one run, merged as ``wandb sync`` will; a
segment whose process was killed is read up to where its log was cut, and named; a damaged block of a
log is skipped, its byte range shown, and the rest read.

``python -m lw_callbacks export RUN_DIR --to csv|parquet --out DIR``: the history, every logged table
and the runs table of the runs under RUN_DIR as files (needs the ``pandas`` extra; parquet needs
``pyarrow``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lw_callbacks.records import (
    IncompleteRunError,
    find_runs,
    read_run,
    read_segments,
    run_id_of,
    summarize,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lw_callbacks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print what a run recorded")
    inspect.add_argument("path", help="a run folder, its run-<id>.wandb file, or a folder holding runs")
    inspect.add_argument("--json", action="store_true", help="print the summary, metrics and artifacts as JSON")
    inspect.add_argument(
        "--partial", action="store_true", help="do not wait for the exit record of a run that is still running"
    )
    exporter = sub.add_parser("export", help="write the history, tables and runs table as CSV or parquet files")
    exporter.add_argument("path", help="a run folder, or a folder holding runs")
    exporter.add_argument("--to", choices=("csv", "parquet"), default="csv", help="the file format (default csv)")
    exporter.add_argument("--out", required=True, help="the folder to write into (created)")
    args = parser.parse_args(argv)
    if args.command == "export":
        from lw_callbacks.records.export import export

        try:
            for written in export(Path(args.path), Path(args.out), args.to):
                print(written)
        except (FileNotFoundError, ValueError, ImportError, IncompleteRunError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0

    path = Path(args.path)
    runs = find_runs(path) if path.is_dir() else []
    groups: dict[str, list[Path]] = {}
    for run_dir in runs:
        groups.setdefault(run_id_of(run_dir), []).append(run_dir)
    status = 0
    targets: list[list[Path]] = list(groups.values()) if len(runs) > 1 else [[path]]
    for segments in targets:
        try:
            if len(segments) > 1:
                run = read_segments(segments, timeout=0 if args.partial else 2.0)
            else:
                run = read_run(segments[0], timeout=0 if args.partial else 2.0, require_exit=False)
        except (FileNotFoundError, ValueError, IncompleteRunError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        if not run.run_id and not run.history and not run.artifact_log:
            print(
                f"error: {run.path} holds no records: the run's process ended (or was killed) before W&B wrote "
                "its first records to disk (an offline run writes its log every 15 s). Nothing to inspect.",
                file=sys.stderr,
            )
            status = 1
            continue
        if args.json:
            print(json.dumps(summarize(run), default=str))
        else:
            print(summarize(run, text=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
