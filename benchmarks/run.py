"""Print the overhead table: ``python benchmarks/run.py [--rounds N] [--only NAME ...]``.

Runs every ``benchmarks/bench_*.py`` module's ``cases(rounds)`` and prints one markdown table of
B / A ratios (min / median / max), measured side by side in this one process.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="bench module names, e.g. bench_watch")
    args = parser.parse_args()
    import lightning
    import torch
    import wandb

    print(f"machine: {platform.machine()}, {platform.processor() or platform.system()}, "
          f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
          f"wandb {wandb.__version__}")
    print(harness.HEADER, flush=True)
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and path.stem not in args.only:
            continue
        importlib.import_module(path.stem).cases(args.rounds)


if __name__ == "__main__":
    main()
