"""Private machinery of :class:`~lw_callbacks.checkpoints.UploadCheckpoints`.

- :func:`hand_over` puts a checkpoint into a staging folder we own (a hard link on the same
  filesystem, a copy otherwise): the only file work done on the training thread.
- :class:`Ledger` remembers every file handed over or uploaded and each collection's ``best`` and
  ``latest``; it is what ``UploadCheckpoints.state_dict`` saves.
- :class:`Uploader` hashes and logs the handed-over files on one daemon worker thread and retries
  failures when asked to flush.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

ENTRY_NAME = "model.ckpt"
STAGING_FOLDER = ".upload-staging"
_CHUNK = 8 * 2**20

# Uploading states of a file in the ledger.
PENDING, UPLOADED, DUPLICATE, SKIPPED, LOST = "pending", "uploaded", "duplicate", "skipped", "lost"


def _link(src: str, dst: str) -> None:
    os.link(src, dst)


def _copy(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)


def hand_over(src: str, dst: str) -> str:
    """Stage ``src`` at ``dst``: a hard link (``"link"``) when possible, else a copy (``"copy"``).

    A full disk (``ENOSPC``) is not worth a copy attempt and is raised at once; any other failure
    of the link falls back to a copy, whose ``OSError`` is raised.
    """
    try:
        _link(src, dst)
        return "link"
    except OSError as err:
        if err.errno == 28:  # ENOSPC
            raise
    _copy(src, dst)
    return "copy"


def md5_b64(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> str:
    """Base64 md5 of a file (the digest W&B records in an artifact manifest), read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return base64.b64encode(digest.digest()).decode("ascii")


def signature(st: os.stat_result) -> list[int]:
    """What identifies one content of a file without reading it: device, inode, size, mtime."""
    return [int(st.st_dev), int(st.st_ino), int(st.st_size), int(st.st_mtime_ns)]


@dataclass
class Job:
    """One checkpoint file to upload as a new version of ``collection``."""

    seq: int
    collection: str
    source: str
    staged: str | None
    size: int
    signature: list[int]
    score: float | None
    metadata: dict[str, Any]
    aliases: list[str]
    attempts: int = 0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class CollectionState:
    """What one artifact collection holds: its digests and where ``best`` and ``latest`` are."""

    name: str
    monitor: str | None = None
    mode: str = "min"
    best_score: float | None = None
    latest_seq: int = -1
    digests: dict[str, int] = field(default_factory=dict)

    def is_better(self, score: float | None) -> bool:
        if self.monitor is None or score is None or math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score


