"""The run-record reader agrees with wandb's own decoder and treats a half-written tail as "not yet"."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import WANDB_VERSION, isolated_wandb

from lw_callbacks.records import IncompleteRunError, find_runs, iter_records, read_run
from lw_callbacks.records._log import records_from
from lw_callbacks.records.run import RunReader

wandb_version = version("wandb")


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run with every record kind the package reads: metrics, summaries, media,
    a table, config, and two versions of an artifact whose ``best`` alias moves."""
    import wandb

    root = tmp_path_factory.mktemp("records")
    with isolated_wandb(root):
        run = wandb.init(project="lw-tests", dir=str(root), mode="offline", config={"lr": 0.1, "net": {"width": 8}})
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        run.define_metric("val_acc", summary="max,min", step_metric="trainer/global_step", step_sync=True)
        run.define_metric("val/*", summary="last", step_metric="trainer/global_step", hidden=True)
        for i, acc in enumerate([0.2, 0.7, 0.5]):
            run.log({"val_acc": acc, "val/loss": 1.0 / (i + 1), "trainer/global_step": 10 * i})
        table = wandb.Table(columns=["id", "image"], data=[[0, wandb.Image(np.zeros((8, 8)))]])
        run.log({"samples": [wandb.Image(np.ones((8, 8)), caption="one")], "tab": table, "trainer/global_step": 30})
        for i, score in enumerate([0.4, 0.9]):
            path = root / f"m{i}.ckpt"
            path.write_bytes(bytes([i]) * 1000)
            art = wandb.Artifact("model-x", type="model", metadata={"score": score})
            art.add_file(str(path), name="model.ckpt")
            run.log_artifact(art, aliases=["latest", "best", f"epoch-{i}"])
        run.config.update({"extra": "yes"})
        run.summary["note"] = {"best_step": 10}
        run.finish()
    (folder,) = find_runs(root)
    read_run(folder, timeout=60)  # finish() can return before the log's tail is on disk: wait for it
    return folder


def _leet(*args: str) -> str:
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(exe), "leet", "inspect", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wandb_datastore() -> Any:
    """wandb's own Python reader of the log (``wandb.sdk.internal.datastore``), where it still exists."""
    try:
        from wandb.sdk.internal import datastore
    except ImportError:
        return None
    return getattr(datastore, "DataStore", None)


def _wandb_records(log: Path) -> list[bytes] | None:
    """Each record of ``log`` (serialized) as wandb's own Python reader decodes it; ``None`` without one."""
    from wandb.proto import wandb_internal_pb2 as pb

    datastore = _wandb_datastore()
    if datastore is None:
        return None
    store = datastore()
    store.open_for_scan(str(log))
    theirs: list[bytes] = []
    try:
        while (data := store.scan_data()) is not None:
            record = pb.Record()
            record.ParseFromString(data)
            theirs.append(record.SerializeToString())
    except AssertionError:  # it reads a zero-filled tail as a broken chunk: nothing but zeros may follow
        assert not log.read_bytes()[store._index - 7 :].strip(b"\0")
    finally:
        store.close()
    return theirs


@pytest.mark.skipif(_wandb_datastore() is None, reason=f"wandb {wandb_version} has no wandb.sdk.internal.datastore")
def test_agrees_with_wandb_datastore(logged_run: Path) -> None:
    (log,) = logged_run.glob("run-*.wandb")
    ours = [record.SerializeToString() for record in iter_records(log)]
    assert len(ours) > 10 and ours == _wandb_records(log)


