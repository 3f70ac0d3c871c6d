"""The upload worker shared by :class:`~lw_callbacks.UploadCheckpoints` and
:class:`~lw_callbacks.fabric.FabricUploadCheckpoints` (through :mod:`lw_callbacks.core.publish`).

:class:`Uploader` hashes and logs the handed-over files (:func:`~lw_callbacks.core.files.hand_over`)
on one daemon worker thread, retries failures when asked to flush, and forgets a staged file (and its
note) only once W&B durably holds its version: offline, once the artifact record is in the run's
``.wandb`` file on disk; online, once the artifact is committed.

Each checkpoint is read once to hash it: W&B is handed that digest and only makes its own staged copy
(``policy="mutable"``). Our staged file is not handed to W&B in place of that copy: a hard link shares
the checkpoint's content, which ``ModelCheckpoint`` may rewrite in place under the same name; and an
offline run's manifest must point at a file that lasts until ``wandb sync``, while ours is removed as soon
as the record is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lw_callbacks._errors import warn
from lw_callbacks._wandb import add_hashed_file, log_artifact, model_artifact, wandb_staging_dir
from lw_callbacks.core import files, jobs
from lw_callbacks.core.jobs import DUPLICATE, LOST, SENT, SKIPPED, UPLOADED, Job, Ledger

if TYPE_CHECKING:
    from wandb import Run

ENTRY_NAME = "model.ckpt"


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
        run: Run,
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
                same = files.signature(os.stat(real)) == list(job.signature)
            except OSError:
                return False
            if not same:
                return False
            job.held = True
        jobs.write_note(job, sync=False)  # the training thread: outlives a killed process, as the file does
        return True

    def settle(self, job: Job) -> None:
        """``job`` no longer needs its source file: delete the source if rotation asked to (and it still
        holds what was claimed), then forget our staged file and note."""
        with self._cond:
            if self.unsafe.get(job.source) is job:
                del self.unsafe[job.source]
        jobs.release_source(job)
        jobs.forget_staged(job)

    def kept(self, job: Job) -> None:
        """``job``'s bytes are now kept in its staged copy: a held-back source can go."""
        with self._cond:
            if self.unsafe.get(job.source) is job:
                del self.unsafe[job.source]
        jobs.release_source(job)

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
        if files.signature(os.fstat(job.fd))[2:] != job.signature[2:]:
            return  # rewritten in place already: _process skips it
        try:
            os.makedirs(os.path.dirname(job.staged), exist_ok=True)
            files.copy_fd(job.fd, job.staged)
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
            jobs.write_note(job)
            return
        if files.signature(os.fstat(job.fd))[2:] != job.signature[2:]:
            with contextlib.suppress(OSError):
                os.remove(job.staged)  # the copy may mix two contents: take none
            return
        job.copied = True
        job.close_fd()
        jobs.write_note(job)
        self.kept(job)

    def _fetch(self, job: Job) -> bool:
        """Stream a remote checkpoint into its staged path (off the training thread); False when it is
        gone or was rewritten meanwhile (its new content has its own hand-over)."""
        assert job.staged is not None
        try:
            size = files.fetch(job.source, job.staged)
        except FileNotFoundError:
            self.ledger.set_status(job.source, LOST)
            with self._cond:
                self.lost.append(job)
            jobs.forget_staged(job)
            return False
        if size != job.signature[2]:
            self.ledger.set_status(job.source, SKIPPED, reason="rewritten before upload")
            jobs.forget_staged(job)
            return False
        job.copied = True
        jobs.write_note(job)
        return True

    def _process_folder(self, job: Job) -> None:
        """A checkpoint that is a folder: every file in it is hashed (the version's digest is that of
        its manifest) and uploaded as one version, with paths relative to the folder."""
        if job.staged and not os.path.isdir(job.staged):  # not linked (another filesystem): copy it now
            try:
                files.copy_folder(job.source, job.staged)
            except FileNotFoundError:
                job.staged = None
            else:
                job.copied = True
                jobs.write_note(job)
        path = job.staged if job.staged and os.path.isdir(job.staged) else None
        if path is None:
            if os.path.isdir(job.source) and files.folder_signature(job.source)[2:] == job.signature[2:]:
                path = job.source
            else:
                self.ledger.set_status(job.source, LOST)
                with self._cond:
                    self.lost.append(job)
                jobs.forget_staged(job)
                return
        before = files.folder_signature(path)
        job.entries = {rel: files.md5_b64(os.path.join(path, rel), self._progress) for rel in files.folder_files(path)}
        self._publish(job, path, files.manifest_digest(job.entries), before)

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
            if os.path.isfile(job.source) and files.signature(os.stat(job.source))[2:] == job.signature[2:]:
                path = job.source
            elif fd_path is not None and os.path.exists(fd_path):
                path = fd_path  # deleted since, but the descriptor taken at hand-over still reads it
            else:
                ledger.set_status(job.source, LOST)
                with self._cond:
                    self.lost.append(job)
                self.settle(job)
                return
        before = files.signature(os.stat(path))
        digest = files.md5_b64(path, self._progress)  # the only read of the file that hashes it
        staged_sig = files.signature(os.stat(path)) if path == job.staged else None
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
            jobs.write_note(job)
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
            jobs.write_note(job)
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
                if files.folder_signature(path)[2:] != before[2:]:
                    for item, rel in zip(added, job.entries, strict=True):
                        files.remove_wandb_copy(item, os.path.join(path, rel))
                    return None
                logged = log_artifact(self.run, artifact, aliases)
            except BaseException:
                for item, rel in zip(added, job.entries, strict=True):
                    files.remove_wandb_copy(item, os.path.join(path, rel))
                raise
            job.local_paths = {rel: getattr(e, "local_path", None) for rel, e in zip(job.entries, added, strict=True)}
            return None if not added else getattr(added[0], "local_path", None), (
                logged if logged is not None else artifact
            )
        # W&B's staged copy of the content we hashed, made on this thread (as `policy="mutable"` would, but
        # removed if the copy fails); W&B does not hash it again
        try:
            copy = files.copy_for_wandb(path)
        except OSError as err:
            raise OSError(
                err.errno, f"could not make W&B's staged copy in {wandb_staging_dir()} ({err.strerror or err}); "
                "free space there or set WANDB_DATA_DIR to a folder with room"
            ) from err
        try:
            entry = add_hashed_file(artifact, copy, ENTRY_NAME, digest, policy="immutable")
            if getattr(entry, "digest", digest) != digest or files.signature(os.stat(path))[2:] != before[2:]:
                files.remove_wandb_copy(copy)
                return None
            logged = log_artifact(self.run, artifact, aliases)
        except BaseException:
            files.remove_wandb_copy(copy)
            raise
        return copy, logged if logged is not None else artifact
