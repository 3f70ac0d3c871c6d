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
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, SCRIPTS

from lw_callbacks.core import jobs as _jobs
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
    assert not list((root / "ckpts").glob(f"{_jobs.STAGING_FOLDER}/{run_id}/*/*"))  # nothing left staged
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


# ---------------------------------------------------------------------- fault edges
# Each row is real training processes of one run (killed, then resumed with the same id where the row
# says so), with a witness recording the md5 of every file ModelCheckpoint wrote. Read back from the
# run's records: every witnessed file is a version, or is named in a warning; no version holds a file
# the run did not save; no partial file is left, ours (staging) or W&B's (its data folder).


def start_fit(root: Path, run_id: str, fault: str, at: int, *extra: str, ckpts: Path | None = None,
              resume: bool = False, tag: str = "") -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env["LW_REPORT_DIR"] = str(root / f"report-{tag}{'-resume' if resume else ''}")
    env["LW_WITNESS"] = str(root / f"witness{tag}.jsonl")
    env["WANDB_DATA_DIR"] = str(root / "wandb-data")
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(SCRIPTS / "checkpoint_faults.py"), str(root / "runs"), str(ckpts or root / "ckpts"),
           run_id, fault, str(at), *extra, *(["--tag", tag] if tag else []), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str], clean: bool, limit: float = 300) -> int:
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish in {limit} s\n{out[-3000:]}") from None
    if clean:
        assert proc.returncode == 0, out[-4000:]
    return proc.returncode


def witness_rows(root: Path, tag: str = "") -> list[dict[str, Any]]:
    journal = root / f"witness{tag}.jsonl"
    return [json.loads(line) for line in (journal.read_text().splitlines() if journal.exists() else [])]


def witnessed(root: Path, tag: str = "") -> dict[str, str]:
    """md5 -> file name of every file ModelCheckpoint wrote in the row's processes (of ``tag``)."""
    return {row["md5"]: row["file"] for row in witness_rows(root, tag)}


def same_weights_uploaded(root: Path, tag: str, held: set[str]) -> set[str]:
    """md5s of ``last.ckpt`` copies saved at the step of a top-k file of the same process that is uploaded:
    the same weights, skipped by design (see UploadCheckpoints)."""
    rows = witness_rows(root, tag)
    uploaded_steps = {(r["pid"], r["step"]) for r in rows if not r.get("last") and r["md5"] in held}
    return {r["md5"] for r in rows if r.get("last") and (r["pid"], r["step"]) in uploaded_steps}


def warned(root: Path, tag: str = "") -> list[str]:
    out = []
    for path in root.glob(f"report-{tag}*/warnings.txt"):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def check_row(root: Path, run_id: str, tag: str = "", staging: Path | None = None, ckpts: Path | None = None) -> Any:
    """The row's invariants, read back from the merged records of the run's segments."""
    records = read_resumed(root / "runs", run_id)
    held = {e.digest for name in records.artifact_names(type="model") for v in records.artifacts(name)
            for e in v.entries}
    saved = witnessed(root, tag)
    assert saved, "the witness recorded no file"
    messages = warned(root, tag)
    covered = held | same_weights_uploaded(root, tag, held)
    missing = {d: f for d, f in saved.items() if d not in covered and not any(f in m for m in messages)}
    assert not missing, f"saved, not uploaded and not named in a warning: {missing}\n{messages}"
    assert held <= set(saved), f"versions of files this run did not save: {held - set(saved)}"
    for name in records.artifact_names(type="model"):  # one version per content (a re-log of it is that version)
        digests = [e.digest for v in records.artifacts(name) for e in v.entries]
        assert len(digests) == len(set(digests)), digests
    for folder in [root, *(p for p in (staging, ckpts) if p is not None)]:
        assert not [p for p in folder.rglob("*.partial")], "a partial staging copy was left"
        assert not [p for p in folder.rglob(f"{_jobs.STAGING_FOLDER}/{run_id}/*/*") if p.is_file()], \
            "staged files or claims of the run were left"
    if staging is not None:
        assert not [p for p in staging.rglob("*") if p.is_file()], "staged files were left"
    wandb_staging = root / "wandb-data" / "artifacts" / "staging"  # shared by the row's runs
    every = {row["md5"] for journal in root.glob("witness*.jsonl") for row in map(json.loads, journal.open())}
    for path in [p for p in wandb_staging.iterdir() if p.is_file()] if wandb_staging.is_dir() else []:
        assert md5(path) in every, f"W&B's staging folder holds a partial copy: {path}"
    return records


