"""The claims and the ledger of the checkpoint upload.

- :class:`Job`: one checkpoint to upload, and its claim on disk (:func:`write_note`), written on the
  training thread before the hand-over returns, so a later process of the run uploads the file whatever
  moment this one died at (:func:`read_staged`).
- :class:`Ledger` remembers every file handed over, sent or durably uploaded, and each collection's
  ``best`` and ``latest`` (:class:`CollectionState`); it is what ``UploadCheckpoints.state_dict`` saves.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lw_callbacks.core.files import process_gone, signature

STAGING_FOLDER = ".upload-staging"

# Uploading states of a file in the ledger. SENT: ``log_artifact`` returned, but W&B does not hold
# it durably yet (offline: the record is not in the log on disk; online: not committed).
PENDING, SENT, UPLOADED, DUPLICATE, SKIPPED, LOST = "pending", "sent", "uploaded", "duplicate", "skipped", "lost"
# A claim written before ModelCheckpoint saves a file (its signature is not known yet): a file at that
# path with a later mtime was written by this run.
SAVING = "saving"
DONE = (UPLOADED, DUPLICATE, SKIPPED, LOST)

@dataclass
class Job:
    """One checkpoint file to upload as a new version of ``collection``.

    ``staged`` is our staged file (a hard link, or the copy the worker makes from ``fd``); ``None`` when
    staging failed and the original (or ``fd``) is uploaded. ``note`` is the claim written on the training
    thread before the hand-over returns (``<staged>.json``, or in a fallback folder when the staging folder
    cannot hold it): it names the source, its signature and, once hashed, the digest, so a later process
    of the run uploads the file, from the staged copy or from the source, whatever moment this one died at.
    """

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
    run_id: str = ""
    digest: str | None = None
    status: str = PENDING
    copied: bool = False  # ``staged`` is a copy (compared by content), not a hard link (by size and mtime)
    remote: bool = False  # ``source`` is an fsspec URL: the worker streams it into ``staged``
    folder: bool = False  # ``source`` is a folder (a sharded checkpoint): one version holding all its files
    entries: dict[str, str] = field(default_factory=dict)  # a folder's files (relative paths) -> md5
    local_paths: dict[str, str | None] = field(default_factory=dict)  # a folder's files -> W&B's staged copy
    unclaimed: bool = False  # found in the folder, not named by the ModelCheckpoint: skip content held anywhere
    best: bool = False  # the best by its saver's own account (ModelCheckpoint without monitor: its best_model_path)
    note: str | None = None  # the claim on disk: where this job's note is (beside ``staged``, or a fallback folder)
    held: bool = False  # ModelCheckpoint's rotation asked to delete ``source`` before its bytes were kept elsewhere
    fd: int | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("fd")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        names = set(cls.__dataclass_fields__) - {"fd"}
        return cls(**{k: v for k, v in data.items() if k in names})

    def close_fd(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


@dataclass
class CollectionState:
    """What one artifact collection holds: its digests and where ``best`` and ``latest`` are."""

    name: str
    monitor: str | None = None
    mode: str = "min"
    best_score: float | None = None
    latest_seq: int = -1
    digests: dict[str, int] = field(default_factory=dict)
    best_seq: int = -1

    def takes_best(self, job: Job) -> bool:
        """Whether ``job`` becomes ``best``: by ``score`` with a monitor; without one, the newest job
        its saver calls best (``ModelCheckpoint.best_model_path``, which ``ckpt_path="best"`` loads)."""
        if self.monitor is None:
            return job.best and job.seq > self.best_seq
        return self.is_better(job.score)

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

    def forget(self, real: str) -> None:
        with self.lock:
            self.files.pop(real, None)

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


def release_source(job: Job) -> None:
    """Delete ``job``'s source if ``ModelCheckpoint``'s rotation asked to while it was held back, and the
    file still holds the content that was claimed (never a newer file saved under the same name)."""
    if not job.held:
        return
    try:
        if signature(os.stat(job.source)) == list(job.signature):
            os.remove(job.source)
    except OSError:
        pass
    job.held = False


def remove_empty_parents(folder: Path) -> None:
    """Remove a staging folder ``<root>/<run id>/<collection>`` and its run folder while they are
    empty, and ``<root>`` too when it is a default ``.upload-staging`` folder."""
    for parent in (folder, folder.parent, folder.parent.parent):
        if parent is folder.parent.parent and parent.name != STAGING_FOLDER:
            return
        try:
            parent.rmdir()
        except OSError:
            return


def forget_staged(job: Job) -> None:
    """Remove our staged hard link / copy of ``job`` and its note, and close its descriptor (never the
    user's checkpoint)."""
    job.close_fd()
    paths = [job.staged, job.staged + ".json", job.staged + ".partial"] if job.staged else []
    if job.note:
        paths.append(job.note)
    for tree in paths[:1] + paths[2:3]:
        if os.path.isdir(tree) and not os.path.islink(tree):
            shutil.rmtree(tree, ignore_errors=True)
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)
    for folder in {os.path.dirname(p) for p in paths}:
        remove_empty_parents(Path(folder))


