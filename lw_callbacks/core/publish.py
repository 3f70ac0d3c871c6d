"""Checkpoint publishing shared by :class:`~lw_callbacks.UploadCheckpoints` and
:class:`~lw_callbacks.fabric.FabricUploadCheckpoints`.

The adapters find the checkpoint files (a Trainer's ``ModelCheckpoint`` callbacks, or the paths a
Fabric loop passes) and say what each one is; a :class:`Publisher` does the rest, with no Trainer:

- the hand-over of a file to the upload worker (:mod:`lw_callbacks.core.uploader`), the ledger it
  keeps in the adapter's ``state_dict``, the flush when training ends or fails, and the flush and
  clean-up at ``wandb.finish()``;
- at the start of a fit of a resumed run, what the run's earlier segments hold and what this run
  left staged (:meth:`Publisher.recover`);
- what was logged in this process, kept in :data:`~lw_callbacks.core.versions.LOGGED` (the names,
  aliases and metadata of a version are in :mod:`lw_callbacks.core.versions`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lw_callbacks._errors import ConfigurationError, warn
from lw_callbacks._wandb import at_finish, run_folder, run_is_offline, wandb_staging_dir
from lw_callbacks.core import files, jobs
from lw_callbacks.core.jobs import LOST, PENDING, SAVING, SENT, STAGING_FOLDER, UPLOADED, Job, Ledger
from lw_callbacks.core.uploader import Uploader
from lw_callbacks.core.versions import LOGGED, UploadOptions, as_float, records_versions, sanitize, version_record

if TYPE_CHECKING:
    from wandb import Run

PROGRESS_MIN_BYTES = 64 * 2**20
DURABLE_WAIT_S = 30.0
# Publishers whose flush runs at the finish of a run (by ``id`` of the run), and the threads that
# forget staged files once the finished run's log holds their records.
FINISH_HOOKED: dict[int, list[Publisher]] = {}
CLEANUPS: list[threading.Thread] = []


def wait_for_cleanups(timeout: float = 60.0) -> None:
    """Wait for the threads that forget staged files after a run finished (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while CLEANUPS:
        CLEANUPS.pop().join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------- versions
def logged_by(uploader: Uploader | None) -> dict[str, list[dict[str, Any]]] | None:
    """The versions ``uploader`` logged per collection, numbered and aliased as W&B does."""
    if uploader is None or not uploader.uploaded:
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for job, digest, aliases, local_path in uploader.uploaded:
        if job.collection not in out:
            out[job.collection] = [dict(v, aliases=list(v["aliases"])) for v in LOGGED.get(job.collection, [])]
        versions = out[job.collection]
        same = next((v for v in versions if v["digest"] == digest), None)
        if same is None:
            files = [(rel, d, _entry_size(job, rel), job.local_paths.get(rel)) for rel, d in job.entries.items()]
            same = version_record(len(versions), digest, job.size, local_path, [], job.metadata, files)
            versions.append(same)
        for alias in ["latest", *aliases]:  # W&B adds `latest`; an alias lives on the newest version logged with it
            for v in versions:
                if alias in v["aliases"]:
                    v["aliases"].remove(alias)
            same["aliases"].append(alias)
    return out


def _entry_size(job: Any, rel: str) -> int:
    path = job.local_paths.get(rel)
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


# ---------------------------------------------------------------------- publisher
@dataclass
class Recovered:
    """What :meth:`Publisher.recover` found: whether earlier segments of the run were read, when the run
    began (by their records), the (collection, digest) pairs W&B holds, and the files handed over again."""

    segments_read: bool = False
    started: float | None = None
    known: set[tuple[str, str]] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)
    saved: dict[str, list[str]] = field(default_factory=dict)  # files claimed as being saved: source -> notes