@pytest.fixture
def shm_folder() -> Iterator[Path]:
    """A folder on tmpfs (another filesystem than the test's temporary folder)."""
    import shutil
    import uuid

    root = Path("/dev/shm")
    if not root.is_dir() or not os.access(root, os.W_OK):
        pytest.skip("no writable /dev/shm")
    folder = root / f"lw-faults-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def other_filesystem(folder: Path, tmp: Path) -> None:
    if os.stat(folder).st_dev == os.stat(tmp).st_dev:
        pytest.skip(f"{folder} is on the same filesystem as {tmp} here")


def kill_then_resume(root: Path, run_id: str, at: int, *extra: str, ckpts: Path | None = None) -> None:
    code = finish(start_fit(root, run_id, "rot", at, *extra, ckpts=ckpts), clean=False)
    assert code == -signal.SIGKILL, "the process was not killed after a rotation (none happened?)"
    finish(start_fit(root, run_id, "none", 0, *extra, ckpts=ckpts, resume=True), clean=True)


@pytest.mark.slow
def test_copy_staging_with_a_slow_worker_killed_after_rotation(tmp_path: Path, shm_folder: Path) -> None:
    """(1) Staging on another filesystem (copies), a worker copying at 40 MB/s, SIGKILL right after
    ModelCheckpoint's rotation deleted a file that was handed over and not copied yet."""
    other_filesystem(shm_folder, tmp_path)
    staging = shm_folder / "staging"
    kill_then_resume(tmp_path, "copykill", 1, "--staging", str(staging), "--inject", "slowcopy", "--pad-mb", "24",
                     "--epochs", "5")
    check_row(tmp_path, "copykill", staging=staging)


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["full", "eacces"])
def test_staging_impossible_killed_after_rotation(tmp_path: Path, shm_folder: Path, condition: str) -> None:
    """(2) The staging disk full (ENOSPC), or the staging root no longer writable (EACCES), for links,
    copies and claims alike; SIGKILL right after a rotation. Claims go to the run's W&B folder, and the
    rotated file waits in its folder until W&B holds it."""
    staging = shm_folder / "staging"
    run_id = f"{condition}kill"
    kill_then_resume(tmp_path, run_id, 1, "--staging", str(staging), "--inject", condition, "--epochs", "5")
    check_row(tmp_path, run_id, staging=staging)
    messages = warned(tmp_path)
    assert any(("EACCES" if condition == "eacces" else "disk full") in m for m in messages), messages


@pytest.mark.slow
def test_eacces_on_the_collection_folder_uploads_every_checkpoint(tmp_path: Path) -> None:
    """(3) A clean fit whose collection staging folder cannot be written (EACCES): every checkpoint is
    uploaded from its original, and no warning claims a staged copy that does not exist."""
    finish(start_fit(tmp_path, "eaccescoll", "none", 0, "--inject", "eacces-collection", "--epochs", "6"), clean=True)
    records = check_row(tmp_path, "eaccescoll")
    (name,) = records.artifact_names(type="model")
    saved = witnessed(tmp_path)
    assert {e.digest for v in records.artifacts(name) for e in v.entries} == set(saved)  # all, none named
    messages = warned(tmp_path)
    assert sum("EACCES" in m for m in messages) == 1, messages
    assert not any("staged copy kept" in m for m in messages)


@pytest.mark.slow
def test_in_place_rewrites_across_filesystems_keep_every_version(tmp_path: Path, shm_folder: Path) -> None:
    """(4) One file name saved every 2 steps into a folder on tmpfs while $TMPDIR is on disk: Lightning's
    save copies onto the same inode. With hashing at 40 MB/s, each saved content is uploaded (copied on
    the training thread) or named in a warning."""
    other_filesystem(shm_folder, Path(tempfile.gettempdir()))
    ckpts = shm_folder / "ckpts"
    finish(start_fit(tmp_path, "inplace", "none", 0, "--fixed", "--inject", "slowhash", "--pad-mb", "16",
                     "--epochs", "3", ckpts=ckpts), clean=True)
    check_row(tmp_path, "inplace", ckpts=ckpts)
    saved = witnessed(tmp_path)
    assert len(saved) >= 6  # six saves of model.ckpt, and last.ckpt's


