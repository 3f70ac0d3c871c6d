"""Contract tests of the online paths: ``restore_checkpoint`` online, and the uploader's commit handling.

No test runs against a real W&B server: none can be had on these machines (a third-party
W&B-compatible server stores no artifact). These tests replace W&B's public objects where the
package meets them, in the doorway (``lw_callbacks/_wandb.py``: ``wandb.Api()`` and a run's
``log_artifact``), with recording fakes that behave as wandb's documented API does:

* ``Api().artifact(ref, type=...)`` returns an artifact whose ``download(root)`` writes its files
  under ``root`` and returns ``root``; an unknown ``ref`` raises ``wandb.errors.CommError``;
  ``Api().artifacts(type, collection)`` lists the versions;
* ``run.log_artifact(artifact, aliases=...)`` returns the logged artifact, whose
  ``wait(timeout=...)`` returns once the version is committed, raises ``CommError`` when the server
  fails, or raises ``WaitTimeoutError`` when the version is not committed within ``timeout``.

They check what the package does with each answer: the file it returns, the errors it raises, what
it keeps staged and what it warns. They are a contract with wandb's documented behaviour, not proof
against a server.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wandb
from wandb.errors import CommError
from wandb.sdk.artifacts.exceptions import WaitTimeoutError

from lw_callbacks import LWCallbacksWarning, restore_checkpoint
from lw_callbacks.core import files, jobs
from lw_callbacks.core.jobs import SENT, UPLOADED, Job, Ledger
from lw_callbacks.core.uploader import Uploader

REF = "team/proj/model-abc-val_acc"


# ---------------------------------------------------------------------- fakes of W&B's public objects
class FakeArtifact:
    """An artifact as ``Api().artifact`` returns it: ``download(root)`` writes its files under ``root``."""

    def __init__(
        self, name: str, version: str, files: dict[str, bytes], aliases: list[str],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.version, self.files, self.aliases = name, version, files, aliases
        self.metadata = metadata or {}  # wandb: the dict logged with the version
        self.downloads: list[str] = []

    def download(self, root: str | None = None, **kwargs: Any) -> str:
        assert root is not None  # the package always says where
        self.downloads.append(root)
        for rel, data in self.files.items():
            path = Path(root) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root


class FakeApi:
    """``wandb.Api()``: artifacts by ``collection:alias``; unknown ones raise ``CommError``."""

    def __init__(self, versions: list[FakeArtifact], list_fails: bool = False) -> None:
        self.versions = versions
        self.list_fails = list_fails
        self.calls: list[tuple[str, ...]] = []

    def artifact(self, name: str, type: str | None = None) -> FakeArtifact:  # wandb's signature
        self.calls.append(("artifact", name, str(type)))
        collection, _, tag = name.rpartition(":")
        for v in self.versions:
            if f"team/proj/{v.name}" == collection and (tag == v.version or tag in v.aliases):
                return v
        raise CommError(f"artifact '{name}' not found")

    def artifacts(self, type_name: str, name: str) -> list[FakeArtifact]:
        self.calls.append(("artifacts", type_name, name))
        if self.list_fails:
            raise CommError("could not list the collection")
        return [v for v in self.versions if f"team/proj/{v.name}" == name]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Any:
    """W&B online as far as the package can tell (no live run, no ``WANDB_MODE``), ``wandb.Api`` faked."""
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def install(api: FakeApi) -> FakeApi:
        monkeypatch.setattr(wandb, "Api", lambda *args, **kwargs: api)
        return api

    return install


def _versions() -> list[FakeArtifact]:
    return [
        FakeArtifact("model-abc-val_acc", "v0", {"model.ckpt": b"first"}, ["epoch-0"]),
        FakeArtifact("model-abc-val_acc", "v1", {"model.ckpt": b"best"}, ["best", "latest"]),
    ]


# ---------------------------------------------------------------------- restore_checkpoint online
def test_contract_restore_online_downloads_the_version_once(online: Any, tmp_path: Path) -> None:
    api = online(FakeApi(_versions()))
    path = restore_checkpoint(f"{REF}:best", root=tmp_path / "out")
    assert path == (tmp_path / "out" / "model-abc-val_acc-v1" / "model.ckpt").resolve()
    assert path.read_bytes() == b"best"
    assert api.calls == [("artifact", f"{REF}:best", "model")]
    again = restore_checkpoint(f"{REF}:best", root=tmp_path / "out")  # a finished download is reused
    assert again == path and api.versions[1].downloads == [str(tmp_path / "out" / "model-abc-val_acc-v1")]
    assert not (tmp_path / "out" / "model-abc-val_acc-v1.lock").exists()


def test_contract_restore_online_without_alias_takes_latest(online: Any, tmp_path: Path) -> None:
    api = online(FakeApi(_versions()))
    assert restore_checkpoint(REF, root=tmp_path).read_bytes() == b"best"
    assert api.calls[0] == ("artifact", f"{REF}:latest", "model")


def test_contract_restore_online_unknown_alias_lists_the_versions(online: Any, tmp_path: Path) -> None:
    online(FakeApi(_versions()))
    with pytest.raises(LookupError, match=r"W&B has no .*:step-9.*it has v0 \['epoch-0'\], v1 \['best', 'latest'\]"):
        restore_checkpoint(f"{REF}:step-9", root=tmp_path)


def test_contract_restore_online_unknown_and_unlistable(online: Any, tmp_path: Path) -> None:
    online(FakeApi(_versions(), list_fails=True))
    with pytest.raises(LookupError, match=r"W&B has no .*:step-9.*not found\)$"):
        restore_checkpoint(f"{REF}:step-9", root=tmp_path)


@pytest.mark.parametrize("files", [{}, {"a.ckpt": b"1", "b/c.ckpt": b"2"}])
def test_contract_restore_online_refuses_a_version_without_one_checkpoint(
    online: Any, tmp_path: Path, files: dict[str, bytes]
) -> None:
    online(FakeApi([FakeArtifact("model-abc-val_acc", "v0", files, ["latest"])]))
    with pytest.raises(LookupError, match=r"not one \.ckpt file"):
        restore_checkpoint(f"{REF}:latest", root=tmp_path)


def test_contract_restore_online_folder_checkpoint_is_the_folder(online: Any, tmp_path: Path) -> None:
    files = {"checkpoint/__0_0.distcp": b"shard0", "checkpoint/.metadata": b"meta"}
    online(FakeApi([FakeArtifact("model-abc-val_acc", "v0", files, ["latest"], metadata={"folder": True})]))
    path = restore_checkpoint(f"{REF}:latest", root=tmp_path)
    assert path == (tmp_path / "model-abc-val_acc-v0").resolve()
    assert (path / "checkpoint" / "__0_0.distcp").read_bytes() == b"shard0"


def _other_process(target: Path, lock: Path, completes: bool) -> threading.Thread:
    """Another process holding the download lock: it finishes the download (or dies) a moment later."""

    def run() -> None:
        time.sleep(0.3)
        if completes:
            target.mkdir(parents=True, exist_ok=True)
            (target / "model.ckpt").write_bytes(b"theirs")
            (target / ".complete").touch()
        lock.unlink()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("completes", [True, False], ids=["other-finishes", "other-dies"])
def test_contract_restore_online_waits_for_another_process(online: Any, tmp_path: Path, completes: bool) -> None:
    api = online(FakeApi(_versions()))
    target = tmp_path / "model-abc-val_acc-v1"
    lock = tmp_path / "model-abc-val_acc-v1.lock"
    lock.touch()
    other = _other_process(target, lock, completes)
    path = restore_checkpoint(f"{REF}:best", root=tmp_path)
    other.join()
    if completes:  # the other process's download is used, not repeated
        assert path.read_bytes() == b"theirs" and api.versions[1].downloads == []
    else:  # it died without finishing: this process downloads
        assert path.read_bytes() == b"best" and api.versions[1].downloads == [str(target)]
    assert (target / ".complete").exists()


def test_contract_restore_with_a_live_offline_run_reads_the_records(online: Any, tmp_path: Path) -> None:
    """With ``entity/project/`` in the ref but an offline run live in this process, the API is not asked."""
    api = online(FakeApi(_versions()))
    with pytest.MonkeyPatch.context() as mp:  # wandb's settings of this process keep the mode they start with
        mp.setenv("WANDB_MODE", "offline")
        run = wandb.init(mode="offline", project="proj", dir=str(tmp_path))
    try:
        with pytest.raises((LookupError, FileNotFoundError)):
            restore_checkpoint(f"{REF}:best", root=tmp_path / "out", timeout=0)
    finally:
        run.finish()
    assert api.calls == []


# ---------------------------------------------------------------------- the uploader's commit handling
class FakeLogged:
    """What ``run.log_artifact`` returns: ``wait(timeout)`` as documented, with a chosen outcome."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.waits: list[Any] = []

    def wait(self, timeout: int | None = None) -> FakeLogged:
        self.waits.append(timeout)
        if self.outcome == "commit-error":
            raise CommError("500 Internal Server Error while committing the artifact")
        if self.outcome == "never-committed":
            assert timeout is not None, "waiting without a timeout on a version never committed blocks for ever"
            raise WaitTimeoutError("Artifact upload wait timed out, failed to fetch Artifact response")
        return self


