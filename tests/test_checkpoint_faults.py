"""A crash loses no checkpoint: real training processes stopped by real signals at every point of a
checkpoint's way to W&B, then resumed (same run id, ``ckpt_path="last"``) to the end.

For each case, read back from the merged records of the run's segments:

- every checkpoint file that was on disk when the process died (by md5) is a version of the collection,
- no (collection, digest) pair was logged twice (no double upload),
- every manifest digest equals the md5 of the staged file W&B will upload.

With the code before the staged files were kept until durable and every start reconciled, cases
``a``, ``b`` and ``c`` lost checkpoints (``a``: skipped as "saved before the resumed fit"; ``b`` and
``c``: the ledger in ``last.ckpt`` said "uploaded" while the record never reached the log on disk).
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, SCRIPTS

from lw_callbacks.core import uploader as _uploader
from lw_callbacks.records import iter_records, read_resumed, segments_of


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 2**20):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


def on_disk(folder: Path) -> dict[str, str]:
    return {p.name: md5(p) for p in sorted(folder.glob("*.ckpt")) if p.is_file() and not p.is_symlink()}


def run_fit(root: Path, run_id: str, fault: str, at: int, *extra: str, resume: bool = False) -> int:
    """Run the training script in a session of its own; returns its exit status."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env["LW_REPORT_DIR"] = str(root / ("report-resume" if resume else "report"))
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(SCRIPTS / "checkpoint_faults.py"), str(root / "runs"), str(root / "ckpts"), run_id,
           fault, str(at), *extra, *(["--resume"] if resume else [])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{cmd} did not finish in 240 s\n{out}") from None
    if resume or fault == "none":
        assert proc.returncode == 0, out[-3000:]
    return proc.returncode


def artifact_pairs(root: Path, run_id: str) -> Counter[tuple[str, str]]:
    """(collection, file digest) of every artifact record in every segment, counted."""
    pairs: Counter[tuple[str, str]] = Counter()
    for segment in segments_of(root / "runs", run_id):
        for record in iter_records(next(segment.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "model":
                for entry in record.artifact.manifest.contents:
                    pairs[(record.artifact.name, entry.digest)] += 1
    return pairs


def check_nothing_lost(root: Path, run_id: str, at_kill: dict[str, str]) -> Any:
    records = read_resumed(root / "runs", run_id)
    name = f"model-{run_id}-val_acc"
    held = {e.digest for v in records.artifacts(name) for e in v.entries}
    missing = {f: d for f, d in at_kill.items() if d not in held}
    assert not missing, f"lost: {missing}; held {sorted(held)}"
    at_end = on_disk(root / "ckpts")
    assert set(at_end.values()) <= held
    pairs = artifact_pairs(root, run_id)
    assert pairs and max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]
    for version in records.artifacts(name):
        for entry in version.entries:
            assert entry.local_path and md5(Path(entry.local_path)) == entry.digest
    assert not list((root / "ckpts").glob(f"{_uploader.STAGING_FOLDER}/{run_id}/*/*"))  # nothing left staged
    return records


CASES = [
    # fault, at (occurrence), expected status of the first process, extra arguments
    ("a", 3, -signal.SIGKILL, ()),  # after ModelCheckpoint wrote the 3rd file and last.ckpt, before the hand-over
    ("b", 2, -signal.SIGKILL, ()),  # handed over, before log_artifact
    ("c", 2, -signal.SIGKILL, ()),  # right after log_artifact returned: the record is not on disk yet
    ("d", 0, -signal.SIGKILL, ()),  # during the end-of-fit flush
    ("term", 2, None, ()),
    ("int", 2, None, ()),
    ("c", 1, -signal.SIGKILL, ("--epochs", "2", "--pad-mb", "300")),  # 300 MB checkpoints
    ("async", 3, -signal.SIGKILL, ("--async-io", "--pad-mb", "40")),  # while AsyncCheckpointIO writes the 3rd
]
IDS = ["a", "b", "c", "d", "term", "int", "c-300MB", "async"]


def kill_and_resume(root: Path, case: tuple[str, int, int | None, tuple[str, ...]]) -> dict[str, Any]:
    fault, at, _status, extra = case
    root.mkdir(parents=True, exist_ok=True)
    run_id = f"fault{fault}{at}"
    code = run_fit(root, run_id, fault, at, *extra)
    at_kill = on_disk(root / "ckpts")
    sizes = [p.stat().st_size for p in (root / "ckpts").glob("*.ckpt") if not p.is_symlink()]
    run_fit(root, run_id, "none", 0, *extra, resume=True)
    return {"code": code, "at_kill": at_kill, "run_id": run_id, "sizes": sizes}


@pytest.fixture(scope="module")
def matrix(isolated_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every case, three at a time (each process spends much of its life waiting on imports and W&B)."""
    from concurrent.futures import ThreadPoolExecutor

    base = isolated_dir
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {i: pool.submit(kill_and_resume, base / i, c) for i, c in zip(IDS, CASES, strict=True)}
        return {i: (base / i, f.result()) for i, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("case", "case_id"), list(zip(CASES, IDS, strict=True)), ids=IDS)
def test_killed_fit_resumed_loses_nothing(
    matrix: dict[str, tuple[Path, dict[str, Any]]], case: tuple[str, int, int | None, tuple[str, ...]], case_id: str
) -> None:
    root, result = matrix[case_id]
    status = case[2]
    if status is not None:
        assert result["code"] == status
    assert result["at_kill"]
    if case_id == "c-300MB":
        assert min(result["sizes"]) > 300 * 2**20
    records = check_nothing_lost(root, result["run_id"], result["at_kill"])
    assert len(records.segments) == 2
    if status is not None:
        assert records.cut_segments and records.cut_segments[0] == records.segments[0]