@pytest.mark.slow
def test_two_runs_in_one_folder_log_only_their_own_files(tmp_path: Path) -> None:
    """(5) Two processes (two runs) write checkpoints into one folder; run B is killed and resumed while
    run A still writes there. Each run's records hold only its own files, and all of them."""
    stop = tmp_path / "stop-A"
    a = start_fit(tmp_path, "sharedA", "none", 0, "--epochs", "200", "--epoch-sleep", "1", "--until", str(stop),
                  tag="A")
    try:
        code = finish(start_fit(tmp_path, "sharedB", "rot", 1, "--epochs", "5", tag="B"), clean=False)
        assert code == -signal.SIGKILL
        assert a.poll() is None, "run A ended before run B was resumed"
        finish(start_fit(tmp_path, "sharedB", "none", 0, "--epochs", "5", tag="B", resume=True), clean=True)
        assert a.poll() is None, "run A ended before run B's resumed fit did"
    finally:
        stop.touch()
        finish(a, clean=True)
    assert len(witnessed(tmp_path, "A")) >= 3
    for tag in "AB":
        records = check_row(tmp_path, f"shared{tag}", tag=tag)
        for name in records.artifact_names(type="model"):
            for alias in ("latest", "best"):
                version = next(v for v in records.artifacts(name) if alias in v.aliases)
                assert version.entries[0].digest in witnessed(tmp_path, tag)