class FakeRun:
    """An online run: records each ``log_artifact(artifact, aliases=...)``."""

    settings = SimpleNamespace(mode="online", _offline=False)
    id = "abc"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.logged: list[tuple[str, list[str], FakeLogged]] = []

    def log_artifact(self, artifact: Any, aliases: list[str] | None = None) -> FakeLogged:
        logged = FakeLogged(self.outcome)
        self.logged.append((artifact.name, list(aliases or []), logged))
        return logged


def _upload_one(tmp_path: Path, outcome: str) -> tuple[Uploader, FakeRun, Job, Ledger]:
    source = tmp_path / "ckpt" / "epoch=0.ckpt"
    source.parent.mkdir()
    source.write_bytes(os.urandom(1024))
    staged = tmp_path / "ckpt" / ".upload-staging" / "abc" / "model-abc" / "epoch=0.ckpt"
    staged.parent.mkdir(parents=True)
    how, fd = files.hand_over(str(source), str(staged))
    assert how == "link" and fd is None
    sig = files.signature(os.stat(source))
    ledger = Ledger()
    job = Job(seq=ledger.take_seq(), collection="model-abc", source=os.path.realpath(source), staged=str(staged),
              size=1024, signature=sig, score=None, metadata={"epoch": 0}, aliases=["baseline"], run_id="abc")
    ledger.note(job.source, sig, jobs.PENDING, collection=job.collection, seq=job.seq)
    jobs.write_note(job)
    run = FakeRun(outcome)
    uploader = Uploader(run, ledger, "UploadCheckpoints", run_id="abc", offline=False)
    uploader.start()
    uploader.submit(job)
    left = uploader.flush(timeout=60, progress_bar=False, min_progress_bytes=1 << 30)
    assert left == []
    uploader.stop(5)
    return uploader, run, job, ledger