@pytest.mark.skipif(
    WANDB_VERSION < (0, 31), reason=f"`wandb leet inspect --json` needs wandb 0.31 (this is {wandb_version})"
)
def test_agrees_with_wandb_leet_inspect(logged_run: Path) -> None:
    run = read_run(logged_run)
    records = [json.loads(line) for line in _leet("--json", str(logged_run)).splitlines() if line.startswith("{")]
    state = json.loads(_leet("--summary", "--json", str(logged_run)))

    # history: the same rows, in the same order, with the same values
    leet_rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert len(leet_rows) == len(run.history) == 4
    for ours, theirs in zip(run.history, leet_rows, strict=True):
        flat: dict[str, Any] = {}
        for key, value in ours.items():
            if isinstance(value, dict) and "_type" in value:
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        assert flat == theirs

    # summary: the run's final summary (W&B's own bookkeeping keys aside)
    def public(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    assert public(run.summary) == public(state["summary"])
    assert run.summary["val_acc"] == {"max": 0.7, "min": 0.2}
    assert state["run_id"] == run.run_id and state["project"] == run.project == "lw-tests"
    assert run.config == state["config"] == {"lr": 0.1, "net": {"width": 8}, "extra": "yes"}

    # metric definitions
    leet_metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert len(leet_metrics) == len(run.metrics)
    for ours_m, theirs_m in zip(run.metrics, leet_metrics, strict=True):
        assert ours_m.name == theirs_m.get("name") and ours_m.glob == theirs_m.get("glob_name")
        assert ours_m.step_metric == theirs_m.get("step_metric", "")
        assert ours_m.summary == {k for k, on in theirs_m.get("summary", {}).items() if on}
        assert ours_m.step_sync == theirs_m.get("options", {}).get("step_sync", False)
        assert ours_m.hidden == theirs_m.get("options", {}).get("hidden", False)
    assert run.metric("val_acc") is not None and run.metric("val_acc").summary == {"max", "min"}  # type: ignore[union-attr]
    assert run.metric("val/*") is not None and run.metric("val/*").hidden  # type: ignore[union-attr]

    # artifacts: names, types, aliases as logged, metadata, manifest entries
    leet_arts = [r["artifact"] for r in records if r["type"] == "artifact"]
    assert [(a["name"], a["type"]) for a in leet_arts] == [(v.name, v.type) for v in run.artifact_log]
    for ours_a, theirs_a in zip(run.artifact_log, leet_arts, strict=True):
        assert sorted(ours_a.logged_aliases) == sorted(theirs_a["aliases"])
        assert ours_a.metadata == json.loads(theirs_a.get("metadata") or "{}")
        theirs_entries = {e["path"]: e["digest"] for e in theirs_a["manifest"]["contents"]}
        assert {e.path: e.digest for e in ours_a.entries} == theirs_entries


def test_aliases_move_to_the_newest_version(logged_run: Path) -> None:
    run = read_run(logged_run)
    v0, v1 = run.artifacts("model-x")
    assert (v0.version, v1.version) == (0, 1)
    assert v0.aliases == ["epoch-0"]  # latest and best moved on to v1
    assert sorted(v1.aliases) == ["best", "epoch-1", "latest"]
    assert run.resolve_artifact("model-x", "best") is v1
    assert run.resolve_artifact("model-x", "v0") is v0
    assert run.resolve_artifact("model-x", "epoch-0").metadata == {"score": 0.4}
    entry = v1.entry("model.ckpt")
    assert entry.size == 1000 and entry.local_path and Path(entry.local_path).read_bytes() == bytes([1]) * 1000
    with pytest.raises(KeyError, match="'best', 'epoch-0', 'epoch-1', 'latest', 'v0', 'v1'"):
        run.resolve_artifact("model-x", "nope")
    with pytest.raises(KeyError, match="model-x"):
        run.resolve_artifact("model-y")


def test_series_and_files(logged_run: Path) -> None:
    run = read_run(logged_run)
    assert run.series("val_acc") == [(0, 0.2), (10, 0.7), (20, 0.5)]
    assert run.rows("samples")[0]["samples"]["captions"] == ["one"]
    assert any(f.startswith("media/images/samples_") for f in run.files)
    assert {"val_acc", "val/loss", "samples", "tab", "trainer/global_step"} <= run.keys()
    assert run.complete and run.exit_code == 0


@pytest.mark.parametrize("cut", [1, 7, 100, 0.5, 0.9, -3])
def test_truncated_tail_is_not_yet(logged_run: Path, tmp_path: Path, cut: float) -> None:
    (log,) = logged_run.glob("run-*.wandb")
    data = log.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    partial = tmp_path / log.name
    partial.write_bytes(data[:size])
    with pytest.raises(IncompleteRunError, match="no exit record"):
        read_run(partial, timeout=0.2)
    run = read_run(partial, timeout=0, require_exit=False)
    assert not run.complete
    assert len(run.history) <= 4


def test_waits_for_the_tail(logged_run: Path, tmp_path: Path) -> None:
    (log,) = logged_run.glob("run-*.wandb")
    data = log.read_bytes()
    partial = tmp_path / log.name
    partial.write_bytes(data[: len(data) - 5])

    def finish_writing() -> None:
        time.sleep(0.3)
        partial.write_bytes(data)

    writer = threading.Thread(target=finish_writing)
    writer.start()
    run = read_run(partial, timeout=10)
    writer.join()
    assert run.complete and len(run.history) == 4


@pytest.fixture(scope="module")
def long_records_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run whose log has records longer than a 32 KiB block (FIRST, MIDDLE and LAST
    chunks) and block tails too short for a chunk header (padding)."""
    import wandb

    root = tmp_path_factory.mktemp("long_records")
    with isolated_wandb(root):
        run = wandb.init(project="lw-tests", dir=str(root), mode="offline")
        for i in range(3):
            run.log({"text": str(i) * (40_000 + 20_000 * i), "trainer/global_step": i})
        run.finish()
    (folder,) = find_runs(root)
    read_run(folder, timeout=60)  # finish() can return before the log's tail is on disk: wait for it
    ends = [7] + [end for _record, end in records_from(next(folder.glob("run-*.wandb")), 0)]
    assert max(b - a for a, b in itertools.pairwise(ends)) > 2 * 32 * 1024  # FIRST, MIDDLE..., LAST
    return folder


class _Observed:
    """Wraps the log decoder that :class:`RunReader` uses; only notes the byte range of each record it
    yields (from the end of the previous one), and how often it was called."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from lw_callbacks.records import run as run_module

        self.calls = 0
        self.ranges: list[tuple[int, int]] = []
        self.records: list[bytes] = []
        decode = run_module.records_from

        def observed(path: Path, start: int, damaged: Any = None) -> Iterator[tuple[Any, int]]:
            self.calls += 1
            begin = max(start, 7)  # the log's header: 7 bytes
            for record, end in decode(path, start, damaged):
                self.ranges.append((begin, end))
                self.records.append(record.SerializeToString())
                begin = end
                yield record, end

        monkeypatch.setattr(run_module, "records_from", observed)

    def assert_each_byte_decoded_once(self, log: Path) -> None:
        """The records yielded cover the log from its header to its last whole record, each range
        once, and are the records the whole log holds (as wandb's own reader decodes them, where
        this wandb still has one)."""
        whole = [record.SerializeToString() for record in iter_records(log)]
        *_, (_last, end) = records_from(log, 0)
        starts = [a for a, _ in self.ranges]
        ends = [b for _, b in self.ranges]
        assert starts[0] == 7 and ends[-1] == end and starts[1:] == ends[:-1]
        assert self.records == whole
        theirs = _wandb_records(log)
        assert theirs is None or theirs == whole


@pytest.mark.parametrize(
    ("which", "cut"),
    [(which, cut) for which in ("logged_run", "long_records_run") for cut in (8, 0.3, 0.5, 0.9, -5)]
    + [("long_records_run", 32 * 1024 + 3), ("long_records_run", 64 * 1024 - 3)],
)
def test_a_growing_log_is_decoded_once(
    which: str, cut: float, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log written in two halves, cut anywhere (inside a chunk header, a chunk, a record of several
    chunks, a block's padding): the second read decodes only what the first did not."""
    (log,) = request.getfixturevalue(which).glob("run-*.wandb")
    data = log.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    assert 0 < size < len(data)
    growing = tmp_path / log.name
    growing.write_bytes(data[:size])
    observed = _Observed(monkeypatch)
    reader = RunReader(growing)
    first = reader.read()
    assert not first.complete and reader.offset <= size
    rows = len(first.history)
    with open(growing, "ab") as fh:
        fh.write(data[size:])
    assert reader.read() is first and first.complete and len(first.history) >= rows
    assert reader.read() is first  # nothing new: nothing decoded
    assert observed.calls == 3
    observed.assert_each_byte_decoded_once(growing)
    monkeypatch.undo()
    assert first == read_run(growing)  # the same records as read at once


def test_read_run_decodes_what_is_appended_while_it_waits(
    long_records_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While ``read_run`` waits for the tail, each poll decodes only what was appended since the last."""
    (log,) = long_records_run.glob("run-*.wandb")
    data = log.read_bytes()
    growing = tmp_path / log.name
    pieces = [0, len(data) // 3 + 1, 2 * len(data) // 3 - 1, len(data)]
    growing.write_bytes(data[: pieces[1]])
    observed = _Observed(monkeypatch)

    def write_the_rest() -> None:
        for start, end in itertools.pairwise(pieces[1:]):
            time.sleep(0.2)
            with open(growing, "ab") as fh:
                fh.write(data[start:end])

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    run = read_run(growing, timeout=30)
    writer.join()
    assert run.complete and [s for s, _ in run.series("text")] == [0, 1, 2]
    observed.assert_each_byte_decoded_once(growing)


def test_corruption_is_an_error(logged_run: Path, tmp_path: Path) -> None:
    (log,) = logged_run.glob("run-*.wandb")
    data = bytearray(log.read_bytes())
    data[200] ^= 0xFF
    bad = tmp_path / log.name
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        list(iter_records(bad))
    not_a_log = tmp_path / "run-x.wandb"
    not_a_log.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        read_run(not_a_log)


def test_64_damaged_bytes_anywhere_in_a_finished_log_are_reported(logged_run: Path, tmp_path: Path) -> None:
    """64 bytes garbled at any offset past the file header (here every 7th, and each offset of the
    first chunk headers) never pass as fewer records: each is reported in ``damaged`` or changes
    nothing. A garbled chunk header whose length points past the end of the file once passed as a
    tail still being written, and the records after it went missing unreported."""
    (log,) = logged_run.glob("run-*.wandb")
    src = log.read_bytes()
    whole = [r.SerializeToString() for r, _ in records_from(log, 0)]
    bad = tmp_path / log.name
    silent: list[int] = []
    for at in sorted(set(range(7, len(src) - 1, 7)) | set(range(7, 300))):
        data = bytearray(src)
        data[at : at + 64] = bytes(b ^ 0x5A for b in data[at : at + 64])
        bad.write_bytes(bytes(data))
        damaged: list[tuple[int, int]] = []
        read = [r.SerializeToString() for r, _ in records_from(bad, 0, damaged)]
        if not damaged and read != whole:
            silent.append(at)
        assert all(start <= at + 64 for start, _end in damaged), (at, damaged)
    assert not silent, f"garbled at {silent[:10]}: records lost without a report"


def test_folder_lookup(logged_run: Path, tmp_path: Path) -> None:
    assert read_run(logged_run.parent.parent).run_id == read_run(logged_run).run_id  # a folder with one run
    for i in range(2):
        shutil.copytree(logged_run, tmp_path / "wandb" / f"offline-run-2026010{i}_000000-abc{i}")
    assert [p.name[-4:] for p in find_runs(tmp_path)] == ["abc0", "abc1"]
    with pytest.raises(ValueError, match="holds 2 runs"):
        read_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path / "missing")


def test_inspect_command(logged_run: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lw_callbacks", "inspect", str(logged_run)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "val_acc" in text and '{"max": 0.7, "min": 0.2}' in text
    assert "model-x:v1" in text and "aliases=best,epoch-1,latest" in text
    assert f"wandb sync {logged_run}" in text
    as_json = subprocess.run(
        [sys.executable, "-m", "lw_callbacks", "inspect", "--json", str(logged_run)],
        capture_output=True, text=True, timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert data["keys"]["val_acc"] == {"rows": 3, "type": "number", "first_step": 0, "last_step": 20}
    assert [(a["name"], a["version"]) for a in data["artifacts"] if a["type"] == "model"] == [
        ("model-x", "v0"), ("model-x", "v1")
    ]
    missing = subprocess.run(
        [sys.executable, "-m", "lw_callbacks", "inspect", str(logged_run / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no W&B run" in missing.stderr


def test_resumed_segments_merge(tmp_path: Path) -> None:
    import wandb

    from lw_callbacks.records import read_resumed

    root = tmp_path / "runs"
    for segment, (steps, score) in enumerate([((0, 1, 2), 0.3), ((2, 3), 0.8)]):
        if segment and WANDB_VERSION < (0, 22, 1):
            # before 0.22.1 an offline resume started within the same second as the last segment
            # gets the same folder name (dated to the second); later releases add a suffix
            time.sleep(1.1)
        run = wandb.init(project="lw-tests", dir=str(root), id="resumeme", resume="allow", mode="offline")
        for step in steps:
            run.log({"loss": 1.0 / (step + 1), "trainer/global_step": step})
        path = tmp_path / f"m{segment}.ckpt"
        path.write_bytes(bytes([segment]) * 10)
        art = wandb.Artifact("model-resumeme", type="model", metadata={"score": score})
        art.add_file(str(path), name="model.ckpt")
        run.log_artifact(art, aliases=["latest", "best"])
        run.finish()
    assert len(find_runs(root)) == 2  # offline, each resume writes a folder of its own
    # two segments started within one second: wandb names the second <folder>-1; a third, far apart
    later = root / "wandb" / "offline-run-29990101_000000-other"
    shutil.copytree(find_runs(root)[0], later)
    next(later.glob("run-*.wandb")).rename(later / "run-other.wandb")
    with pytest.raises(ValueError, match=r"\['other', 'resumeme'\]; pass run_id"):
        read_resumed(root)
    shutil.rmtree(later)
    merged = read_resumed(root)
    assert merged.run_id == "resumeme" and merged.complete
    assert [s for s, _ in merged.series("loss")] == [0, 1, 2, 2, 3]
    v0, v1 = merged.artifacts("model-resumeme")
    assert (v0.version, v1.version) == (0, 1) and v0.aliases == [] and sorted(v1.aliases) == ["best", "latest"]
    with pytest.raises(FileNotFoundError, match="nope"):
        read_resumed(root, "nope")


def test_killed_segments_are_read_up_to_the_cut_and_named(logged_run: Path, tmp_path: Path) -> None:
    from lw_callbacks.records import read_resumed, scan_artifact_digests

    (log,) = logged_run.glob("run-*.wandb")
    data = log.read_bytes()
    run_id = log.stem[len("run-") :]
    wandb_dir = tmp_path / "runs" / "wandb"
    killed = wandb_dir / f"offline-run-20200101_000000-{run_id}"
    later = wandb_dir / f"offline-run-20200101_000100-{run_id}"
    killed.mkdir(parents=True)
    later.mkdir()
    (killed / log.name).write_bytes(data[: int(len(data) * 0.8)])  # SIGKILL: no exit record, a cut tail
    (later / log.name).write_bytes(data)
    merged = read_resumed(tmp_path / "runs", run_id, timeout=0)
    assert merged.segments == [killed, later] and merged.cut_segments == [killed]
    assert merged.complete
    # each version once, numbered over both segments by digest
    assert [(a.name, a.version) for a in merged.artifacts("model-x")] == [("model-x", 0), ("model-x", 1)]
    # the incremental scan: the same pairs read at once or from where the previous read stopped
    whole, end = scan_artifact_digests(log)
    first, offset = scan_artifact_digests(killed / log.name)
    rest, end_again = scan_artifact_digests(log, offset)
    assert first + rest == whole and end_again == end and {n for n, _ in whole} >= {"model-x"}

    out = subprocess.run([sys.executable, "-m", "lw_callbacks", "inspect", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "segments (2, merged in start order)" in out.stdout and "[cut: no exit record]" in out.stdout
    alone = subprocess.run([sys.executable, "-m", "lw_callbacks", "inspect", str(killed)],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0 and "killed" in alone.stdout
    empty = tmp_path / "empty" / f"offline-run-20200101_000000-{run_id}"
    empty.mkdir(parents=True)
    (empty / log.name).write_bytes(b"")
    nothing = subprocess.run([sys.executable, "-m", "lw_callbacks", "inspect", str(empty)],
                             capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 1 and "holds no records" in nothing.stderr


@pytest.fixture(scope="module")
def resumed_long_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A run resumed once: a first segment of several 32 KiB blocks (400 rows, then checkpoint A),
    a second one (5 rows, then checkpoint B). Returns the root and the rows logged, in order."""
    import wandb

    root = tmp_path_factory.mktemp("resumed-long")
    logged: list[dict[str, Any]] = []
    with isolated_wandb(root):
        for segment, (steps, content) in enumerate([(range(400), b"A"), (range(400, 405), b"B")]):
            if segment and WANDB_VERSION < (0, 22, 1):
                time.sleep(1.1)
            run = wandb.init(project="lw-tests", dir=str(root), id="longrun", resume="allow", mode="offline")
            for step in steps:
                row = {"loss": 1.0 / (step + 1), "note": f"row {step} " + "x" * 200, "trainer/global_step": step}
                run.log(row)
                logged.append(row)
            path = root / f"m{segment}.ckpt"
            path.write_bytes(content * 100)
            art = wandb.Artifact("model-longrun", type="model")
            art.add_file(str(path), name="model.ckpt")
            run.log_artifact(art, aliases=["latest"])
            run.finish()
        for segment in find_runs(root):
            read_run(segment, timeout=60)
    return root, logged


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_damaged_segment_costs_only_itself(
    resumed_long_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, fault: str
) -> None:
    from lw_callbacks import restore_checkpoint
    from lw_callbacks.records import read_resumed

    source, logged = resumed_long_run
    shutil.copytree(source / "wandb", tmp_path / "wandb", symlinks=True)
    first, _second = find_runs(tmp_path)
    (log,) = first.glob("run-*.wandb")
    data = bytearray(log.read_bytes())
    assert len(data) > 3 * 32 * 1024  # several blocks
    bad = 32 * 1024 + 5000  # inside the second block
    if fault == "corrupt":
        data[bad : bad + 64] = bytes(b ^ 0x5A for b in data[bad : bad + 64])
    else:
        data = data[:bad]
    log.write_bytes(bytes(data))

    merged = read_resumed(tmp_path, "longrun", timeout=0)
    rows = [{k: r[k] for k in ("loss", "note", "trainer/global_step")} for r in merged.history]
    steps = [r["trainer/global_step"] for r in rows]
    assert all(row == logged[step] for row, step in zip(rows, steps, strict=True))  # every row read is as logged
    assert steps[-5:] == [400, 401, 402, 403, 404]  # the second segment whole
    if fault == "corrupt":
        ((damaged_log, start, end),) = merged.damaged
        assert damaged_log == log and start <= bad and bad + 64 <= end <= 2 * 32 * 1024 + 1024
        lost = sorted(set(range(400)) - set(steps))
        assert lost and lost == list(range(lost[0], lost[-1] + 1)) and len(lost) < 32 * 1024 // 200  # one block
        assert 399 in steps and merged.cut_segments == []  # the rest of the segment, its exit record too
        assert [v.version for v in merged.artifacts("model-longrun")] == [0, 1]
        # the strict decoder still refuses it: a checksum that fails, or the chunk header the bytes hit
        with pytest.raises(ValueError, match=r"checksum mismatch|chunk of unknown type|chunk longer than its block"):
            list(iter_records(log))
    else:
        assert merged.damaged == [] and merged.cut_segments == [first]
        assert steps[:-5] == list(range(len(steps) - 5))
        assert [v.version for v in merged.artifacts("model-longrun")] == [0]  # A was past the cut

    path = restore_checkpoint("model-longrun:latest", run_dir=tmp_path, root=tmp_path / "out", timeout=5)
    assert path.read_bytes() == b"B" * 100
    if fault == "corrupt":
        v0 = restore_checkpoint("model-longrun:v0", run_dir=tmp_path, root=tmp_path / "out", timeout=5)
        assert v0.read_bytes() == b"A" * 100  # recorded in the damaged segment, past the damage

    out = subprocess.run([sys.executable, "-m", "lw_callbacks", "inspect", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "segments (2, merged in start order)" in out.stdout and "model-longrun:v" in out.stdout
    if fault == "corrupt":
        assert f"{log}: bytes {start}..{end}" in out.stdout and "damaged (1 ranges skipped" in out.stdout
    else:
        assert "[cut: no exit record]" in out.stdout
