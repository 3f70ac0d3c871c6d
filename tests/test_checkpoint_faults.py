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

from lw_callbacks import _uploader
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
    try:  # whatever the job left running (W&B's service after SIGTERM / SIGINT ends by itself)
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    if resume or fault == "none":
        assert proc.returncode == 0, out
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
    # fault, at (occurrence), expected status of the first process
    ("a", 3, -signal.SIGKILL),  # after ModelCheckpoint wrote the 3rd file and last.ckpt, before the hand-over
    ("b", 2, -signal.SIGKILL),  # handed over, before log_artifact
    ("c", 2, -signal.SIGKILL),  # right after log_artifact returned: the record is not on disk yet
    ("d", 0, -signal.SIGKILL),  # during the end-of-fit flush
    ("term", 2, None),
    ("int", 2, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "at", "status"), CASES, ids=[c[0] for c in CASES])
def test_killed_fit_resumed_loses_nothing(tmp_path: Path, fault: str, at: int, status: int | None) -> None:
    run_id = f"fault{fault}"
    code = run_fit(tmp_path, run_id, fault, at)
    if status is not None:
        assert code == status
    at_kill = on_disk(tmp_path / "ckpts")
    assert at_kill
    run_fit(tmp_path, run_id, "none", 0, resume=True)
    records = check_nothing_lost(tmp_path, run_id, at_kill)
    assert len(records.segments) == 2
    if status is not None:
        assert records.cut_segments and records.cut_segments[0] == records.segments[0]


@pytest.mark.slow
def test_killed_fit_with_300_mb_checkpoints_resumed_loses_nothing(tmp_path: Path) -> None:
    run_id = "faultbig"
    code = run_fit(tmp_path, run_id, "c", 1, "--epochs", "2", "--pad-mb", "300")
    assert code == -signal.SIGKILL
    at_kill = on_disk(tmp_path / "ckpts")
    assert at_kill and min(p.stat().st_size for p in (tmp_path / "ckpts").glob("*.ckpt")) > 300 * 2**20
    run_fit(tmp_path, run_id, "none", 0, "--epochs", "2", "--pad-mb", "300", resume=True)
    check_nothing_lost(tmp_path, run_id, at_kill)