def test_contract_upload_online_committed_version_is_durable_and_unstaged(tmp_path: Path) -> None:
    uploader, run, job, ledger = _upload_one(tmp_path, "committed")
    [(name, aliases, logged)] = run.logged
    assert name == "model-abc" and aliases == ["latest", "baseline"]
    assert logged.waits == [Uploader.COMMIT_TIMEOUT]  # waited for the commit, with a bound
    assert ledger.files[job.source]["status"] == UPLOADED
    assert ("model-abc", job.digest) in uploader.durable
    assert job.staged is not None and not Path(job.staged).exists() and not Path(job.staged + ".json").exists()
    assert Path(job.source).exists()  # the user's file is never touched


@pytest.mark.parametrize("outcome", ["commit-error", "never-committed"])
def test_contract_upload_online_unconfirmed_commit_keeps_the_staged_copy(tmp_path: Path, outcome: str) -> None:
    with pytest.warns(LWCallbacksWarning, match=r"did not confirm that .*epoch=0\.ckpt .*'model-abc'.*committed"):
        uploader, run, job, ledger = _upload_one(tmp_path, outcome)
    [(_, _, logged)] = run.logged
    assert logged.waits == [Uploader.COMMIT_TIMEOUT]  # the worker did not block: flush returned
    assert ledger.files[job.source]["status"] == SENT  # logged, not known to be committed
    assert ("model-abc", job.digest) not in uploader.durable
    assert job.staged is not None and Path(job.staged).exists() and Path(job.staged + ".json").exists()
    staged_jobs, _ = jobs.read_staged(tmp_path / "ckpt" / ".upload-staging", "abc")
    assert [j.source for j in staged_jobs] == [job.source]  # the next fit of this run finds it