class Ledger:
    """Files handed over / uploaded and the state of each collection, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.collections: dict[str, CollectionState] = {}
        self.next_seq = 0

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles callbacks into the new processes
        state = self.__dict__.copy()
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def take_seq(self) -> int:
        with self.lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            return seq

    def collection(self, name: str, monitor: str | None = None, mode: str = "min") -> CollectionState:
        with self.lock:
            state = self.collections.get(name)
            if state is None:
                state = self.collections[name] = CollectionState(name, monitor, mode)
            return state

    def is_known(self, real: str, sig: list[int]) -> bool:
        with self.lock:
            known = self.files.get(real)
            return known is not None and list(known["signature"]) == list(sig)

    def note(self, real: str, sig: list[int], status: str, **extra: Any) -> None:
        with self.lock:
            entry = self.files.setdefault(real, {})
            entry.update(signature=list(sig), status=status, **extra)

    def set_status(self, real: str, status: str, **extra: Any) -> None:
        with self.lock:
            entry = self.files.get(real)
            if entry is not None:
                entry.update(status=status, **extra)

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "next_seq": self.next_seq,
                "files": {k: dict(v) for k, v in self.files.items()},
                "collections": {k: asdict(v) for k, v in self.collections.items()},
            }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        ledger = cls()
        ledger.next_seq = int(data.get("next_seq", 0))
        ledger.files = {k: dict(v) for k, v in data.get("files", {}).items()}
        for name, state in data.get("collections", {}).items():
            ledger.collections[name] = CollectionState(**state)
        return ledger


class Uploader:
    """Hash and log handed-over checkpoints on one daemon thread; retry failures at :meth:`flush`.

    Only the worker thread changes collection state, so ``best`` and ``latest`` are decided in one
    place; they are decided by score and by hand-over order (``seq``), so a version logged late
    (after a retry) still gets the right aliases.
    """

    MAX_ATTEMPTS = 3

    def __init__(self, run: Any, ledger: Ledger, owner: str) -> None:
        self.run = run
        self.ledger = ledger
        self.owner = owner
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._cond = threading.Condition()
        self._active = 0
        self._active_bytes = 0
        self.bytes_done = 0
        self.failed: list[Job] = []
        self.deferred: list[Job] = []
        self.uploaded: list[tuple[Job, str, list[str], str | None]] = []  # job, digest, aliases, W&B's copy
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="UploadCheckpoints-worker", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            self._active += 1
            self._active_bytes += job.size
        self._queue.put(job)

    def defer(self, job: Job) -> None:
        """Upload ``job`` (from its original file) at :meth:`flush`, not now."""
        with self._cond:
            self.deferred.append(job)

    def pending(self) -> int:
        with self._cond:
            return self._active + len(self.failed) + len(self.deferred)

    def flush(self, timeout: float, progress_bar: bool, min_progress_bytes: int) -> list[Job]:
        """Wait (up to ``timeout`` s) until every job is logged; retry failed and deferred jobs.

        Returns the jobs that are still not logged (failed for good, or not reached in time).
        """
        deadline = time.monotonic() + timeout
        self.start()
        bar = None
        while True:
            with self._cond:
                retry = [j for j in self.failed if j.attempts < self.MAX_ATTEMPTS] + self.deferred
                self.failed = [j for j in self.failed if j.attempts >= self.MAX_ATTEMPTS]
                self.deferred = []
            for job in retry:
                self.submit(job)
            with self._cond:
                total = self._active_bytes
                if bar is None and progress_bar and total >= min_progress_bytes:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"{self.owner}: uploading checkpoints")
                    start_done = self.bytes_done
                while self._active and time.monotonic() < deadline:
                    self._cond.wait(0.1)
                    if bar is not None:
                        bar.n = min(bar.total, self.bytes_done - start_done)
                        bar.refresh()
                idle = self._active == 0
                again = any(j.attempts < self.MAX_ATTEMPTS for j in self.failed) or bool(self.deferred)
            if not idle or not again or time.monotonic() >= deadline:
                break
        if bar is not None:
            bar.close()
        if idle:
            self._restore_latest()
        with self._cond:
            left = list(self.failed) + list(self.deferred)
            if not idle:
                left.extend(self._queued_snapshot())
        return left

    def stop(self, timeout: float) -> bool:
        """Ask the worker to end once its queue is empty; True when it ended within ``timeout``."""
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self._thread = None
        return not alive

    def _queued_snapshot(self) -> list[Job]:
        with self._queue.mutex:
            return [j for j in self._queue.queue if j is not None]

    def _restore_latest(self) -> None:
        """W&B moves ``latest`` to whatever was logged last; after a retry logged an older checkpoint
        last, log the newest one again (same content: the same version, which takes ``latest`` back)."""
        import wandb

        last: dict[str, tuple[Job, str, list[str], str | None]] = {}
        newest: dict[str, tuple[Job, str, list[str], str | None]] = {}
        for item in self.uploaded:
            name = item[0].collection
            last[name] = item
            if name not in newest or item[0].seq > newest[name][0].seq:
                newest[name] = item
        for name, item in newest.items():
            job, digest, _aliases, copy = item
            if last[name][0].seq == job.seq:
                continue
            try:
                if not copy or not os.path.isfile(copy):
                    raise FileNotFoundError(f"W&B's staged copy {copy} is gone")
                artifact = wandb.Artifact(name=name, type="model", metadata=job.metadata)
                artifact.add_file(copy, name=ENTRY_NAME, policy="immutable")
                aliases = ["latest", *job.aliases]
                self.run.log_artifact(artifact, aliases=aliases)
                self.uploaded.append((job, digest, aliases, copy))
            except Exception as err:
                rank_zero_warn(
                    f"{self.owner}: could not move 'latest' of {name!r} back to {job.source} after a retried upload "
                    f"({type(err).__name__}: {err}); 'latest' is on an older checkpoint."
                )

    # ----------------------------------------------------------------- worker
    def _progress(self, n: int) -> None:
        self.bytes_done += n

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._process(job)
            except BaseException as err:  # never let the worker die with jobs behind it
                job.attempts += 1
                job.error = f"{type(err).__name__}: {err}"
                with self._cond:
                    self.failed.append(job)
                where = job.staged or job.source
                rank_zero_warn(
                    f"{self.owner}: uploading {job.source} to artifact {job.collection!r} failed "
                    f"(attempt {job.attempts}, {job.error}). It is retried when fit ends; the checkpoint "
                    f"file is untouched and the copy to upload stays at {where}."
                )
            finally:
                with self._cond:
                    self._active -= 1
                    self._active_bytes -= job.size
                    self._cond.notify_all()

    def _process(self, job: Job) -> None:
        ledger = self.ledger
        path = job.staged if job.staged and os.path.isfile(job.staged) else None
        if path is None:
            if job.staged:
                raise FileNotFoundError(f"the staged copy {job.staged} is gone")
            if not os.path.isfile(job.source):
                ledger.set_status(job.source, LOST)
                rank_zero_warn(
                    f"{self.owner}: {job.source} could not be staged when it was saved and was deleted "
                    f"(by ModelCheckpoint's top-k rotation?) before it could be uploaded from the original; "
                    f"it is not in artifact {job.collection!r}."
                )
                return
            path = job.source
        digest = md5_b64(path, self._progress)
        if job.staged and signature(os.stat(path))[2:] != job.signature[2:]:
            # The file was rewritten in place under our hard link; its new content has its own hand-over.
            ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
            self._cleanup(job)
            return
        state = ledger.collection(job.collection)
        if digest in state.digests:
            ledger.set_status(job.source, DUPLICATE, digest=digest, seq=job.seq)
            self._cleanup(job)
            return
        aliases: list[str] = []
        if job.seq > state.latest_seq:
            aliases.append("latest")
        if state.is_better(job.score):
            aliases.append("best")
        aliases.extend(a for a in job.aliases if a not in aliases)
        staged_by_wandb = self._log(job, path, aliases)
        with ledger.lock:
            state.digests[digest] = job.seq
            state.latest_seq = max(state.latest_seq, job.seq)
            if "best" in aliases:
                state.best_score = job.score
        ledger.set_status(job.source, UPLOADED, digest=digest, seq=job.seq)
        with self._cond:
            self.uploaded.append((job, digest, aliases, staged_by_wandb))
        self._cleanup(job)

    def _log(self, job: Job, path: str, aliases: list[str]) -> str | None:
        import wandb

        artifact = wandb.Artifact(name=job.collection, type="model", metadata=job.metadata)
        entry = artifact.add_file(path, name=ENTRY_NAME)  # W&B's own staged copy, made on this thread
        try:
            self.run.log_artifact(artifact, aliases=aliases)
        except BaseException:
            staged_by_wandb = getattr(entry, "local_path", None)
            if staged_by_wandb and os.path.abspath(staged_by_wandb) != os.path.abspath(path):
                try:  # W&B's copy for an artifact that was never logged: nothing refers to it
                    os.chmod(staged_by_wandb, 0o600)
                    os.remove(staged_by_wandb)
                except OSError:
                    pass
            raise
        return getattr(entry, "local_path", None)

    @staticmethod
    def _cleanup(job: Job) -> None:
        """Remove our staged hard link / copy and its note (never the user's checkpoint)."""
        if not job.staged:
            return
        for path in (job.staged, job.staged + ".json"):
            with contextlib.suppress(OSError):
                os.remove(path)
        with contextlib.suppress(OSError):
            Path(job.staged).parent.rmdir()  # only when empty


def write_note(job: Job) -> None:
    """Write ``<staged>.json`` beside a staged copy so a later process can upload it if this one dies."""
    if job.staged is None:
        return
    try:
        with open(job.staged + ".json", "w") as fh:
            json.dump(job.to_dict(), fh)
    except OSError:
        pass


def read_notes(folder: Path) -> list[Job]:
    """Jobs left in a staging folder by a process that ended before uploading them, oldest first."""
    jobs = []
    for note in sorted(folder.glob("*.json")):
        try:
            job = Job.from_dict(json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if job.staged and os.path.isfile(job.staged):
            jobs.append(job)
    return sorted(jobs, key=lambda j: j.seq)
