"""``python -m lw_callbacks inspect RUN_DIR``: what a run recorded, read from its own log.

Checks an offline run before ``wandb sync`` (on an air-gapped cluster, say): history keys with
their step range, summary, metric definitions, artifact versions with aliases, and files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lw_callbacks.records import IncompleteRunError, find_runs, read_run, summarize


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lw_callbacks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print what a run recorded")
    inspect.add_argument("path", help="a run folder, its run-<id>.wandb file, or a folder holding runs")
    inspect.add_argument("--json", action="store_true", help="print the summary, metrics and artifacts as JSON")
    inspect.add_argument("--partial", action="store_true", help="read a run that is still running")
    args = parser.parse_args(argv)

    runs = find_runs(args.path)
    targets = [args.path] if len(runs) <= 1 else runs
    status = 0
    for target in targets:
        try:
            run = read_run(target, timeout=2.0, require_exit=not args.partial)
        except (FileNotFoundError, ValueError, IncompleteRunError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(summarize(run), default=str))
        else:
            print(summarize(run, text=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
