"""The upload worker shared by :class:`~lw_callbacks.UploadCheckpoints` and
:class:`~lw_callbacks.fabric.FabricUploadCheckpoints` (through :mod:`lw_callbacks.core.publish`).

- :func:`hand_over` puts a checkpoint into a staging folder we own: a hard link on the same
  filesystem; on another one, an open file descriptor taken on the training thread, from which the
  worker copies. That is the only file work done on the training thread.
- :class:`Ledger` remembers every file handed over, sent or durably uploaded, and each collection's
  ``best`` and ``latest``; it is what ``UploadCheckpoints.state_dict`` saves.
- :class:`Uploader` hashes and logs the handed-over files on one daemon worker thread, retries
  failures when asked to flush, and forgets a staged file (and its note) only once W&B durably holds
  its version: offline, once the artifact record is in the run's ``.wandb`` file on disk; online,
  once the artifact is committed.

Each checkpoint is read once to hash it: W&B is handed that digest and only makes its own staged copy
(``policy="mutable"``). Our staged file is not handed to W&B in place of that copy: a hard link shares
the checkpoint's content, which ``ModelCheckpoint`` may rewrite in place under the same name; and an
offline run's manifest must point at a file that lasts until ``wandb sync``, while ours is removed as soon
as the record is on disk.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import math
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lw_callbacks._errors import warn
from lw_callbacks._wandb import add_hashed_file, log_artifact, model_artifact, wandb_staging_dir

ENTRY_NAME = "model.ckpt"
STAGING_FOLDER = ".upload-staging"
_CHUNK = 8 * 2**20

# Uploading states of a file in the ledger. SENT: ``log_artifact`` returned, but W&B does not hold
# it durably yet (offline: the record is not in the log on disk; online: not committed).
PENDING, SENT, UPLOADED, DUPLICATE, SKIPPED, LOST = "pending", "sent", "uploaded", "duplicate", "skipped", "lost"
# A claim written before ModelCheckpoint saves a file (its signature is not known yet): a file at that
# path with a later mtime was written by this run.
SAVING = "saving"
DONE = (UPLOADED, DUPLICATE, SKIPPED, LOST)


def _link(src: str, dst: str) -> None:
    os.link(src, dst)


def _write(fh: Any, data: bytes) -> None:
    fh.write(data)


def _write_wandb(fh: Any, data: bytes) -> None:
    fh.write(data)


def copy_fd(fd: int, dst: str) -> None:
    """Copy the whole file open at ``fd`` to ``dst`` (through ``dst.partial``, removed on any failure,
    ``ENOSPC`` included, so a full disk keeps no partial file)."""
    partial = dst + ".partial"
    try:
        with open(partial, "wb") as out:
            offset = 0
            while chunk := os.pread(fd, _CHUNK, offset):
                _write(out, chunk)
                offset += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


# fsspec schemes a checkpoint folder may use: local ones (a plain path), and remote ones, whose files
# the worker streams through fsspec into the staging folder (tests run `memory://` and `file://`; the
# object stores by design, with their fsspec package installed: s3fs, gcsfs, adlfs).
LOCAL_SCHEMES = ("file", "local")
REMOTE_SCHEMES = ("memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "sftp", "ssh")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def scheme_of(path: str | os.PathLike[str]) -> str | None:
    """The URL scheme of ``path`` (``"memory"`` for ``memory://ck/a.ckpt``), ``None`` for a plain path,
    ``"::"`` for a chained URL (``simplecache::s3://...``)."""
    text = os.fspath(path)
    if "::" in text.split("/", 1)[0]:
        return "::"
    found = _SCHEME.match(text)
    return found.group(1).lower() if found else None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL of a filesystem other than the local one."""
    return scheme_of(path) not in (None, *LOCAL_SCHEMES)


def local_path(path: str | os.PathLike[str]) -> str:
    """``path`` without a ``file://`` / ``local://`` scheme."""
    text = os.fspath(path)
    return text.split("://", 1)[1] if scheme_of(text) in LOCAL_SCHEMES else text


def remote_signature(url: str) -> list[int]:
    """What identifies one content of a remote file without reading it: ``[0, 0, size, mtime ns]``
    (the time of the file's ``info`` where the filesystem gives one, else now). Raises ``OSError``."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(url)
    info = fs.info(inner)
    if info.get("type") not in (None, "file"):
        raise IsADirectoryError(url)
    when: Any = next((info[k] for k in ("mtime", "created", "LastModified", "last_modified", "updated") if info.get(k)),
                None)
    if hasattr(when, "timestamp"):
        ns = int(when.timestamp() * 1e9)
    elif isinstance(when, (int, float)):
        ns = int(when * 1e9)
    else:
        ns = time.time_ns()
    return [0, 0, int(info.get("size") or 0), ns]


def fetch(url: str, dst: str) -> int:
    """Stream the remote file ``url`` through fsspec to ``dst`` (through ``dst.partial``, removed on any
    failure); returns the number of bytes written."""
    import fsspec

    partial = dst + ".partial"
    size = 0
    try:
        with fsspec.open(url, "rb") as fin, open(partial, "wb") as out:
            while chunk := fin.read(_CHUNK):
                _write(out, chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    return size


def folder_files(folder: str) -> list[str]:
    """Every file under ``folder``, as sorted paths relative to it (``/``-separated)."""
    found = []
    for base, _dirs, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(base, name), folder).replace(os.sep, "/"))
    return sorted(found)


def folder_signature(folder: str) -> list[int]:
    """What identifies one content of a checkpoint folder without reading it: device and inode of the
    folder, total size of its files, and the newest mtime among it and its files."""
    st = os.stat(folder)
    total, newest = 0, int(st.st_mtime_ns)
    for rel in folder_files(folder):
        fst = os.stat(os.path.join(folder, rel))
        total += int(fst.st_size)
        newest = max(newest, int(fst.st_mtime_ns))
    return [int(st.st_dev), int(st.st_ino), total, newest]


def manifest_digest(entries: dict[str, str]) -> str:
    """The digest of an artifact manifest holding ``entries`` (path -> base64 md5), computed as W&B
    computes an artifact's digest (hex md5 over ``path:digest`` lines, sorted by path)."""
    hasher = hashlib.md5()
    hasher.update(b"wandb-artifact-manifest-v1\n")
    for name in sorted(entries):
        hasher.update(f"{name}:{entries[name]}\n".encode())
    return hasher.hexdigest()


def link_folder(src: str, dst: str) -> str:
    """Stage the folder ``src`` at ``dst``: ``"link"`` when each file could be hard-linked, ``"copy"``
    when not (another filesystem: the worker copies it, :func:`copy_folder`). ``ENOSPC`` is raised."""
    try:
        for rel in folder_files(src):
            target = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _link(os.path.join(src, rel), target)
        return "link"
    except OSError as err:
        shutil.rmtree(dst, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise
        return "copy"


def copy_folder(src: str, dst: str) -> None:
    """Copy the folder ``src`` to ``dst`` (through ``dst.partial``, removed on any failure)."""
    partial = dst + ".partial"
    try:
        shutil.copytree(src, partial)
        os.replace(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def copy_for_wandb(path: str) -> str:
    """W&B's staged copy of ``path`` (what ``policy="mutable"`` makes: a read-only file in W&B's staging
    folder, which W&B removes once uploaded and ``wandb sync`` uploads offline), made here so that a
    failed copy (W&B's data folder full, say) leaves no partial file behind."""
    folder = wandb_staging_dir()
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f"lw-copy-{os.getpid()}-", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as fin:
            while chunk := fin.read(_CHUNK):
                _write_wandb(out, chunk)
        os.chmod(partial, stat.S_IRUSR)
        dst = partial[: -len(".partial")]
        os.replace(partial, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    return dst


def _dead(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def sweep_partials(folder: str | os.PathLike[str], pattern: str, pid_at: int) -> int:
    """Remove files in ``folder`` matching ``pattern`` left by processes that died while writing them
    (the writer's pid is field ``pid_at`` of the name split on ``-`` or ``.``); how many were removed."""
    removed = 0
    for path in Path(folder).glob(pattern):
        fields = path.name.replace(".", "-").split("-")
        if len(fields) > pid_at and _dead(fields[pid_at]):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
                path.unlink()
                removed += 1
    return removed


def open_source(src: str) -> int:
    """An open descriptor on ``src``: its content stays readable even if the file is deleted."""
    return os.open(src, os.O_RDONLY)


def hand_over(src: str, dst: str) -> tuple[str, int | None]:
    """Stage ``src`` at ``dst``: ``("link", None)`` when a hard link is possible, else
    ``("copy", fd)`` with ``fd`` open on ``src``, for the worker to copy from (:func:`copy_fd`).

    A full disk (``ENOSPC``) is raised at once (a copy onto it fails too: the worker uploads from the
    original or the descriptor); any other failure of the link (``EXDEV``: another filesystem; ``EPERM``
    or ``EACCES``; a filesystem without hard links) falls back to the descriptor, whose copy has its own
    fallback (:meth:`Uploader._stage_copy`).
    """
    try:
        _link(src, dst)
        return "link", None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
    return "copy", open_source(src)


def reflink_or_copy(src: str, dst: str) -> str:
    """Write a copy of ``src`` at ``dst`` that shares no storage with it that a write could change:
    a reflink (``FICLONE``, copy-on-write) where the filesystem offers one, else a plain copy.
    Returns ``"reflink"`` or ``"copy"``. ``dst`` is removed on failure."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            try:
                import fcntl

                fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
                return "reflink"
            except (OSError, ImportError, AttributeError):
                pass
            shutil.copyfileobj(fin, fout, _CHUNK)
            return "copy"
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(dst)
        raise


_FICLONE = 0x40049409  # Linux ioctl: clone a whole file (btrfs, XFS, bcachefs, ...)


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


class Uploader:
    """Hash and log handed-over checkpoints on one daemon thread; retry failures at :meth:`flush`.

    Only the worker thread changes collection state, so ``best`` and ``latest`` are decided in one
    place; they are decided by score and by hand-over order (``seq``), so a version logged late
    (after a retry) still gets the right aliases.

    A logged version is ``sent`` until W&B holds it durably: offline, until its artifact record is in
    the run's log on disk (``log_path``, which an offline run writes every 15 s and at finish),
    checked by decoding only the bytes appended since the last check; online, until the artifact is
    committed (``wait()``). Only then are the staged file and its note removed, so a process killed
    at any moment leaves either the record on disk or the staged file and its note for the next fit.
    """

    MAX_ATTEMPTS = 3
    CHECK_EVERY = 2.0
    #: Seconds the worker waits online for W&B to confirm a version is committed (``Artifact.wait``);
    #: a version not confirmed by then stays ``sent``, its staged copy kept, and the worker goes on.
    COMMIT_TIMEOUT = 300

    def __init__(
        self,
        run: Any,
        ledger: Ledger,
        owner: str,
        run_id: str = "",
        log_path: str | os.PathLike[str] | None = None,
        offline: bool = True,
    ) -> None:
        self.run = run
        self.ledger = ledger
        self.owner = owner
        self.run_id = run_id
        self.log_path = Path(log_path) if log_path is not None else None
        self.offline = offline
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._cond = threading.Condition()
        self._durable_lock = threading.Lock()
        self._active = 0
        self._active_bytes = 0
        self._offset = 0
        self.log_ended = False  # the run's exit record is on disk: nothing more will be recorded
        self.bytes_done = 0
        self.failed: list[Job] = []
        self.deferred: list[Job] = []
        self.sent: list[Job] = []  # logged, not yet durable
        self.lost: list[Job] = []
        self.durable: set[tuple[str, str]] = set()  # (collection, file digest) W&B holds for good
        self.held_anywhere: set[str] = set()  # digests the run's earlier segments hold, in any collection
        self.uploaded: list[tuple[Job, str, list[str], str | None]] = []  # job, digest, aliases, W&B's copy
        # Jobs whose bytes live only in the user's file (a copy not made yet, or staging failed): a
        # rotation of that file is held back until they are kept elsewhere (see :meth:`hold`).
        self.unsafe: dict[str, Job] = {}
        self.warned: set[str] = set()
        self._warned_full = False
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
        """Upload ``job`` (from its original file, or the descriptor held on it) at :meth:`flush`."""
        with self._cond:
            self.deferred.append(job)

    def protect(self, job: Job) -> None:
        """Until ``job``'s bytes are kept outside the user's file, a rotation of that file is held back."""
        with self._cond:
            self.unsafe[job.source] = job

    def hold(self, path: str) -> bool:
        """``ModelCheckpoint`` is about to delete ``path``: if its bytes are not kept elsewhere yet, keep the
        file (the claim on disk says so) and return True; the worker deletes it once they are (or, after a
        crash, the next fit of the run does). False: delete it now."""
        real = os.path.realpath(path)
        with self._cond:
            job = self.unsafe.get(real)
            if job is None:
                return False
            try:
                same = signature(os.stat(real)) == list(job.signature)
            except OSError:
                return False
            if not same:
                return False
            job.held = True
        write_note(job, sync=False)  # the training thread: outlives a killed process, as the file does
        return True

    def settle(self, job: Job) -> None:
        """``job`` no longer needs its source file: delete the source if rotation asked to (and it still
        holds what was claimed), then forget our staged file and note."""
        with self._cond:
            if self.unsafe.get(job.source) is job:
                del self.unsafe[job.source]
        release_source(job)
        self.cleanup(job)

    def kept(self, job: Job) -> None:
        """``job``'s bytes are now kept in its staged copy: a held-back source can go."""
        with self._cond:
            if self.unsafe.get(job.source) is job:
                del self.unsafe[job.source]
        release_source(job)

    def warn_once(self, key: str, message: str) -> None:
        with self._cond:
            if key in self.warned:
                return
            self.warned.add(key)
        warn(message)

    def pending(self) -> int:
        with self._cond:
            return self._active + len(self.failed) + len(self.deferred)

    def not_durable(self) -> list[Job]:
        with self._cond:
            return list(self.sent)

    def disk_full(self, path: str, folder: str | os.PathLike[str]) -> None:
        """One warning, the first time staging meets a full disk, naming the file at risk and the fix."""
        if self._warned_full:
            return
        self._warned_full = True
        warn(
            f"{self.owner}: the staging disk is full (disk full): {path} could not be staged in {folder}, nor can "
            "any later checkpoint while it stays full. Each such file is uploaded from the original instead, and "
            "ModelCheckpoint's top-k rotation of it waits until W&B holds it (the file stays in its folder until "
            "then, also across a crash: the next fit of the run uploads it). Free space on that disk, or pass "
            f"`{self.owner}(staging_dir=...)` on a disk with room."
        )

    def flush(self, timeout: float, progress_bar: bool, min_progress_bytes: int) -> list[Job]:
        """Wait (up to ``timeout`` s) until every job is logged; retry failed and deferred jobs.

        Returns the jobs that are still not logged (failed for good, or not reached in time).
        Logged versions that are not yet durable stay staged (see :meth:`check_durable`).
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
        self.check_durable()
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

    # ----------------------------------------------------------------- durability
    def check_durable(self) -> int:
        """Forget the staged files of sent versions that W&B now holds durably; how many remain sent.

        Offline, the artifact records appended to the run's log since the last check are decoded;
        online, versions are committed before they are marked sent, so nothing waits here.
        """
        from lw_callbacks.records import scan_log

        with self._durable_lock:
            if self.offline and self.log_path is not None:
                try:
                    found, self._offset, exited = scan_log(self.log_path, self._offset)
                except (OSError, ValueError):
                    found, exited = [], False
                self.durable.update(found)
                self.log_ended = self.log_ended or exited
            with self._cond:
                done = [j for j in self.sent if (j.collection, j.digest) in self.durable]
                self.sent = [j for j in self.sent if j not in done]
                left = len(self.sent)
            for job in done:
                self.ledger.set_status(job.source, UPLOADED)
                self.settle(job)
            return left

    def wait_durable(self, timeout: float) -> int:
        """Check again and again, for at most ``timeout`` s, until every sent version is durable."""
        deadline = time.monotonic() + timeout
        while self.check_durable() and time.monotonic() < deadline:
            if self.log_ended or self.log_path is None or not self.log_path.exists():
                break  # it will not come: the staged files stay for the next fit of this run
            time.sleep(0.1)
        return len(self.not_durable())

    def _restore_latest(self) -> None:
        """W&B moves ``latest`` to whatever was logged last; after a retry logged an older checkpoint
        last, log the newest one again (same content: the same version, which takes ``latest`` back)."""

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
                artifact = model_artifact(name, job.metadata)
                if job.folder:  # a folder checkpoint: W&B's staged copy of each of its files
                    for rel, file_digest in job.entries.items():
                        local = job.local_paths.get(rel)
                        if not local or not os.path.isfile(local):
                            raise FileNotFoundError(f"W&B's staged copy {local} is gone")
                        add_hashed_file(artifact, local, rel, file_digest, policy="immutable")
                else:
                    if not copy or not os.path.isfile(copy):
                        raise FileNotFoundError(f"W&B's staged copy {copy} is gone")
                    add_hashed_file(artifact, copy, ENTRY_NAME, digest, policy="immutable")
                aliases = ["latest", *job.aliases]
                log_artifact(self.run, artifact, aliases)
                self.uploaded.append((job, digest, aliases, copy))
            except Exception as err:
                warn(
                    f"{self.owner}: could not move 'latest' of {name!r} back to {job.source} after a retried upload "
                    f"({type(err).__name__}: {err}); 'latest' is on an older checkpoint."
                )

    # ----------------------------------------------------------------- worker
    def _progress(self, n: int) -> None:
        self.bytes_done += n

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.CHECK_EVERY)
            except queue.Empty:
                if self.sent:
                    self.check_durable()
                continue
            if job is None:
                return
            try:
                self._process(job)
            except BaseException as err:  # never let the worker die with jobs behind it
                job.attempts += 1
                job.error = f"{type(err).__name__}: {err}"
                with self._cond:
                    self.failed.append(job)
                if job.staged and os.path.isfile(job.staged):
                    where = f"the copy to upload stays at {job.staged}"
                elif job.fd is not None or os.path.isfile(job.source):
                    where = "it is uploaded from the original file (or the descriptor opened when it was saved)"
                else:
                    where = "no copy of it is left"
                warn(
                    f"{self.owner}: uploading {job.source} to artifact {job.collection!r} failed "
                    f"(attempt {job.attempts}, {job.error}). It is retried when fit ends; the checkpoint "
                    f"file is untouched and {where}."
                )
            finally:
                with self._cond:
                    self._active -= 1
                    self._active_bytes -= job.size
                    self._cond.notify_all()

    def _stage_copy(self, job: Job) -> None:
        """Copy a job handed over as a descriptor into its staged path (off the training thread)."""
        assert job.staged is not None and job.fd is not None
        if signature(os.fstat(job.fd))[2:] != job.signature[2:]:
            return  # rewritten in place already: _process skips it
        try:
            os.makedirs(os.path.dirname(job.staged), exist_ok=True)
            copy_fd(job.fd, job.staged)
        except OSError as err:
            folder = os.path.dirname(job.staged)
            if err.errno == errno.ENOSPC:
                self.disk_full(job.source, folder)
            else:
                self.warn_once(
                    f"copy:{err.errno}",
                    f"{self.owner}: could not copy {job.source} into the staging folder {folder} "
                    f"({errno.errorcode.get(err.errno or 0, 'error')}: {err.strerror or err}); it is uploaded from the "
                    "original file (or the descriptor opened when it was saved), and so is any later checkpoint that "
                    f"cannot be copied there. Pass `{self.owner}(staging_dir=...)` on a folder you can write to.",
                )
            for path in (job.staged, job.staged + ".partial"):
                with contextlib.suppress(OSError):
                    os.remove(path)
            job.staged = None  # upload from the original (or the descriptor) now
            write_note(job)
            return
        if signature(os.fstat(job.fd))[2:] != job.signature[2:]:
            with contextlib.suppress(OSError):
                os.remove(job.staged)  # the copy may mix two contents: take none
            return
        job.copied = True
        job.close_fd()
        write_note(job)
        self.kept(job)

    def _fetch(self, job: Job) -> bool:
        """Stream a remote checkpoint into its staged path (off the training thread); False when it is
        gone or was rewritten meanwhile (its new content has its own hand-over)."""
        assert job.staged is not None
        try:
            size = fetch(job.source, job.staged)
        except FileNotFoundError:
            self.ledger.set_status(job.source, LOST)
            with self._cond:
                self.lost.append(job)
            self.cleanup(job)
            return False
        if size != job.signature[2]:
            self.ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
            self.cleanup(job)
            return False
        job.copied = True
        write_note(job)
        return True

    def _process_folder(self, job: Job) -> None:
        """A checkpoint that is a folder: every file in it is hashed (the version's digest is that of
        its manifest) and uploaded as one version, with paths relative to the folder."""
        if job.staged and not os.path.isdir(job.staged):  # not linked (another filesystem): copy it now
            try:
                copy_folder(job.source, job.staged)
            except FileNotFoundError:
                job.staged = None
            else:
                job.copied = True
                write_note(job)
        path = job.staged if job.staged and os.path.isdir(job.staged) else None
        if path is None:
            if os.path.isdir(job.source) and folder_signature(job.source)[2:] == job.signature[2:]:
                path = job.source
            else:
                self.ledger.set_status(job.source, LOST)
                with self._cond:
                    self.lost.append(job)
                self.cleanup(job)
                return
        before = folder_signature(path)
        job.entries = {rel: md5_b64(os.path.join(path, rel), self._progress) for rel in folder_files(path)}
        self._publish(job, path, manifest_digest(job.entries), before)

    def _process(self, job: Job) -> None:
        ledger = self.ledger
        if job.folder:
            self._process_folder(job)
            return
        if job.remote and job.staged and not os.path.isfile(job.staged) and not self._fetch(job):
            return
        if job.staged and job.fd is not None and not os.path.isfile(job.staged):
            self._stage_copy(job)
        path = job.staged if job.staged and os.path.isfile(job.staged) else None
        fd_path = f"/proc/self/fd/{job.fd}" if job.fd is not None else None
        if path is None:
            if job.staged and job.fd is None:
                raise FileNotFoundError(f"the staged copy {job.staged} is gone")
            if job.staged and job.fd is not None:
                # the copy was dropped: the file changed while it was copied
                ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
                self.rewritten(job)
                self.settle(job)
                return
            if os.path.isfile(job.source) and signature(os.stat(job.source))[2:] == job.signature[2:]:
                path = job.source
            elif fd_path is not None and os.path.exists(fd_path):
                path = fd_path  # deleted since, but the descriptor taken at hand-over still reads it
            else:
                ledger.set_status(job.source, LOST)
                with self._cond:
                    self.lost.append(job)
                self.settle(job)
                return
        before = signature(os.stat(path))
        digest = md5_b64(path, self._progress)  # the only read of the file that hashes it
        staged_sig = signature(os.stat(path)) if path == job.staged else None
        linked = staged_sig is not None and not job.copied and staged_sig[:2] == job.signature[:2]
        if linked and staged_sig is not None and staged_sig[2:] != job.signature[2:]:
            # The file was rewritten in place under our hard link; its new content has its own hand-over.
            # (A staged copy has an identity of its own: it is what was read, whole, and is uploaded.)
            ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
            self.rewritten(job)
            self.settle(job)
            return
        self._publish(job, path, digest, before)

    def _publish(self, job: Job, path: str, digest: str, before: list[int]) -> None:
        """Log the hashed content at ``path`` as a new version of its collection (unless the collection
        holds it), with ``latest`` / ``best`` decided here, and see it to W&B durably."""
        ledger = self.ledger
        job.digest = digest
        state = ledger.collection(job.collection)
        held = job.unclaimed and digest in self.held_anywhere  # another ModelCheckpoint's file, say
        if digest in state.digests or (job.collection, digest) in self.durable or held:
            ledger.set_status(job.source, DUPLICATE, digest=digest, seq=job.seq)
            self.settle(job)
            return
        aliases: list[str] = []
        if job.seq > state.latest_seq:
            aliases.append("latest")
        if state.takes_best(job):
            aliases.append("best")
        aliases.extend(a for a in job.aliases if a not in aliases)
        logged = self._log(job, path, aliases, digest, before)
        if logged is None:  # changed while W&B copied it: its new content has its own hand-over
            ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
            self.rewritten(job)
            self.settle(job)
            return
        staged_by_wandb, artifact = logged
        with ledger.lock:
            state.digests[digest] = job.seq
            state.latest_seq = max(state.latest_seq, job.seq)
            if "best" in aliases:
                state.best_score = job.score
                state.best_seq = job.seq
        with self._cond:
            self.uploaded.append((job, digest, aliases, staged_by_wandb))
        if self.offline:
            job.status = SENT
            ledger.set_status(job.source, SENT, digest=digest, seq=job.seq, run_id=self.run_id)
            write_note(job)
            with self._cond:
                self.sent.append(job)
            job.close_fd()
            return
        try:
            artifact.wait(timeout=self.COMMIT_TIMEOUT)  # committed on the server: durable
        except Exception as err:  # logged, but not known to be committed: keep the staged copy
            warn(
                f"{self.owner}: W&B did not confirm that {job.source} ({job.collection!r}) was committed "
                f"({type(err).__name__}: {err}); its staged copy stays until a later fit of this run checks it."
            )
            job.status = SENT
            ledger.set_status(job.source, SENT, digest=digest, seq=job.seq, run_id=self.run_id)
            write_note(job)
            return
        with self._durable_lock:
            self.durable.add((job.collection, digest))
        ledger.set_status(job.source, UPLOADED, digest=digest, seq=job.seq, run_id=self.run_id)
        self.settle(job)

    def rewritten(self, job: Job) -> None:
        """One warning per file whose content changed before it was read: that content is not uploaded."""
        self.warn_once(
            f"rewritten:{job.source}",
            f"{self.owner}: {job.source} was rewritten in place (same file, new content) before its earlier "
            "content could be read, so that content is not uploaded (the newer one is). This happens when the "
            "file name does not change between saves and the checkpoint is written in place, as when the "
            "checkpoint folder and the temporary folder ($TMPDIR) are on different filesystems. Put $TMPDIR on "
            "the checkpoints' filesystem, or give ModelCheckpoint a `filename` with `{epoch}` or `{step}`.",
        )

    def _log(
        self, job: Job, path: str, aliases: list[str], digest: str, before: list[int]
    ) -> tuple[str | None, Any] | None:
        """Log ``path`` (hashed to ``digest`` when its signature was ``before``) as a new version; ``None``
        (nothing logged) when the file changed before W&B's staged copy of it was complete."""

        artifact = model_artifact(job.collection, job.metadata)
        if job.folder:
            added = [add_hashed_file(artifact, os.path.join(path, rel), rel, d) for rel, d in job.entries.items()]
            try:
                if folder_signature(path)[2:] != before[2:]:
                    for item, rel in zip(added, job.entries, strict=True):
                        _remove_wandb_copy(item, os.path.join(path, rel))
                    return None
                logged = log_artifact(self.run, artifact, aliases)
            except BaseException:
                for item, rel in zip(added, job.entries, strict=True):
                    _remove_wandb_copy(item, os.path.join(path, rel))
                raise
            job.local_paths = {rel: getattr(e, "local_path", None) for rel, e in zip(job.entries, added, strict=True)}
            return None if not added else getattr(added[0], "local_path", None), (
                logged if logged is not None else artifact
            )
        # W&B's staged copy of the content we hashed, made on this thread (as `policy="mutable"` would, but
        # removed if the copy fails); W&B does not hash it again
        try:
            copy = copy_for_wandb(path)
        except OSError as err:
            raise OSError(
                err.errno, f"could not make W&B's staged copy in {wandb_staging_dir()} ({err.strerror or err}); "
                "free space there or set WANDB_DATA_DIR to a folder with room"
            ) from err
        try:
            entry = add_hashed_file(artifact, copy, ENTRY_NAME, digest, policy="immutable")
            if getattr(entry, "digest", digest) != digest or signature(os.stat(path))[2:] != before[2:]:
                _remove_wandb_copy(copy)
                return None
            logged = log_artifact(self.run, artifact, aliases)
        except BaseException:
            _remove_wandb_copy(copy)
            raise
        return copy, logged if logged is not None else artifact

    @staticmethod
    def cleanup_files(job: Job) -> None:
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

    @classmethod
    def cleanup(cls, job: Job) -> None:
        """Remove our staged hard link / copy and its note (never the user's checkpoint)."""
        job.close_fd()
        cls.cleanup_files(job)


def _remove_wandb_copy(copy: Any, path: str | None = None) -> None:
    """Remove W&B's staged copy (a path, or a manifest entry whose ``local_path`` is not ``path``) made
    for an artifact that is not logged: nothing refers to it."""
    staged = copy if isinstance(copy, str) else getattr(copy, "local_path", None)
    if not staged or (path is not None and os.path.abspath(staged) == os.path.abspath(path)):
        return
    try:
        os.chmod(staged, 0o600)
        os.remove(staged)
    except OSError:
        pass


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
        if _dead(pid):
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
