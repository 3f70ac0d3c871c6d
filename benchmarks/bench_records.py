"""Decode a long offline run into a DataFrame: seconds and peak memory against the frame's own size.

    python benchmarks/bench_records.py                 # 1,000,000 history rows of 10 keys
    python benchmarks/bench_records.py --rows 100000 --json results/records.json

A synthetic run log is written in W&B's own format (header, 32 KiB blocks of checksummed chunks,
``Record`` protobufs): a run record, ``--rows`` history rows of 10 logged keys (``trainer/global_step``,
``epoch``, eight floats) plus W&B's ``_step``, ``_runtime`` and ``_timestamp``, and an exit record.
Each arm then runs in a fresh Python process, one after the other:

- ``columns``: ``read_run(log, keep_history=False).history_frame()``, the package's path: the
  history decoded straight into typed columns;
- ``rows``: ``pandas.DataFrame.from_records(read_run(log).history)``, the rows kept as dicts first,
  as W&B's ``history(pandas=True)`` builds its frame (for comparison; ``--no-rows`` skips it).

For each arm: the seconds to read the log and to build the frame (wall) and the CPU seconds of both,
the process's peak RSS (and its RSS before decoding, after the imports), and the frame's
``memory_usage(deep=True)``.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(payload: bytes, pos: int) -> Iterator[bytes]:
    """The bytes that put ``payload`` into the log at offset ``pos``: padding and chunks."""
    first = True
    while True:
        left = BLOCK - pos % BLOCK
        if left < 7:
            yield b"\0" * left
            pos += left
            continue
        piece, payload = payload[: left - 7], payload[left - 7 :]
        kind = (FULL if not payload else FIRST) if first else (LAST if not payload else MIDDLE)
        crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
        out = struct.pack("<IHB", crc, len(piece), kind) + piece
        yield out
        pos += len(out)
        first = False
        if not payload:
            return


def write_log(path: Path, rows: int) -> None:
    """A finished run of ``rows`` history rows, in W&B's transaction log format."""
    from wandb.proto import wandb_internal_pb2 as pb

    rng = random.Random(0)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
        pos = 7

        def put(record: object) -> None:
            nonlocal pos
            for piece in _chunks(record.SerializeToString(), pos):  # type: ignore[attr-defined]
                fh.write(piece)
                pos += len(piece)

        run = pb.Record()
        run.run.run_id, run.run.project = "bench1m", "bench"
        put(run)
        keys = [f"metric_{k}" for k in range(8)]
        for i in range(rows):
            record = pb.Record()
            items = record.history.item
            values = {"trainer/global_step": i, "epoch": i // 1000}
            values.update({k: rng.random() for k in keys})
            values.update({"_step": i, "_runtime": i * 0.01, "_timestamp": 1.7e9 + i * 0.01})
            for key, value in values.items():
                item = items.add()
                item.key, item.value_json = key, json.dumps(value)
            record.history.step.num = i
            put(record)
        done = pb.Record()
        done.exit.exit_code = 0
        put(done)


ARM = r"""
import json, resource, sys, time
import pandas as pd
from lw_callbacks.records import read_run
import wandb.proto.wandb_internal_pb2

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def current_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

log, arm = sys.argv[1], sys.argv[2]
before = current_mb()
c0 = time.process_time()
t0 = time.perf_counter()
if arm == "columns":
    run = read_run(log, keep_history=False)
    t1 = time.perf_counter()
    frame = run.history_frame()
else:
    run = read_run(log)
    t1 = time.perf_counter()
    frame = pd.DataFrame.from_records(run.history).set_index("trainer/global_step")
t2 = time.perf_counter()
print(json.dumps({"arm": arm, "read_s": t1 - t0, "frame_s": t2 - t1, "total_s": t2 - t0,
                  "cpu_s": time.process_time() - c0,
                  "rss_before_mb": before, "peak_rss_mb": rss_mb(),
                  "frame_mb": frame.memory_usage(deep=True).sum() / 2**20, "shape": list(frame.shape)}))
"""


def run_arm(log: Path, arm: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", ARM, str(log), arm], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-rows", action="store_true", help="skip the rows-first arm")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run-bench1m.wandb"
        write_log(log, args.rows)
        size_mb = log.stat().st_size / 2**20
        print(f"log: {args.rows:,} rows, {size_mb:.0f} MiB")
        results = [run_arm(log, "columns")] + ([] if args.no_rows else [run_arm(log, "rows")])
    for r in results:
        frame = float(r["frame_mb"])  # type: ignore[arg-type]
        peak, before = float(r["peak_rss_mb"]), float(r["rss_before_mb"])  # type: ignore[arg-type]
        print(
            f"{r['arm']:<8} read {r['read_s']:6.1f} s + frame {r['frame_s']:6.1f} s = {r['total_s']:6.1f} s "
            f"({r['cpu_s']:.1f} CPU s); "
            f"frame {frame:6.0f} MiB {tuple(r['shape'])}; peak RSS {peak:6.0f} MiB = {peak / frame:.2f}x the frame "  # type: ignore[arg-type]
            f"(RSS after the imports {before:.0f} MiB; peak - that = {(peak - before) / frame:.2f}x)"
        )
    if len(results) == 2:
        cols, rows = results
        print(f"columns / rows: CPU time {float(cols['cpu_s']) / float(rows['cpu_s']):.2f}, "  # type: ignore[arg-type]
              f"peak RSS {float(cols['peak_rss_mb']) / float(rows['peak_rss_mb']):.2f}")  # type: ignore[arg-type]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": args.rows, "log_mib": size_mb, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