def write_note(job: Job, note: str | None = None, sync: bool = True) -> bool:
    """Write ``job``'s claim (``note``, else ``job.note``, else ``<staged>.json``) atomically and synced to
    disk, so that a later process can upload the file if this one dies; it carries the run id, the source
    and its signature, the staged path, the status and, once hashed, the digest. True when written."""
    note = note or job.note or (job.staged + ".json" if job.staged else None)
    if note is None:
        return False
    job.note = note
    tmp = f"{note}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(job.to_dict(), fh)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, note)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        return False


def read_staged(root: Path, run_id: str) -> tuple[list[Job], dict[str, list[Path]]]:
    """What processes of run ``run_id`` claimed under ``root`` (``<root>/<run id>/<collection>/``) and did
    not see into W&B, oldest first, and the notes of other runs found there (run id -> notes), which are
    not ours to upload.

    A claim whose staged file exists is uploaded from it. One whose staged file never came to be (a copy
    cut short, or staging impossible) is uploaded from its source, when the source still holds the
    claimed content (``staged`` is then ``None``); otherwise the job comes back with status ``lost`` (the
    caller checks whether the run's records hold its digest, and names it if not)."""
    jobs: list[Job] = []
    others: dict[str, list[Path]] = {}
    if not root.is_dir():
        return jobs, others
    for tmp in root.glob("*/*/*.json.*.tmp"):  # a note being written when its process was killed
        pid = tmp.name.split(".json.", 1)[1].split(".")[0]
        if process_gone(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
    for note in sorted(root.glob("*/*/*.json")) + sorted(root.glob("*.json")):
        try:
            job = Job.from_dict(json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if job.run_id != run_id:
            others.setdefault(job.run_id or "(unknown)", []).append(note)
            continue
        job.note = str(note)
        if job.status == SAVING:
            try:
                st = os.stat(job.source)
                written = os.path.isfile(job.source) and st.st_mtime_ns >= int(job.metadata.get("time_ns", 0))
            except OSError:
                written = False
            if written:
                job.signature = signature(st)
                jobs.append(job)
            else:  # nothing was saved (or another file is there now): no claim
                with contextlib.suppress(OSError):
                    os.remove(note)
            continue
        if job.staged and (os.path.isdir(job.staged) if job.folder else os.path.isfile(job.staged)):
            jobs.append(job)
            continue
        if job.staged:
            with contextlib.suppress(OSError):
                os.remove(job.staged + ".partial")
        if job.folder or job.remote:  # the adapter finds these on disk (or remote) again: no claim to keep
            with contextlib.suppress(OSError):
                note.unlink()
            continue
        job.staged = None
        try:
            same = signature(os.stat(job.source)) == list(job.signature)
        except OSError:
            same = False
        if not same:
            job.status = LOST
        jobs.append(job)
    return sorted(jobs, key=lambda j: j.seq), others