@pytest.mark.slow
def test_wandb_data_folder_full_leaves_no_partial_copy(tmp_path: Path) -> None:
    """(6) W&B's data folder is full for its first three staged copies (each fails half-way): none of
    them stays behind, and every checkpoint is uploaded on a retry."""
    finish(start_fit(tmp_path, "wandbfull", "none", 0, "--inject", "wandb-full", "--epochs", "4"), clean=True)
    records = check_row(tmp_path, "wandbfull")
    (name,) = records.artifact_names(type="model")
    assert {e.digest for v in records.artifacts(name) for e in v.entries} == set(witnessed(tmp_path))
    assert any("could not make W&B's staged copy" in m for m in warned(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_damaged_first_segment_costs_only_itself(tmp_path: Path, fault: str) -> None:
    """(7) A fit of 3 epochs, resumed for 3 more (two segments: a killed segment's log holds almost
    nothing, its records are written every 15 s); then 64 bytes in the middle of the first segment's log
    are corrupted, or the log is cut there. Read back: the damage is reported, every version recorded in
    the intact second segment is there with its bytes, no version holds a file the run did not save, and
    ``latest`` restores; ``inspect`` shows the damage and the rest of the run."""
    from lw_callbacks import restore_checkpoint
    from lw_callbacks.records import read_run

    finish(start_fit(tmp_path, "damaged", "none", 0, "--epochs", "3"), clean=True)
    finish(start_fit(tmp_path, "damaged", "none", 0, "--epochs", "6", resume=True), clean=True)
    intact = check_row(tmp_path, "damaged")  # the row's invariants hold before the damage
    first, second = segments_of(tmp_path / "runs", "damaged")
    (name,) = intact.artifact_names(type="model")
    later = {e.digest for v in read_run(second, timeout=0).artifacts(name, type="model") for e in v.entries}
    assert later, "the resumed fit logged no version"
    latest = next(v for v in intact.artifacts(name) if "latest" in v.aliases).entries[0].digest

    (log,) = first.glob("run-*.wandb")
    data = bytearray(log.read_bytes())
    bad = len(data) // 2
    if fault == "corrupt":
        data[bad : bad + 64] = bytes(b ^ 0x5A for b in data[bad : bad + 64])
    else:
        data = data[:bad]
    log.write_bytes(bytes(data))

    merged = read_resumed(tmp_path / "runs", "damaged", timeout=0)
    if fault == "corrupt":
        assert [(d[0], d[1] <= bad) for d in merged.damaged] == [(log, True)]
    else:
        assert first in merged.cut_segments
    held = {e.digest for v in merged.artifacts(name) for e in v.entries}
    assert later <= held, f"versions of the intact segment lost: {later - held}"
    assert held <= set(witnessed(tmp_path)), "a version holds a file this run did not save"
    for v in merged.artifacts(name):
        for entry in v.entries:
            if entry.digest in later:
                assert md5(Path(entry.local_path)) == entry.digest
    restored = restore_checkpoint(f"{name}:latest", run_dir=tmp_path / "runs", root=tmp_path / "out", timeout=5)
    assert md5(restored) == latest
    out = subprocess.run([sys.executable, "-m", "lw_callbacks", "inspect", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{name}:v" in out.stdout
    assert ("damaged (1 ranges skipped" in out.stdout) if fault == "corrupt" else ("[cut" in out.stdout)


def test_a_checkpoint_cut_by_a_kill_is_told_from_a_whole_one(tmp_path: Path) -> None:
    """A resumed fit hands over the files its killed predecessor claimed while saving; one whose write the
    kill cut short (a zip, torch.save's format, without the record a whole one ends with) is refused with
    a warning instead of uploaded. A whole checkpoint, another format or a folder is not refused."""
    import torch

    from lw_callbacks.core.files import cut_zip

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "global_step": 3}, whole)
    data = whole.read_bytes()
    for at in (10, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut-{at}.ckpt"
        cut.write_bytes(data[:at])
        assert cut_zip(str(cut)), at
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert not cut_zip(str(whole)) and not cut_zip(str(other)) and not cut_zip(str(tmp_path))
    assert not cut_zip(str(tmp_path / "missing.ckpt"))


def test_unusable_staging_dir_is_refused_at_setup(wandb_env: Path) -> None:
    """Staging that cannot work is found at setup, before training: a staging root that cannot be
    created or written raises ConfigurationError naming `staging_dir`."""
    from harness import make_trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lw_callbacks import ConfigurationError
    from lw_callbacks.checkpoints import UploadCheckpoints
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    blocker = wandb_env / "a-file"
    blocker.write_text("not a folder")
    for bad in (str(blocker / "staging"), "/proc/lw-staging"):
        upload = UploadCheckpoints(staging_dir=bad)
        trainer = make_trainer([upload, ModelCheckpoint(dirpath="ckpts")], max_epochs=1)
        with pytest.raises(ConfigurationError, match=r"staging_dir=.*cannot stage checkpoints there") as err:
            trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
        assert bad in str(err.value)
        assert not list(Path("ckpts").glob("*.ckpt"))  # refused before training


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_random_kills_lose_nothing(tmp_path: Path) -> None:
    """At least 20 SIGKILLs of the whole process group at random moments (0.3 s to 4 s into each fit,
    one in five inside the resumed fit's comparison with the records), each followed by a resume of the
    same run, then a fit to the end: 0 lost, 0 duplicated, 0 corrupt. Staging is on another filesystem
    (copies) where /dev/shm allows it."""
    import uuid

    extra: list[str] = ["--monitor", "step"]  # a save and a top-k rotation every epoch
    shm = Path("/dev/shm")
    staging = shm / f"lw-loop-{uuid.uuid4().hex[:8]}"
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        extra += ["--staging", str(staging)]
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    env["WANDB_DATA_DIR"] = str(tmp_path / "wandb-data")
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(REPO), env.get("PYTHONPATH", "")])
    try:
        proc = subprocess.run([sys.executable, str(SCRIPTS / "kill_loop.py"), str(tmp_path), "loop", "22", "7", *extra],
                              env=env, capture_output=True, text=True, timeout=560, start_new_session=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        loop = json.loads((tmp_path / "loop.json").read_text())
        assert loop["last_exit"] == 0
        kills = [k for k in loop["kills"] if k["killed"]]
        assert len(kills) >= 20 and any(k["in_resume"] for k in kills), loop["kills"]
        records = read_resumed(tmp_path / "runs", "loop")
        (name,) = records.artifact_names(type="model")
        versions = records.artifacts(name)
        held = {e.digest for v in versions for e in v.entries}
        saved = witnessed(tmp_path)
        lost = {d: f for d, f in saved.items() if d not in held | same_weights_uploaded(tmp_path, "", held)}
        assert not lost, f"lost {len(lost)} of {len(saved)}: {lost}"
        digests = [e.digest for v in versions for e in v.entries]
        assert len(digests) == len(set(digests)), "duplicated"
        import torch

        # A kill between a save's end and the witness's line leaves a file the witness never saw: such a
        # version must be a save that began (the witness's first line names it) and a whole checkpoint of that step.
        begun = [json.loads(line) for line in (tmp_path / "begun-witness.jsonl").read_text().splitlines()]
        for v in versions:
            for e in v.entries:
                if e.digest not in saved:
                    ckpt = torch.load(e.local_path, map_location="cpu", weights_only=False)  # a cut file fails here
                    assert any(b["file"] == v.metadata["original_filename"] and b["step"] == ckpt["global_step"]
                               for b in begun), f"a version holds a file the run did not save: v{v.version}"
        for v in versions:  # corrupt: the file W&B will upload is whole and has the recorded digest
            for e in v.entries:
                assert e.local_path and md5(Path(e.local_path)) == e.digest, f"corrupt: v{v.version}"
        assert len(saved) >= 8, f"the loop saved only {len(saved)} checkpoints"
        assert not list((tmp_path / "ckpts").rglob("*.partial"))
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