class Publisher:
    """Hands checkpoint files over to an upload worker and sees them into W&B, for one adapter.

    Args:
        options: the upload's options, checked (the adapter's own copy).
    """

    def __init__(self, options: UploadOptions) -> None:
        self.options = options
        self.ledger = Ledger()
        self.state_loaded = False  # the ledger came from a checkpoint (a resumed fit)
        self.uploader: Uploader | None = None  # the worker of the fit in progress
        self.last_uploader: Uploader | None = None  # the worker of the fit that ended last
        self.finishing: list[Uploader] = []  # workers whose versions the run's finish sees to
        self.warned_copy = False
        self.warned_claim = False
        self.reported_others: set[str] = set()
        self.claims_root: Path | None = None  # where claims go when the staging folder cannot hold them
        self.copy_s = 0.0  # time the training thread spent copying files rewritten in place (see stage_and_submit)
        self.copies = 0

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into the new processes: a live worker stays behind
        state = self.__dict__.copy()
        state["uploader"] = state["last_uploader"] = None
        state["finishing"] = []
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ledger" in state_dict:
            self.ledger = Ledger.from_dict(state_dict["ledger"])
            self.state_loaded = True

    def staging_for(self, folder: str | os.PathLike[str]) -> Path:
        """The staging root for checkpoints in ``folder``; each run and collection has a folder in it."""
        if self.options.staging_dir is not None:
            return Path(os.path.abspath(self.options.staging_dir))
        if files.is_remote(folder):  # a remote folder's files are staged in the working directory
            return Path.cwd().resolve() / STAGING_FOLDER
        return Path(os.path.abspath(files.local_path(folder))) / STAGING_FOLDER

    def staging_problem(self) -> str | None:
        """Why ``staging_dir`` cannot be used (it cannot be created, or a file cannot be written in it),
        or ``None``. The default (``.upload-staging`` beside each checkpoint) is not checked: it lives in
        the folder ``ModelCheckpoint`` itself writes to."""
        if self.options.staging_dir is None:
            return None
        root = Path(os.path.abspath(self.options.staging_dir))
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=root, prefix=".probe-")
            os.close(fd)
            os.remove(probe)
        except OSError as err:
            code = errno.errorcode.get(err.errno or 0, "error")
            return (
                f"{self.options.owner}(staging_dir={self.options.staging_dir!r}): cannot stage checkpoints "
                f"there ({code}: "
                f"{err.strerror or err}). Pass a folder you can write to (it is created if missing), e.g. on the "
                "checkpoints' filesystem, or leave `staging_dir=None` to stage beside each checkpoint."
            )
        return None

    def check_staging(self) -> None:
        """Raise :class:`~lw_callbacks.ConfigurationError` naming ``staging_dir`` when it cannot be used."""
        problem = self.staging_problem()
        if problem is not None:
            raise ConfigurationError(problem)

    def staging_roots(self, folders: Sequence[str | os.PathLike[str]]) -> list[Path]:
        """Every root that can hold this run's claims for checkpoints in ``folders``."""
        roots = {self.staging_for(f) for f in folders}
        roots |= {Path(os.path.abspath(f)) / STAGING_FOLDER for f in folders}
        if self.claims_root is not None:
            roots.add(self.claims_root)
        return sorted(roots)

    def begin(self, run: Run, logger: Any, owner: str | None = None) -> Uploader:
        """Start the worker for this fit, told where the run's log is, and flushed at the run's finish."""
        offline = run_is_offline(run)
        log_path = None
        try:
            self.claims_root = run_folder(run, logger).parent / STAGING_FOLDER
        except Exception:
            self.claims_root = None
        if offline:
            log_path = run_folder(run, logger) / f"run-{run.id}.wandb"
        uploader = Uploader(
            run, self.ledger, owner or self.options.owner, run_id=str(run.id), log_path=log_path, offline=offline
        )
        self.finishing = [u for u in self.finishing if u.not_durable() or u.pending()]
        self.finishing.append(uploader)
        key = id(run)
        hooked = FINISH_HOOKED.setdefault(key, [])
        if self not in hooked:
            hooked.append(self)

            def late() -> None:
                FINISH_HOOKED.pop(key, None)
                self.after_run_finish()

            at_finish(run, early=self.at_run_finish, late=late)
        self.uploader = uploader
        with contextlib.suppress(Exception):  # W&B's staged copies a killed process of ours left half-written
            files.sweep_partials(wandb_staging_dir(), "lw-copy-*.partial", 2)
        uploader.start()
        return uploader

    # ------------------------------------------------------------------ resume
    def recover(self, collection_names: Sequence[str], staging_roots: Sequence[Path]) -> Recovered:
        """Upload what earlier segments of this run left undone, whatever moment they were killed at.

        The records of the run's earlier segments (same run id, offline folders beside this one) say
        which (collection, digest) W&B holds. Staged files of this run whose digest they lack are
        uploaded again. The adapter then hands over its files on disk that the records lack (the
        worker hashes each one and skips content already held).
        """
        from lw_callbacks.records import read_segments, segments_of

        uploader = self.uploader
        assert uploader is not None
        ledger = self.ledger
        run_id = uploader.run_id
        previous = None
        started: float | None = None
        if uploader.log_path is not None:
            current = uploader.log_path.parent.resolve()
            try:
                segments = [p for p in segments_of(current.parent, run_id) if p.resolve() != current]
            except (FileNotFoundError, ValueError):
                segments = []
            if segments:
                previous = read_segments(segments, timeout=0)
                started = previous.started_at
                if started is None:
                    started = min(p.stat().st_mtime for p in segments) - 60.0
        known: set[tuple[str, str]] = previous.digests() if previous is not None else set()
        uploader.durable |= known
        uploader.held_anywhere |= {digest for _name, digest in known}
        # Sent by an earlier fit of this process (same segment), not yet on disk: its uploader keeps
        # the staged files until they are; nothing to hand over again.
        earlier = [u for u in self.finishing if u is not uploader]
        in_flight = {j.staged for u in earlier for j in u.not_durable() if j.staged}
        known |= {(j.collection, j.digest or "") for u in earlier for j in u.not_durable()}
        known |= {pair for u in earlier for pair in u.durable}
        if previous is not None:
            for name in collection_names:
                state = ledger.collection(name)
                state.digests = {d: q for d, q in state.digests.items() if (name, d) in known}
                versions = previous.artifacts(name)
                for v in versions:
                    for e in v.entries:
                        state.digests.setdefault(e.digest, -1)
                best = next((v for v in versions if "best" in v.aliases), None)
                if best is not None and state.best_score is None:
                    state.best_score = as_float(best.metadata.get("score"))
                if versions:
                    LOGGED[name] = records_versions(versions)
            for real, entry in list(ledger.files.items()):
                ours = entry.get("status") in (SENT, UPLOADED) and entry.get("run_id") == run_id
                if ours and (entry.get("collection"), entry.get("digest")) not in known:
                    ledger.forget(real)  # not in W&B after all: handed over again below
        queued: set[str] = set()
        saved: dict[str, list[str]] = {}
        lost: list[Job] = []
        for root in sorted(set(staging_roots)):
            claimed, others = jobs.read_staged(root, run_id)
            for other, notes in others.items():
                if other not in self.reported_others:
                    self.reported_others.add(other)
                    warn(
                        f"{self.options.owner}: {root} holds {len(notes)} staged checkpoint(s) of another run "
                        f"({other}); "
                        "they are not uploaded into this run. Resume that run to upload them, or delete them."
                    )
            for job in claimed:
                if job.status == SAVING:  # saved by this run, killed before its hand-over: the adapter hands it over
                    saved.setdefault(job.source, []).append(str(job.note))
                    continue
                if job.staged and job.staged in in_flight:
                    continue
                if any(j.note == job.note for u in earlier for j in u.unsafe.values()):
                    continue
                if job.digest and (job.collection, job.digest) in known:
                    ledger.set_status(job.source, UPLOADED)
                    jobs.release_source(job)
                    jobs.forget_staged(job)
                    continue
                if job.status == LOST:
                    lost.append(job)
                    jobs.forget_staged(job)
                    continue
                job.seq = ledger.take_seq()
                job.attempts, job.error, job.status, job.fd = 0, "", PENDING, None
                ledger.collection(job.collection, job.metadata.get("monitor"), job.metadata.get("mode", "min"))
                ledger.note(job.source, job.signature, PENDING, collection=job.collection, seq=job.seq, run_id=run_id)
                if job.staged is None:
                    # a claimed file the earlier process did not stage: its rotation waits until W&B holds it,
                    # and a descriptor keeps the claimed content readable if a rerun saves over the name
                    with contextlib.suppress(OSError):
                        job.fd = files.open_source(job.source)
                    uploader.protect(job)
                uploader.submit(job)
                queued.add(job.source)
        if lost:
            warn(
                f"{self.options.owner}: {len(lost)} checkpoint(s) claimed by an earlier process of this run "
                "were neither "
                "staged nor left in place (deleted or changed on disk), and the run's records do not hold them; "
                "they are not in W&B:\n" + "\n".join(f"  {j.source} -> {j.collection}" for j in lost)
            )
        return Recovered(previous is not None, started, known, queued, saved)

    # ------------------------------------------------------------------ hand-over (training thread)
    def stage_and_submit(
        self,
        path: str,
        real: str,
        sig: list[int],
        collection: str,
        score: float | None,
        metadata: dict[str, Any],
        aliases: list[str],
        unclaimed: bool = False,
        best: bool = False,
        remote: bool = False,
        is_folder: bool = False,
        in_place: bool = False,
    ) -> None:
        """Hand ``real`` over to the upload worker and claim it on disk before returning.

        The hand-over is a hard link in this run's staging folder, or (on another filesystem, or when
        the link fails for any reason but a full disk) a descriptor open on the file that the worker
        copies from. A file that may be rewritten in place (``in_place``, or its inode seen with another
        content before) is copied here, on the training thread: a link or a descriptor would see the next
        content if it came before the worker read this one. When staging fails, the worker uploads from the original
        (or the descriptor) at once. The claim is a note (synced to disk) naming the source, its signature
        and where it is staged, in the staging folder or, when that cannot hold it, under the run's W&B
        folder; until the file's bytes are kept elsewhere, ``ModelCheckpoint``'s rotation of it waits
        (:meth:`~lw_callbacks.core.uploader.Uploader.hold`). If anything here raises, nothing is left
        marked pending. A ``remote`` file (an fsspec URL) is streamed into the staging folder by the worker;
        a folder (``is_folder``) is hard-linked file by file, or copied by the worker."""
        uploader = self.uploader
        assert uploader is not None
        seq = self.ledger.take_seq()
        run_id = uploader.run_id
        run_part = sanitize(run_id or "run")
        folder = self.staging_for(os.path.dirname(real)) / run_part / collection
        name = f"{seq:06d}-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}"
        staged: str | None = str(folder / name)
        assert staged is not None
        fd: int | None = None
        copied = False
        known = self.ledger.files.get(real)
        # the same inode with a new content while the earlier one is not read yet: written in place (a link keeps
        # the inode of a pending file alive, so this is never an inode number reused after a deletion)
        rewritten = (known is not None and list(known.get("signature", []))[:2] == sig[:2]
                     and known.get("status") == PENDING)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if is_folder:  # one hard link per file; on another filesystem the worker copies the folder
                how, fd = files.link_folder(real, staged), None
            elif remote:
                how, fd = "fetch", None
            elif in_place or rewritten:
                how = "copied"
                began = time.perf_counter()
                files.reflink_or_copy(real, staged)
                self.copy_s += time.perf_counter() - began
                self.copies += 1
                if files.signature(os.stat(real))[2:] != sig[2:]:
                    os.remove(staged)
                    raise OSError(errno.EAGAIN, "rewritten while it was copied", real)
                copied = True
            else:
                how, fd = files.hand_over(real, staged)
            if how == "copy" and not self.warned_copy:
                self.warned_copy = True
                warn(
                    f"{self.options.owner}: could not hard-link checkpoints into {folder} (another "
                    "filesystem?), so the "
                    "upload worker copies each one there, from a file descriptor opened when it was saved "
                    "(training does not wait for the copy; it costs disk space and I/O, and ModelCheckpoint's "
                    "rotation of a file waits until its copy is made). Pass `staging_dir` on the checkpoints' "
                    "filesystem to avoid the copy."
                )
        except OSError as err:
            if err.errno == errno.ENOSPC:
                uploader.disk_full(path, folder)
            else:
                code = errno.errorcode.get(err.errno or 0, "error")
                uploader.warn_once(
                    f"stage:{err.errno}",
                    f"{self.options.owner}: could not stage {path} in {folder} ({code}: {err.strerror or err}). "
                    "It is uploaded from the original file (or a descriptor opened now), "
                    "and so is any later checkpoint that cannot be staged there; ModelCheckpoint's rotation of such "
                    f"a file waits until W&B holds it. Pass `{self.options.owner}(staging_dir=...)` on a "
                    "folder you can "
                    "write to.",
                )
            staged = None
            copied = False
            try:  # keeps the content readable if rotation deletes the file
                fd = None if remote or is_folder else files.open_source(real)
            except OSError:
                fd = None
        job = Job(seq, collection, real, staged, sig[2], sig, score, metadata, aliases, run_id=run_id, fd=fd,
                  unclaimed=unclaimed, best=best, remote=remote, folder=is_folder, copied=copied)
        # Written, not synced, on the training thread: in the page cache it outlives the process (a kill),
        # as the checkpoint file itself does; the worker writes it again synced, with the digest.
        self.claim(job, [folder / (name + ".json")] if staged is None else [], sync=False)
        self.ledger.note(real, sig, PENDING, collection=collection, seq=seq, run_id=run_id,
                         global_step=metadata.get("global_step"))
        try:
            if (staged is None or fd is not None) and not (remote or is_folder):
                uploader.protect(job)  # its bytes are only in the user's file until staged or uploaded
            uploader.submit(job)
        except BaseException:
            self.ledger.forget(real)
            jobs.forget_staged(job)
            raise
        if staged is None:  # nothing will be staged in the folder made for it
            jobs.remove_empty_parents(folder)

    def saving(self, path: str, collection: str) -> str | None:
        """Claim ``path`` before ``ModelCheckpoint`` writes it (not synced: it guards against the process
        being killed between the write and :meth:`stage_and_submit`); returns the note, to pass to
        :meth:`saved` once the file is handed over."""
        uploader = self.uploader
        if uploader is None or files.is_remote(path):
            return None
        real = os.path.realpath(path)
        run_part = sanitize(uploader.run_id or "run")
        folder = self.staging_for(os.path.dirname(real)) / run_part / collection
        job = Job(-1, collection, real, None, 0, [], None, {"time_ns": time.time_ns() - 50_000_000}, [],
                  run_id=uploader.run_id, status=SAVING)
        self.claim(job, [folder / f"saving-{uuid.uuid4().hex[:12]}.json"], first=False, sync=False)
        return job.note

    @staticmethod
    def saved(note: str | None) -> None:
        """The file claimed by ``note`` (from :meth:`saving`) is handed over, or needs no claim."""
        if note:
            with contextlib.suppress(OSError):
                os.remove(note)
            jobs.remove_empty_parents(Path(note).parent)

    def claim(self, job: Job, candidates: list[Path], first: bool = True, sync: bool = True) -> None:
        """Write ``job``'s note: beside its staged file, else in ``candidates``, else under the run's W&B folder."""
        places: list[str | None] = [None] if job.staged and first else []
        places += [str(c) for c in candidates]
        if self.claims_root is not None:
            places.append(str(self.claims_root / sanitize(job.run_id or "run") / job.collection /
                              f"{job.seq:06d}-{uuid.uuid4().hex[:8]}-{os.path.basename(job.source)}.json"))
        for place in places:
            if place is not None:
                with contextlib.suppress(OSError):
                    os.makedirs(os.path.dirname(place), exist_ok=True)
            job.note = None
            if jobs.write_note(job, place, sync):
                return
        job.note = None
        if not self.warned_claim:
            self.warned_claim = True
            warn(
                f"{self.options.owner}: could not record {job.source} on disk as this run's checkpoint (no room or no "
                "permission in the staging folder and in the run's W&B folder): it is uploaded, but if the process "
                "dies before, a later fit of this run cannot know it was saved."
            )

    # ------------------------------------------------------------------ flush
    def flush(self, why: str, timeout: float | None = None) -> None:
        """Wait for this fit's uploads (at most ``timeout``, default ``flush_timeout``) and stop its worker."""
        uploader = self.uploader
        if uploader is None:
            return
        self.uploader = None
        self.last_uploader = uploader
        limit = self.options.flush_timeout if timeout is None else timeout
        left = uploader.flush(limit, self.options.progress_bar, PROGRESS_MIN_BYTES)
        stopped = uploader.stop(timeout=5.0 if not left else 0.1)
        if left and limit < self.options.flush_timeout:
            warn(
                f"{self.options.owner}: {len(left)} checkpoint upload(s) still running when {why}; the other processes "
                f"cannot wait longer than half the process group's timeout ({limit:g}s), so they go on in the "
                "background and `wandb.finish()` waits for them (up to `flush_timeout`)."
            )
            return
        self.report(uploader, left, why)
        if not left and not stopped:
            warn(f"{self.options.owner}: the upload worker did not stop; a daemon thread, it ends with the process.")

    def report(self, uploader: Uploader, left: list[Job], why: str) -> None:
        """Warn about the checkpoints lost before they could be uploaded, and those ``left`` unlogged."""
        lost, uploader.lost = list(uploader.lost), []
        if lost:
            warn(
                f"{self.options.owner}: {len(lost)} checkpoint(s) could not be staged when they were saved and "
                "were deleted "
                "(by ModelCheckpoint's top-k rotation?) before they could be uploaded from the original; they are "
                "not in W&B:\n" + "\n".join(f"  {j.source} -> {j.collection}" for j in lost)
            )
        if left:
            lines = "\n".join(f"  {j.source} -> {j.collection}" + (f" ({j.error})" if j.error else " (not reached)")
                               + _kept_at(j) for j in left)
            warn(
                f"{self.options.owner}: {len(left)} checkpoint(s) were not uploaded when {why} "
                f"(flush_timeout={self.options.flush_timeout:g}s):\n{lines}\nThe next fit of this run (same "
                "run id) uploads "
                "what is kept (staged copies, and files whose rotation was held back); your checkpoint files are "
                "untouched."
            )

    def hold(self, path: str) -> bool:
        """Whether ``ModelCheckpoint``'s deletion of ``path`` waits (see :meth:`Uploader.hold`)."""
        uploader = self.uploader
        return uploader is not None and uploader.hold(path)

    def share_logged(self, is_global_zero: bool, broadcast: Callable[..., Any]) -> None:
        """Every rank learns what rank 0 logged (one broadcast: call on every rank), so `restore_checkpoint`
        right after gives every rank the same version (the run's own log reaches the disk only every 15 s
        while it runs)."""
        logged = logged_by(self.last_uploader) if is_global_zero else None
        logged = broadcast(logged, src=0)
        if logged:
            LOGGED.update(logged)

    def keep_logged(self) -> None:
        """Remember what this process logged, with no collective."""
        LOGGED.update(logged_by(self.last_uploader) or {})

    def at_run_finish(self) -> None:
        """``wandb.finish()`` starts: upload what is still pending (a fit cut short, or uploads left to run
        in the background at the end of a multi-process fit)."""
        if self.uploader is not None:
            self.flush("the W&B run finished")
        for uploader in self.finishing:
            if uploader.pending():
                left = uploader.flush(self.options.flush_timeout, self.options.progress_bar, PROGRESS_MIN_BYTES)
                uploader.stop(timeout=5.0 if not left else 0.1)
                self.report(uploader, left, "the W&B run finished")

    def after_run_finish(self) -> None:
        """The run's last records are on their way to its log: once they are on disk, forget the staged
        files of the versions they hold (on a thread: the log is written once ``finish`` returns)."""
        waiting = [u for u in self.finishing if u.not_durable()]
        self.finishing = []
        if not waiting:
            return

        def wait() -> None:
            for uploader in waiting:
                uploader.wait_durable(DURABLE_WAIT_S)

        try:
            thread = threading.Thread(target=wait, name="UploadCheckpoints-durable", daemon=False)
            thread.start()
            CLEANUPS.append(thread)
        except RuntimeError:  # interpreter shutting down: the next fit of this run cleans up
            pass


def _kept_at(job: Job) -> str:
    """Where the bytes of a job that was not uploaded are, as they are on disk now (never a copy that is gone)."""
    if job.staged and os.path.isfile(job.staged):
        return f"; staged copy kept at {job.staged}"
    try:
        same = files.signature(os.stat(job.source)) == list(job.signature)
    except OSError:
        same = False
    if same:
        return "; the file is kept where it is" + (" (its rotation waits for the upload)" if job.held else "")
    return "; no copy is left (the file was deleted or changed before it could be staged)"
