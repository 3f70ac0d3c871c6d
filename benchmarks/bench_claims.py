"""What the on-disk claim and the fallbacks cost the training thread, side by side in one process.

Run: ``python benchmarks/bench_claims.py [SIZE_MB] [ROUNDS]``. Prints, per hand-over of one checkpoint
of SIZE_MB (default 256):

- link: a hard link into the staging folder (the hand-over before claims were written);
- link + claim: the same, plus the claim (a note written, not synced): the hand-over today;
- link + synced claim: the same with the note synced to disk (what the worker writes after hashing);
- copy now: the copy the training thread makes of a file rewritten in place while the worker is busy;
- descriptor: the hand-over on another filesystem (an open descriptor; the worker copies);

and the time the upload worker needs for the same file (hash + W&B's staged copy), for scale.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lw_callbacks.core import files, jobs


def timed(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    root = Path(tempfile.mkdtemp(prefix="lwbench-claims-"))
    src = root / "epoch=0.ckpt"
    with open(src, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(2**20))
    staging = root / ".upload-staging"
    staging.mkdir()
    n = {"i": 0}

    def dst() -> str:
        n["i"] += 1
        return str(staging / f"{n['i']:06d}.ckpt")

    sig = files.signature(os.stat(src))

    def link() -> None:
        files.hand_over(str(src), dst())

    def link_claim(sync: bool = False) -> None:
        path = dst()
        files.hand_over(str(src), path)
        job = jobs.Job(0, "c", str(src), path, sig[2], sig, None, {}, [], run_id="r")
        jobs.write_note(job, sync=sync)

    def copy_now() -> None:
        files.reflink_or_copy(str(src), dst())

    def descriptor() -> None:
        os.close(files.open_source(str(src)))

    def worker() -> None:
        files.md5_b64(src)
        os.remove(files.copy_for_wandb(str(src)))

    results = {}
    for name, fn in [("link", link), ("link + claim", link_claim),
                     ("link + synced claim", lambda: link_claim(sync=True)), ("copy now", copy_now),
                     ("descriptor", descriptor), ("worker: hash + W&B copy", worker)]:
        results[name] = timed(fn, rounds)
        for path in staging.iterdir():
            path.unlink()
    base = statistics.median(results["link"])
    print(f"one {size_mb} MB checkpoint, median of {rounds} (min-max), ratio to a bare hard link")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"  {name:26s} {med * 1e3:9.2f} ms ({min(times) * 1e3:.2f}-{max(times) * 1e3:.2f})  x{med / base:,.1f}")
    for path in root.rglob("*"):
        if path.is_file():
            path.unlink()


if __name__ == "__main__":
    main()
