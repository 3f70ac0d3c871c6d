"""UploadCheckpoints: every checkpoint ModelCheckpoint keeps, safe in W&B without slowing training;
restore_checkpoint: one of them back as a local path, online or from an offline run."""

from __future__ import annotations

import base64
import errno
import math
import os
import re
import string
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lw_callbacks import _uploader
from lw_callbacks._errors import ConfigurationError
from lw_callbacks._uploader import (
    DUPLICATE,
    ENTRY_NAME,
    PENDING,
    SENT,
    SKIPPED,
    STAGING_FOLDER,
    UPLOADED,
    Job,
    Ledger,
    Uploader,
)
from lw_callbacks._wandb import (
    active_run,
    at_finish,
    get_run,
    lightning_step,
    require_wandb_logger,
    run_folder,
    run_is_offline,
)

__all__ = ["UploadCheckpoints", "restore_checkpoint"]

_OWNER = "UploadCheckpoints"
_NAME_FIELDS = ("run_id", "monitor", "mode", "index")
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_ALIAS = re.compile(r"^(latest|best|v\d+|epoch-\d+|step-\d+)$")
_PROGRESS_MIN_BYTES = 64 * 2**20


class UploadCheckpoints(Callback):
    r"""Upload every checkpoint that ``ModelCheckpoint`` saves as a W&B ``model`` artifact, in the background.

    Each ``ModelCheckpoint`` on the Trainer (or each one passed in ``checkpoints``) gets its own
    artifact collection, ``model-<run id>-<monitor>`` by default, so two checkpoint callbacks never
    fight over one ``best`` alias; when two ModelCheckpoints of the Trainer share a monitor (even
    when two UploadCheckpoints track one each), the fixed part of their ``filename`` (or their
    folder's name) is appended, e.g. ``model-<run id>-val_loss-fast``, and two callbacks that would
    still get one name are refused at ``setup``. Every new or changed file becomes a new version holding one file,
    ``model.ckpt``, with metadata (``score``, ``monitor``, ``mode``, ``epoch``, ``global_step``, ``step``,
    ``original_filename``, ``is_last`` and the ``ModelCheckpoint`` settings) and aliases:

    - ``latest`` on the newest checkpoint, ``best`` on the best one by that callback's ``monitor``
      and ``mode`` (it moves as the best changes; a callback without ``monitor`` has no ``best``),
    - ``epoch-<n>`` and ``step-<n>`` (``n`` is the ``trainer/global_step`` the metrics of that moment are
      logged at, so ``step-<best_step>`` is the checkpoint of a ``MetricSummaries`` best), and the
      ``aliases`` you pass (they end on the newest version).

    Training does not wait for uploads. Right after ``ModelCheckpoint`` has written a file (at
    ``setup`` this callback moves itself after the ``ModelCheckpoint`` callbacks, so its hooks run
    after theirs), it hands the file over and returns; hashing and ``log_artifact`` run on a
    background thread. The hand-over is a hard link in ``<staging>/<run id>/<collection>/``
    (``<staging>`` is ``.upload-staging`` beside the checkpoint, or ``staging_dir``), with a note
    beside it naming the run. On another filesystem (a ``staging_dir`` on tmpfs, say) it opens the
    file instead, and the worker copies it from that descriptor into the staging folder; the copy is
    compared by content, and a partial copy is removed on failure. Either way the content stays
    readable, so a checkpoint that top-k rotation deletes a moment later is still uploaded whole.
    When the staging disk is full, one warning names the file at risk and the fix; such files are
    uploaded from the original (or the open descriptor) when fit ends. Content uploaded before is not
    uploaded again, and a ``last.ckpt`` symlink (``save_last="link"``) is not uploaded apart from its
    target; a ``last.ckpt`` copy saved at the same step as a top-k file holds the same weights and is
    skipped.

    A crash loses nothing that was saved. A staged file and its note stay until W&B holds the
    version durably: offline, until the artifact record is in the run's ``.wandb`` log on disk (an
    offline run writes it every 15 s and at ``wandb.finish()``); online, until the artifact is
    committed. Until then the ledger says ``sent``. At the start of every fit, the files the tracked
    ModelCheckpoints have on disk and the staged files of this run are compared (by digest) with
    what the earlier segments of the run (same run id) recorded, and what is missing is uploaded:
    a run resumed after ``kill -9`` at any moment ends with every checkpoint that was on disk. Staged
    files of another run are reported, never uploaded into this one. The staged files of versions
    logged in the last seconds are removed right after ``wandb.finish()`` (on a short-lived thread that
    waits, 30 s at most, for the log on disk to hold their records); a process that ends without
    calling it leaves them, with their notes, for the next fit of the same run.

    What this callback touches: your checkpoint files are only read (never moved, changed or
    deleted); the staging folder and W&B's own staged copy (W&B copies the file into
    ``$WANDB_DATA_DIR/artifacts/staging``, which ``wandb sync`` uploads) are not yours to change;
    :func:`restore_checkpoint` gives you a copy of your own.

    When fit ends, and when it ends with an exception or ``KeyboardInterrupt``, pending uploads are
    flushed (with a progress bar when large files remain) for at most ``flush_timeout`` seconds, and
    failed uploads are retried. Under several processes the other ranks wait in a collective while
    rank 0 flushes, so rank 0 flushes for at most half the process group's timeout
    (``DDPStrategy(timeout=...)``, 30 minutes by default) or ``flush_timeout``, whichever is shorter:
    no rank waits in a collective longer than the process group allows. What is left goes on in
    the background, and ``wandb.finish()`` waits for it (up to ``flush_timeout``).

    The callback's ``state_dict`` holds a ledger of the files handed over and their digests, so a
    fit resumed from a checkpoint neither uploads them again nor misses one. Without that state
    (the callback is new to the fit, in a new run), checkpoints the ``ModelCheckpoint`` already
    tracks are uploaded once, without epoch and step.

    Attributes:
        collection_names: after ``setup``, the artifact name of each tracked ``ModelCheckpoint`` in
            Trainer order (the same on every rank).

    Args:
        name: template of each collection's name, with the fields ``{run_id}``, ``{monitor}``,
            ``{mode}`` and ``{index}`` (the callback's position among the tracked ones). ``None``:
            ``model-{run_id}-{monitor}``, or ``model-{run_id}`` for a callback without ``monitor``.
            Characters outside ``A-Z a-z 0-9 _ . -`` in a monitor name (``val/acc``) become ``_``.
        aliases: extra aliases for every new version (letters, digits, ``_ . -``).
        checkpoints: the ``ModelCheckpoint`` callbacks to upload; ``None``: every one on the Trainer.
        flush_timeout: seconds to wait for pending uploads when fit ends or fails.
        staging_dir: where hand-over links are made (in ``<staging_dir>/<run id>/<collection>/``);
            ``None``: ``.upload-staging`` in each checkpoint's folder, which is on the same filesystem,
            so the hand-over is a hard link. On another filesystem each file is copied there by the
            upload worker.
        progress_bar: show a progress bar while flushing when 64 MiB or more remain.

    Raises:
        MisconfigurationException: at construction for a bad ``name`` template, alias or timeout;
            at ``setup`` (as :class:`~lw_callbacks.ConfigurationError`) when the Trainer has no
            ``WandbLogger``, or two collections (of this or another UploadCheckpoints) get the same name.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import WandbLogger
        from lw_callbacks import UploadCheckpoints, restore_checkpoint

        upload = UploadCheckpoints()
        trainer = Trainer(logger=WandbLogger(project="mnist"),  # keep log_model off
                          callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"), upload])
        trainer.fit(model, datamodule=dm)
        path = upload.restore("best")  # or restore_checkpoint(upload.collection_names[0] + ":best")
    """

    def __init__(
        self,
        name: str | None = None,
        aliases: Sequence[str] = (),
        checkpoints: Sequence[ModelCheckpoint] | None = None,
        flush_timeout: float = 600.0,
        staging_dir: str | None = None,
        progress_bar: bool = True,
    ) -> None:
        super().__init__()
        self.name = _check_template(name)
        self.aliases = _check_aliases(aliases)
        if not isinstance(flush_timeout, (int, float)) or not flush_timeout > 0 or math.isinf(flush_timeout):
            raise MisconfigurationException(
                f"UploadCheckpoints(flush_timeout={flush_timeout!r}) must be a positive, finite number of seconds "
                "to wait for pending uploads when fit ends, e.g. `flush_timeout=600`."
            )
        self.flush_timeout = float(flush_timeout)
        self.checkpoints = list(checkpoints) if checkpoints is not None else None
        self.staging_dir = staging_dir
        self.progress_bar = bool(progress_bar)
        self.collection_names: list[str] = []
        self._ledger = Ledger()
        self._state_loaded = False
        self._tracked: list[ModelCheckpoint] = []
        self._uploader: Uploader | None = None
        self._last_uploader: Uploader | None = None
        self._fingerprints: dict[int, tuple[Any, ...]] = {}
        self._handed_step: dict[int, int] = {}
        self._fit_start_ns = 0
        self._warned_copy = False
        self._run_id = ""
        self._finishing: list[Uploader] = []
        self._reported_others: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        tracked = [mc.state_key for mc in self.checkpoints] if self.checkpoints is not None else None
        if tracked is None:
            return self._generate_state_key(name=self.name, aliases=list(self.aliases))
        return self._generate_state_key(name=self.name, aliases=list(self.aliases), checkpoints=tracked)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        logger = require_wandb_logger(trainer, _OWNER)
        log_model = getattr(logger, "_log_model", False)
        if log_model:
            rank_zero_warn(
                f"{_OWNER} and `WandbLogger(log_model={log_model!r})` would both upload every checkpoint "
                "(twice the storage, and log_model copies and hashes on the training thread). Turn off "
                "`log_model` (`WandbLogger(log_model=False)`, the default) and keep UploadCheckpoints."
            )
        self._tracked = self._find_checkpoints(trainer)
        run = get_run(trainer, _OWNER)
        run_id = str(run.id) if run is not None else None
        run_id = trainer.strategy.broadcast(run_id, src=0)  # every rank, so names are known everywhere
        self.collection_names = self._names(run_id, trainer) if run_id is not None else []
        self._run_id = run_id or ""
        self._run_after_checkpoints(trainer)
        self._fit_start_ns = time.time_ns() - 50_000_000  # file mtimes use a coarse clock
        self._fingerprints.clear()
        self._handed_step.clear()
        if run is None or not self._tracked:
            if run is not None:
                rank_zero_warn(
                    f"{_OWNER}: the Trainer has no ModelCheckpoint, so there is nothing to upload. Add one, e.g. "
                    "`ModelCheckpoint(monitor='val_loss')`, or leave `enable_checkpointing=True` so Lightning adds "
                    "its default one."
                )
            self._uploader = None
            return
        for mc, coll in zip(self._tracked, self.collection_names, strict=True):
            self._ledger.collection(coll, mc.monitor, mc.mode)
        self._uploader = self._new_uploader(run, logger)
        self._uploader.start()

    def _new_uploader(self, run: Any, logger: Any, owner: str = _OWNER) -> Uploader:
        """The worker for this fit, told where the run's log is, and flushed at the run's finish."""
        offline = run_is_offline(run)
        log_path = None
        if offline:
            log_path = run_folder(run, logger) / f"run-{run.id}.wandb"
        uploader = Uploader(run, self._ledger, owner, run_id=str(run.id), log_path=log_path, offline=offline)
        self._finishing = [u for u in self._finishing if u.not_durable() or u.pending()]
        self._finishing.append(uploader)
        key = id(run)
        hooked = _FINISH_HOOKED.setdefault(key, [])
        if self not in hooked:
            hooked.append(self)

            def late() -> None:
                _FINISH_HOOKED.pop(key, None)
                self._after_run_finish()

            at_finish(run, early=self._at_run_finish, late=late)
        return uploader

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint's callback states were loaded; also for a resume with nothing left to train.
        if self._uploader is None:
            return
        try:
            self._reconcile(trainer)
        except Exception as err:  # never stop training over it
            rank_zero_warn(f"{_OWNER}: could not compare the checkpoints on disk with the run's records "
                           f"({type(err).__name__}: {err}); files saved before this fit may be missing in W&B.")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._uploader is None:
            return
        self._scan(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._scan(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scan(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scan(trainer)
        self._flush("fit ended", self._end_of_fit_timeout(trainer))
        # Every rank learns what rank 0 logged, so `restore_checkpoint` right after fit gives every
        # rank the same version (the run's own log reaches the disk only every 15 s while it runs).
        logged = _logged_by(self._last_uploader) if trainer.global_rank == 0 else None
        logged = trainer.strategy.broadcast(logged, src=0)
        if logged:
            _LOGGED.update(logged)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._uploader is None:
            return
        try:
            self._scan(trainer)
        finally:
            self._flush(f"fit stopped with {type(exception).__name__}")
            _LOGGED.update(_logged_by(self._last_uploader) or {})

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._uploader is not None:
            self._flush("teardown")
        setattr(trainer, "callbacks", self._without_helper(trainer))  # noqa: B010 - see _run_after_checkpoints

    def _without_helper(self, trainer: pl.Trainer) -> list[Callback]:
        callbacks: list[Callback] = list(getattr(trainer, "callbacks", []))
        return [cb for cb in callbacks if not (isinstance(cb, _AfterCheckpoints) and cb.owner is self)]

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the callbacks into the new processes: a live worker stays behind
        state = self.__dict__.copy()
        state["_uploader"] = state["_last_uploader"] = None
        state["_finishing"] = []
        return state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self._ledger.to_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ledger" in state_dict:
            self._ledger = Ledger.from_dict(state_dict["ledger"])
            self._state_loaded = True

    def restore(
        self, alias: str = "best", *, index: int = 0, root: str | os.PathLike[str] | None = None
    ) -> Path | None:
        """The checkpoint this callback uploaded under ``alias``, as a local file, or ``None`` if it uploaded none.

        A shortcut for ``restore_checkpoint(f"{collection_names[index]}:{alias}")`` after ``fit``, on
        any rank. It returns ``None`` when the fit uploaded nothing, as under ``WANDB_MODE=disabled``,
        ``fast_dev_run``, or a Trainer without a ``ModelCheckpoint``, so the same script runs in all of
        them; check for ``None`` before loading.

        Args:
            alias: ``"best"``, ``"latest"``, ``"step-<n>"``, ``"epoch-<n>"``, ``"v<n>"`` or one of your
                ``aliases``. A callback whose ``ModelCheckpoint`` has no ``monitor`` has no ``best``.
            index: which tracked ``ModelCheckpoint`` (Trainer order), as in ``collection_names``.
            root: where the file is put (see :func:`restore_checkpoint`).

        Returns:
            The local path, or ``None`` when nothing was uploaded.

        Raises:
            LookupError: the collection has no such alias or version; the message lists what exists.
            IndexError: ``index`` is outside the tracked ``ModelCheckpoint`` callbacks.

        Example::

            path = upload.restore("best")
            if path is not None:
                model = LitModule.load_from_checkpoint(path)
        """
        if not self.collection_names:
            return None
        if not 0 <= index < len(self.collection_names):
            raise IndexError(
                f"{_OWNER}.restore(index={index}): this callback tracks {len(self.collection_names)} "
                f"ModelCheckpoint(s): {self.collection_names}; pass an index below {len(self.collection_names)}."
            )
        name = self.collection_names[index]
        if not _LOGGED.get(name):  # every rank learns what rank 0 logged when fit ends
            return None
        return restore_checkpoint(f"{name}:{alias}", root=root)

    # ------------------------------------------------------------------ setup helpers
    def _find_checkpoints(self, trainer: pl.Trainer) -> list[ModelCheckpoint]:
        if self.checkpoints is None:
            return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        missing = [cb for cb in self.checkpoints if cb not in trainer.checkpoint_callbacks]
        if missing:
            raise MisconfigurationException(
                f"{_OWNER}(checkpoints=...) got {len(missing)} ModelCheckpoint(s) that are not among the Trainer's "
                "callbacks; pass the same instances to `Trainer(callbacks=[...])`, or leave `checkpoints=None` to "
                "upload every ModelCheckpoint on the Trainer."
            )
        return list(self.checkpoints)

    def _names(self, run_id: str, trainer: pl.Trainer | None = None) -> list[str]:
        """The collection of each tracked ModelCheckpoint; unique among every UploadCheckpoints of the
        Trainer, or ``ConfigurationError``."""
        every = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)] if trainer else []
        names = self._names_among(run_id, every)
        if trainer is None:
            return names
        mine = dict(zip((id(mc) for mc in self._tracked), names, strict=True))
        for other in list(getattr(trainer, "callbacks", [])):
            if other is self or not isinstance(other, UploadCheckpoints):
                continue
            try:
                theirs = other._names_among(run_id, every, other._find_checkpoints(trainer))
            except ConfigurationError:
                continue  # its own setup reports it
            for mc, name in zip(other._find_checkpoints(trainer), theirs, strict=True):
                if name in mine.values():
                    same = id(mc) in mine
                    raise ConfigurationError(
                        f"{_OWNER}: two UploadCheckpoints callbacks would upload to the same artifact {name!r}"
                        + (" (they track the same ModelCheckpoint)" if same else "")
                        + ". Give each its own ModelCheckpoints with `UploadCheckpoints(checkpoints=[...])`"
                        + ("" if same else ", or a `name` template that tells them apart, e.g. "
                           "`name='model-{run_id}-{monitor}-{index}'` with different fixed parts")
                        + "."
                    )
        return names

    def _names_among(
        self, run_id: str, every: list[ModelCheckpoint], tracked: list[ModelCheckpoint] | None = None
    ) -> list[str]:
        tracked = self._tracked if tracked is None else tracked
        defaults = _default_names(run_id, [*every, *[mc for mc in tracked if mc not in every]])
        names: list[str] = []
        for index, mc in enumerate(tracked):
            name = defaults[id(mc)] if self.name is None else self._name_for(run_id, mc.monitor, mc.mode, index)
            if name in names:
                raise ConfigurationError(
                    f"{_OWNER}(name={self.name!r}) gives the same artifact name {name!r} to two ModelCheckpoints; "
                    "add a field that tells them apart, e.g. `name='model-{run_id}-{monitor}-{index}'`."
                )
            names.append(name[:128])
        return names

    def _name_for(self, run_id: str, monitor: str | None, mode: str, index: int) -> str:
        """One collection's artifact name from the ``name`` template (or the default)."""
        field = _sanitize(monitor) if monitor else "none"
        if self.name is None:
            return f"model-{run_id}-{field}" if monitor else f"model-{run_id}"
        return _sanitize(self.name.format(run_id=run_id, monitor=field, mode=mode, index=index))

    def _run_after_checkpoints(self, trainer: pl.Trainer) -> None:
        """Make sure this callback's hooks run after every tracked ModelCheckpoint's.

        Lightning calls ``on_train_epoch_end`` of ``Checkpoint`` and ``EarlyStopping`` callbacks after
        the module's own hook and after every other callback's, and ModelCheckpoint saves there by
        default; a private ``Checkpoint`` appended last forwards that hook here. This callback is not a
        ``Checkpoint`` itself, so Lightning still adds its default ``ModelCheckpoint``.
        """
        callbacks = self._without_helper(trainer)
        callbacks.append(_AfterCheckpoints(self))
        setattr(trainer, "callbacks", callbacks)  # noqa: B010 - a new list: a hook loop already running keeps the old one
        if self not in callbacks or not self._tracked:
            return
        last = max(callbacks.index(mc) for mc in self._tracked if mc in callbacks)
        mine = callbacks.index(self)
        if mine > last:
            return
        callbacks.remove(self)
        callbacks.insert(last, self)  # `last` shifted down by one after the removal
        setattr(trainer, "callbacks", callbacks)  # noqa: B010 - a new list: a hook loop already running keeps the old one

    def _staging_for(self, folder: str | os.PathLike[str]) -> Path:
        """The staging root for checkpoints in ``folder``; each run and collection has a folder in it."""
        if self.staging_dir is not None:
            return Path(os.path.abspath(self.staging_dir))
        return Path(os.path.abspath(folder)) / STAGING_FOLDER

    def _reconcile(self, trainer: pl.Trainer) -> None:
        """Upload what earlier segments of this run left undone, whatever moment they were killed at.

        The records of the run's earlier segments (same run id, offline folders beside this one) say
        which (collection, digest) W&B holds. Staged files of this run whose digest they lack are
        uploaded again; so is every file of a tracked ModelCheckpoint on disk that the records lack
        (the worker hashes it and skips content already held).
        """
        from lw_callbacks.records import read_segments, segments_of

        uploader = self._uploader
        assert uploader is not None
        ledger = self._ledger
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
        earlier = [u for u in self._finishing if u is not uploader]
        in_flight = {j.staged for u in earlier for j in u.not_durable() if j.staged}
        known |= {(j.collection, j.digest or "") for u in earlier for j in u.not_durable()}
        known |= {pair for u in earlier for pair in u.durable}
        if previous is not None:
            for name in self.collection_names:
                state = ledger.collection(name)
                state.digests = {d: q for d, q in state.digests.items() if (name, d) in known}
                versions = previous.artifacts(name)
                for v in versions:
                    for e in v.entries:
                        state.digests.setdefault(e.digest, -1)
                best = next((v for v in versions if "best" in v.aliases), None)
                if best is not None and state.best_score is None:
                    state.best_score = _as_float(best.metadata.get("score"))
                if versions:
                    _LOGGED[name] = [
                        {"version": v.version, "digest": v.entries[0].digest if v.entries else v.digest,
                         "size": v.entries[0].size if v.entries else 0,
                         "local_path": v.entries[0].local_path if v.entries else None,
                         "aliases": list(v.aliases), "metadata": v.metadata}
                        for v in versions
                    ]
            for real, entry in list(ledger.files.items()):
                ours = entry.get("status") in (SENT, UPLOADED) and entry.get("run_id") == run_id
                if ours and (entry.get("collection"), entry.get("digest")) not in known:
                    ledger.forget(real)  # not in W&B after all: handed over again below
        queued: set[str] = set()
        for root in sorted({self._staging_for(mc.dirpath or ".") for mc in self._tracked}):
            jobs, others = _uploader.read_staged(root, run_id)
            for other, notes in others.items():
                if other not in self._reported_others:
                    self._reported_others.add(other)
                    rank_zero_warn(
                        f"{_OWNER}: {root} holds {len(notes)} staged checkpoint(s) of another run ({other}); they "
                        "are not uploaded into this run. Resume that run to upload them, or delete them."
                    )
            for job in jobs:
                if job.staged in in_flight:
                    continue
                if job.digest and (job.collection, job.digest) in known:
                    ledger.set_status(job.source, UPLOADED)
                    Uploader._cleanup(job)
                    continue
                job.seq = ledger.take_seq()
                job.attempts, job.error, job.status, job.fd = 0, "", PENDING, None
                ledger.collection(job.collection, job.metadata.get("monitor"), job.metadata.get("mode", "min"))
                ledger.note(job.source, job.signature, PENDING, collection=job.collection, seq=job.seq, run_id=run_id)
                uploader.submit(job)
                queued.add(job.source)
        if previous is None:
            return
        every = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        for index, mc in enumerate(self._tracked):
            named = {os.path.realpath(p) for p in _files_on_disk(mc, every, None, glob=False)}
            for path in _files_on_disk(mc, every, started):
                real = os.path.realpath(path)
                if real in queued:
                    continue
                try:
                    sig = _uploader.signature(os.stat(real))
                except OSError:
                    continue
                known_file = ledger.files.get(real)
                if known_file is not None and list(known_file.get("signature", [])) == sig:
                    status = known_file.get("status")
                    if status == SKIPPED and known_file.get("reason") != "saved before the resumed fit":
                        continue
                    if status in (UPLOADED, SENT, DUPLICATE) and (
                        known_file.get("run_id") != run_id
                        or (known_file.get("collection"), known_file.get("digest")) in known
                    ):
                        continue
                queued.add(real)
                is_last = bool(mc.last_model_path) and os.path.realpath(mc.last_model_path) == real and not any(
                    os.path.realpath(p) == real for p in mc.best_k_models
                )
                self._hand_over(trainer, index, mc, path, real, sig, is_last, fresh=False, unclaimed=real not in named)

    # ------------------------------------------------------------------ hand-over (training thread)
    def _scan(self, trainer: pl.Trainer) -> None:
        if self._uploader is None:
            return
        for index, mc in enumerate(self._tracked):
            fingerprint = (
                getattr(mc, "_last_global_step_saved", None),
                getattr(mc, "_last_checkpoint_saved", None),
                mc.last_model_path,
                mc.best_model_path,
                tuple(mc.best_k_models),
            )
            if self._fingerprints.get(index) == fingerprint:
                continue
            self._fingerprints[index] = fingerprint
            try:
                self._scan_one(trainer, index, mc)
            except Exception as err:  # a hand-over problem never stops training
                rank_zero_warn(f"{_OWNER}: could not hand over checkpoints of {mc!r} ({type(err).__name__}: {err}).")

    def _scan_one(self, trainer: pl.Trainer, index: int, mc: ModelCheckpoint) -> None:
        paths = [*mc.best_k_models, mc.best_model_path, getattr(mc, "_last_checkpoint_saved", ""), mc.last_model_path]
        found = []
        for path in dict.fromkeys(str(p) for p in paths if p):
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except OSError:
                continue
            sig = _uploader.signature(st)
            if not os.path.isfile(real) or self._ledger.is_known(real, sig):
                continue
            found.append((st.st_mtime_ns, path, real, sig))
        for _, path, real, sig in sorted(found):
            is_last = bool(mc.last_model_path) and path == str(mc.last_model_path) and path not in mc.best_k_models
            fresh = sig[3] >= self._fit_start_ns
            if not fresh and self._state_loaded:
                # Saved by the fit this one resumes from, which handed it over (it was uploaded, or
                # its staged copy is picked up from the staging folder by `_recover_leftovers`).
                self._ledger.note(real, sig, SKIPPED, reason="saved before the resumed fit")
                continue
            if is_last and fresh and self._handed_step.get(index) == trainer.global_step:
                self._ledger.note(real, sig, SKIPPED, reason="same step as a top-k checkpoint")
                continue
            self._hand_over(trainer, index, mc, path, real, sig, is_last, fresh)
            if not is_last and fresh:
                self._handed_step[index] = trainer.global_step

    def _hand_over(
        self,
        trainer: pl.Trainer,
        index: int,
        mc: ModelCheckpoint,
        path: str,
        real: str,
        sig: list[int],
        is_last: bool,
        fresh: bool,
        unclaimed: bool = False,
    ) -> None:
        assert self._uploader is not None
        collection = self.collection_names[index]
        score = _score_of(trainer, mc, path, fresh)
        epoch = trainer.current_epoch if fresh else None
        # `step` is the `trainer/global_step` Lightning logged this fit's metrics at when the file was
        # saved (one axis with the metrics, `best_step` and the samples); `global_step` counts optimizer
        # steps, as ModelCheckpoint's file names do.
        step = lightning_step(trainer) if fresh else None
        metadata = {
            "score": score if score is not None and math.isfinite(score) else None,
            "monitor": mc.monitor,
            "mode": mc.mode,
            "epoch": epoch,
            "global_step": trainer.global_step if fresh else None,
            "step": step,
            "original_filename": os.path.basename(path),
            "original_path": os.path.abspath(path),
            "is_last": is_last,
            "ModelCheckpoint": _settings(mc),
        }
        aliases = ([f"epoch-{epoch}", f"step-{step}"] if fresh else []) + list(self.aliases)
        self._stage_and_submit(path, real, sig, collection, score, metadata, aliases, unclaimed=unclaimed)

    def _stage_and_submit(
        self,
        path: str,
        real: str,
        sig: list[int],
        collection: str,
        score: float | None,
        metadata: dict[str, Any],
        aliases: list[str],
        unclaimed: bool = False,
    ) -> None:
        """Hand ``real`` over to the upload worker: a hard link in this run's staging folder, or (on
        another filesystem) a descriptor open on it that the worker copies from. That is the only work
        on the training thread. When staging fails, the original is uploaded at flush. If anything
        here raises, nothing is left marked pending."""
        uploader = self._uploader
        assert uploader is not None
        seq = self._ledger.take_seq()
        run_id = uploader.run_id
        folder = self._staging_for(os.path.dirname(real)) / _sanitize(run_id or "run") / collection
        staged: str | None = str(folder / f"{seq:06d}-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
        assert staged is not None
        fd: int | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            how, fd = _uploader.hand_over(real, staged)
            if how == "copy" and not self._warned_copy:
                self._warned_copy = True
                rank_zero_warn(
                    f"{_OWNER}: could not hard-link checkpoints into {folder} (another filesystem?), so the upload "
                    "worker copies each one there, from a file descriptor opened when it was saved (training does "
                    "not wait for the copy; it costs disk space and I/O). Pass `staging_dir` on the checkpoints' "
                    "filesystem to avoid the copy."
                )
        except OSError as err:
            if err.errno == errno.ENOSPC:
                uploader.disk_full(path, folder)
            else:
                rank_zero_warn(
                    f"{_OWNER}: could not stage {path} for upload ({err}). It will be uploaded from the original "
                    "file when fit ends, if it still exists then."
                )
            _uploader.remove_empty_parents(folder)
            staged = None
            try:
                fd = _uploader.open_source(real)  # keeps the content readable if rotation deletes the file
            except OSError:
                fd = None
        job = Job(seq, collection, real, staged, sig[2], sig, score, metadata, aliases, run_id=run_id, fd=fd,
                  unclaimed=unclaimed)
        self._ledger.note(real, sig, PENDING, collection=collection, seq=seq, run_id=run_id)
        try:
            if staged is None:
                uploader.defer(job)
            else:
                _uploader.write_note(job)
                uploader.submit(job)
        except BaseException:
            self._ledger.forget(real)
            Uploader._cleanup(job)
            raise

    # ------------------------------------------------------------------ flush
    def _end_of_fit_timeout(self, trainer: pl.Trainer) -> float:
        """How long rank 0 may flush at the end of fit while the other ranks wait in a collective:
        ``flush_timeout``, but under several processes at most half the process group's timeout."""
        if trainer.world_size <= 1:
            return self.flush_timeout
        timeout = getattr(trainer.strategy, "_timeout", None)
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else _DEFAULT_PG_TIMEOUT_S
        return max(1.0, min(self.flush_timeout, seconds / 2))

    def _flush(self, why: str, timeout: float | None = None) -> None:
        uploader = self._uploader
        if uploader is None:
            return
        self._uploader = None
        self._last_uploader = uploader
        limit = self.flush_timeout if timeout is None else timeout
        left = uploader.flush(limit, self.progress_bar, _PROGRESS_MIN_BYTES)
        stopped = uploader.stop(timeout=5.0 if not left else 0.1)
        if left and limit < self.flush_timeout:
            rank_zero_warn(
                f"{_OWNER}: {len(left)} checkpoint upload(s) still running when {why}; the other processes cannot "
                f"wait longer than half the process group's timeout ({limit:g}s), so they go on in the background "
                "and `wandb.finish()` waits for them (up to `flush_timeout`)."
            )
            return
        self._report(uploader, left, why)
        if not left and not stopped:
            rank_zero_warn(f"{_OWNER}: the upload worker did not stop; a daemon thread, it ends with the process.")

    def _report(self, uploader: Uploader, left: list[Job], why: str) -> None:
        lost, uploader.lost = list(uploader.lost), []
        if lost:
            rank_zero_warn(
                f"{_OWNER}: {len(lost)} checkpoint(s) could not be staged when they were saved and were deleted "
                "(by ModelCheckpoint's top-k rotation?) before they could be uploaded from the original; they are "
                "not in W&B:\n" + "\n".join(f"  {j.source} -> {j.collection}" for j in lost)
            )
        if left:
            lines = "\n".join(
                f"  {j.source} -> {j.collection}" + (f" ({j.error})" if j.error else " (not reached)")
                + (f"; staged copy kept at {j.staged}" if j.staged else "")
                for j in left
            )
            rank_zero_warn(
                f"{_OWNER}: {len(left)} checkpoint(s) were not uploaded when {why} "
                f"(flush_timeout={self.flush_timeout:g}s):\n{lines}\nThe next fit of this run (same run id) uploads "
                "the staged copies; your checkpoint files are untouched."
            )

    def _at_run_finish(self) -> None:
        """``wandb.finish()`` starts: upload what is still pending (a fit cut short, or uploads left to run
        in the background at the end of a multi-process fit)."""
        if self._uploader is not None:
            self._flush("the W&B run finished")
        for uploader in self._finishing:
            if uploader.pending():
                left = uploader.flush(self.flush_timeout, self.progress_bar, _PROGRESS_MIN_BYTES)
                uploader.stop(timeout=5.0 if not left else 0.1)
                self._report(uploader, left, "the W&B run finished")

    def _after_run_finish(self) -> None:
        """The run's last records are on their way to its log: once they are on disk, forget the staged
        files of the versions they hold (on a thread: the log is written once ``finish`` returns)."""
        waiting = [u for u in self._finishing if u.not_durable()]
        self._finishing = []
        if not waiting:
            return

        def wait() -> None:
            for uploader in waiting:
                uploader.wait_durable(_DURABLE_WAIT_S)

        try:
            thread = threading.Thread(target=wait, name="UploadCheckpoints-durable", daemon=False)
            thread.start()
            _CLEANUPS.append(thread)
        except RuntimeError:  # interpreter shutting down: the next fit of this run cleans up
            pass


# ---------------------------------------------------------------------- helpers
# What UploadCheckpoints logged in this process (on rank 0, and shared with every rank at the end of
# fit): collection -> versions as the run's records will show them. A running run's log is written
# to disk only every 15 s (wandb's `x_transaction_log_flush_interval`), so `restore_checkpoint`
# looks here first for a collection of a run that is still being written.
_LOGGED: dict[str, list[dict[str, Any]]] = {}
# Callbacks whose flush runs at the finish of a run (by ``id`` of the run), and the threads that
# forget staged files once the finished run's log holds their records.
_FINISH_HOOKED: dict[int, list[UploadCheckpoints]] = {}
_CLEANUPS: list[threading.Thread] = []
_DURABLE_WAIT_S = 30.0
_DEFAULT_PG_TIMEOUT_S = 1800.0


def _wait_for_cleanups(timeout: float = 60.0) -> None:
    """Wait for the threads that forget staged files after a run finished (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    while _CLEANUPS:
        _CLEANUPS.pop().join(max(0.0, deadline - time.monotonic()))


def _default_names(run_id: str, every: list[ModelCheckpoint]) -> dict[int, str]:
    """Default collection name of each ModelCheckpoint: ``model-<run id>-<monitor>``, and when two share
    a monitor, the fixed part of their ``filename`` (or the name of their folder, or their position)."""
    base = {id(mc): f"model-{run_id}-{_sanitize(mc.monitor)}" if mc.monitor else f"model-{run_id}" for mc in every}
    out = dict(base)
    groups: dict[str, list[ModelCheckpoint]] = {}
    for mc in every:
        groups.setdefault(base[id(mc)], []).append(mc)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        for key in (_filename_stem, _dir_stem):
            tags = [key(mc) for mc in group]
            if all(tags) and len(set(tags)) == len(tags):
                break
        else:
            tags = [str(i) for i in range(len(group))]
        for mc, tag in zip(group, tags, strict=True):
            out[id(mc)] = f"{name}-{tag}"
    return out


def _filename_stem(mc: ModelCheckpoint) -> str:
    fixed = re.sub(r"\{[^}]*\}", "", mc.filename or "")
    return _sanitize(fixed).strip("-_=.")


def _dir_stem(mc: ModelCheckpoint) -> str:
    return _sanitize(os.path.basename(os.path.normpath(mc.dirpath))) if mc.dirpath else ""


def _files_on_disk(
    mc: ModelCheckpoint, every: list[ModelCheckpoint], since: float | None, glob: bool = True
) -> list[str]:
    """Checkpoint files of ``mc`` on disk: the ones its state names, and (``glob``), when no other
    ModelCheckpoint of the Trainer writes into its folder, every ``*.ckpt`` there written since the run
    began (``since``); those are uploaded only if no collection of the run holds their content."""
    paths = [*mc.best_k_models, mc.best_model_path, getattr(mc, "_last_checkpoint_saved", ""), mc.last_model_path]
    found = [str(p) for p in paths if p]
    folder = mc.dirpath
    if glob and folder and os.path.isdir(folder):
        sharing = [o for o in every if o is not mc and o.dirpath and os.path.realpath(o.dirpath) ==
                   os.path.realpath(folder)]
        if not sharing:
            for entry in sorted(Path(folder).glob(f"*{mc.FILE_EXTENSION}")):
                try:
                    if entry.is_symlink() or not entry.is_file():
                        continue
                    if since is not None and entry.stat().st_mtime < since - 1.0:
                        continue
                except OSError:
                    continue
                found.append(str(entry))
    return [p for p in dict.fromkeys(found) if os.path.isfile(p)]


def _logged_by(uploader: Uploader | None) -> dict[str, list[dict[str, Any]]] | None:
    """The versions ``uploader`` logged per collection, numbered and aliased as W&B does."""
    if uploader is None or not uploader.uploaded:
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for job, digest, aliases, local_path in uploader.uploaded:
        if job.collection not in out:
            out[job.collection] = [dict(v, aliases=list(v["aliases"])) for v in _LOGGED.get(job.collection, [])]
        versions = out[job.collection]
        same = next((v for v in versions if v["digest"] == digest), None)
        if same is None:
            same = {
                "version": len(versions), "digest": digest, "size": job.size, "local_path": local_path,
                "aliases": [], "metadata": job.metadata,
            }
            versions.append(same)
        for alias in ["latest", *aliases]:  # W&B adds `latest`; an alias lives on the newest version logged with it
            for v in versions:
                if alias in v["aliases"]:
                    v["aliases"].remove(alias)
            same["aliases"].append(alias)
    return out


def _check_template(name: str | None) -> str | None:
    if name is None:
        return None
    accepted = ", ".join("{" + f + "}" for f in _NAME_FIELDS)
    problem = None
    try:
        fields = [(lit, fld, spec, conv) for lit, fld, spec, conv in string.Formatter().parse(name)]
    except ValueError as err:
        fields, problem = [], str(err)
    for literal, fld, _spec, _conv in fields:
        if literal and not _SAFE.match(literal):
            problem = f"{literal!r} has characters other than letters, digits, '_', '.', '-'"
        if fld is not None and fld not in _NAME_FIELDS:
            problem = f"unknown field {{{fld}}}"
    if problem is None and not name:
        problem = "it is empty"
    if problem is not None:
        raise MisconfigurationException(
            f"UploadCheckpoints(name={name!r}) is not a valid artifact name template: {problem}. Use letters, "
            f"digits, '_', '.', '-' and the fields {accepted}, e.g. `name='model-{{run_id}}-{{monitor}}'`."
        )
    return name


class _AfterCheckpoints(Checkpoint):
    """Runs ``UploadCheckpoints``'s scan where Lightning runs checkpoint callbacks: last."""

    def __init__(self, owner: UploadCheckpoints) -> None:
        self.owner = owner

    @property
    @override
    def state_key(self) -> str:
        return f"_AfterCheckpoints[{self.owner.state_key}]"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.owner._scan(trainer)


def _check_aliases(aliases: Sequence[str]) -> tuple[str, ...]:
    if isinstance(aliases, str):
        aliases = [aliases]
    out = []
    for alias in aliases:
        if not isinstance(alias, str) or not _SAFE.match(alias) or len(alias) > 128:
            raise MisconfigurationException(
                f"UploadCheckpoints(aliases=...) got {alias!r}: an alias is 1-128 letters, digits, '_', '.' or '-' "
                "(no '/', ':' or spaces), e.g. `aliases=['baseline', 'lr-1e-3']`."
            )
        if _RESERVED_ALIAS.match(alias):
            raise MisconfigurationException(
                f"UploadCheckpoints(aliases=...) got {alias!r}, which the callback sets itself ('latest', 'best', "
                "'epoch-<n>', 'step-<n>') or which W&B reserves for versions ('v<n>'); choose another name."
            )
        out.append(alias)
    return tuple(dict.fromkeys(out))


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def _score_of(trainer: pl.Trainer, mc: ModelCheckpoint, path: str, fresh: bool) -> float | None:
    if mc.monitor is None:
        return None
    if path in mc.best_k_models:
        return _as_float(mc.best_k_models[path])
    if fresh:
        return _as_float(trainer.callback_metrics.get(mc.monitor))
    return None


def _settings(mc: ModelCheckpoint) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, timedelta):
            return value.total_seconds()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)

    keys = {
        "monitor": "monitor",
        "mode": "mode",
        "save_last": "save_last",
        "save_top_k": "save_top_k",
        "save_weights_only": "save_weights_only",
        "every_n_train_steps": "_every_n_train_steps",
        "every_n_epochs": "_every_n_epochs",
        "train_time_interval": "_train_time_interval",
        "save_on_train_epoch_end": "_save_on_train_epoch_end",
        "dirpath": "dirpath",
        "filename": "filename",
    }
    return {k: plain(getattr(mc, attr, None)) for k, attr in keys.items()}


# ---------------------------------------------------------------------- restore
def restore_checkpoint(
    ref: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Get a checkpoint logged by :class:`UploadCheckpoints` (or ``WandbLogger(log_model=...)``) as a local file.

    ``ref`` is ``"[entity/project/]name[:alias or version]"`` (alias ``latest`` when left out), e.g.
    ``"my-team/mnist/model-abc123-val_acc:best"`` or ``"model-abc123-val_acc:v3"``.

    - Offline, or given ``run_dir``: the version is resolved from the run's own records
      (:mod:`lw_callbacks.records`): the run in ``run_dir``; else what ``UploadCheckpoints`` logged
      in this process (known on every rank once fit ends: a running run's log reaches the disk only
      every 15 s); else the run live in this process, or a run under ``$WANDB_DIR`` or the current
      directory that logged ``name``. Versions are numbered over every segment of a resumed run
      (each offline resume writes a folder of its own with the same run id) in order, deduplicated
      by digest, as ``wandb sync`` of those folders will number them. The version's staged file (the
      manifest's ``local_path``) is copied (a reflink, ``FICLONE``, where the filesystem offers one)
      to ``<root>/<name>-v<N>-<first 8 hex digits of its md5>/model.ckpt`` and the copy is checked
      against the recorded md5 digest; a verified copy already there is reused.
    - Online, with ``entity/project/`` in ``ref``: through the W&B API, downloaded into
      ``<root>/<name>-v<N>/``.

    The returned file is yours: it never shares storage with anything W&B (or ``UploadCheckpoints``)
    will upload, so writing to it in place (``torch.save(state, path)``, an editor) cannot change
    what ``wandb sync`` uploads. Its path carries the content's digest, so a path returned once
    never holds other bytes; restoring the same version
    again checks the copy and writes it afresh if it was changed.

    It works on every rank with no collective: each process gets the same path (one process
    downloads, the others wait for it). It never unpickles anything: the file loads with
    ``LitModule.load_from_checkpoint(path)`` or ``trainer.fit(model, ckpt_path=path)``. A checkpoint
    from someone else is a pickle that can run code when loaded; inspect it with
    ``torch.load(path, map_location="cpu", weights_only=True)``, which refuses anything but tensors
    and plain containers.

    Args:
        ref: the artifact reference.
        run_dir: an offline run's folder (``.../wandb/offline-run-<date>-<id>``) or a folder holding it.
        root: where the file is put; default ``$WANDB_ARTIFACT_DIR`` or ``./artifacts``.
        timeout: seconds to wait for a run still being written (its log may lag ``wandb.finish()``,
            and another rank may still be uploading) and for another process's download.

    Returns:
        The local path of the checkpoint file.

    Raises:
        LookupError: no collection ``name``, or it has no such alias or version; the message lists
            what exists.
        ValueError: ``ref`` is malformed, or the staged file's md5 differs from the recorded digest.
        FileNotFoundError: no run to read, or the staged file is gone (after ``wandb sync``?).

    Example::

        path = restore_checkpoint("model-abc123-val_acc:best", run_dir="wandb/offline-run-20260101_120000-abc123")
        model = LitModule.load_from_checkpoint(path)
    """
    entity_project, name, tag = _parse_ref(ref)
    out_root = Path(root) if root is not None else Path(os.environ.get("WANDB_ARTIFACT_DIR") or "artifacts")
    mode = os.environ.get("WANDB_MODE", "").lower()
    if run_dir is None and entity_project and mode not in ("offline", "dryrun", "disabled"):
        live = active_run()
        if live is None or not _run_is_offline(live):
            return _restore_online(ref if ":" in ref else f"{ref}:{tag}", name, out_root, timeout)
    return _restore_offline(name, tag, run_dir, out_root, timeout)


def _parse_ref(ref: str) -> tuple[str, str, str]:
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"restore_checkpoint(ref={ref!r}): expected 'entity/project/name:alias' or 'name:alias'.")
    path, _, tag = ref.strip().rpartition(":") if ":" in ref else (ref.strip(), "", "latest")
    parts = path.split("/")
    if len(parts) > 3 or not all(parts) or not tag:
        raise ValueError(
            f"restore_checkpoint(ref={ref!r}): expected 'entity/project/name:alias', 'project/name:alias', "
            "'name:alias' or 'name' (alias 'latest'), e.g. 'model-abc123-val_acc:best'."
        )
    return "/".join(parts[:-1]), parts[-1], tag


def _run_is_offline(run: Any) -> bool:
    return bool(getattr(getattr(run, "settings", None), "_offline", False)) or getattr(
        getattr(run, "settings", None), "mode", ""
    ) in ("offline", "dryrun")


def _candidate_runs(name: str, run_dir: str | os.PathLike[str] | None) -> list[tuple[Path, bool]]:
    """Run folders to look in, best first, with whether each is the run live in this process."""
    from lw_callbacks.records import find_runs

    if run_dir is not None:
        path = Path(run_dir)
        if not path.exists():
            raise FileNotFoundError(f"restore_checkpoint(run_dir={str(run_dir)!r}): no such folder")
        if any(path.glob("run-*.wandb")) or path.is_file():
            return [(path, False)]
        runs = find_runs(path)
        if not runs:
            raise FileNotFoundError(f"restore_checkpoint(run_dir={str(run_dir)!r}): no run-<id>.wandb under it")
        return [(r, False) for r in reversed(runs)]
    found: list[tuple[Path, bool]] = []
    live = active_run()
    live_dir = None
    if live is not None:
        live_dir = Path(os.path.realpath(live.settings.sync_dir))
        found.append((live_dir, True))
    roots = [os.environ.get("WANDB_DIR"), os.getcwd()]
    others: list[Path] = []
    for base in dict.fromkeys(Path(r) for r in roots if r):
        for pattern in ("wandb/*run-*/run-*.wandb", "*/wandb/*run-*/run-*.wandb", "*run-*/run-*.wandb"):
            others.extend(p.parent for p in base.glob(pattern))
    unique = sorted({os.path.realpath(p) for p in others} - {str(live_dir)}, key=lambda p: (Path(p).name, p))
    # Runs whose id appears in the artifact name first (the default name holds the run id), newest first.
    hinted = [p for p in unique if Path(p).name.rsplit("-", 1)[-1] in name]
    rest = [p for p in unique if p not in hinted]
    found.extend((Path(p), False) for p in [*reversed(hinted), *reversed(rest)])
    return found


def _logged_version(name: str, tag: str) -> Any:
    """The version of ``name`` that UploadCheckpoints logged in this process, as the records show it."""
    from lw_callbacks.records import ArtifactEntry, ArtifactVersion

    versions = _LOGGED[name]
    for v in versions:
        if tag in v["aliases"] or tag == f"v{v['version']}":
            entry = ArtifactEntry(ENTRY_NAME, v["digest"], v["size"], v["local_path"], None)
            return ArtifactVersion(name, "model", v["version"], "", v["metadata"], (entry,), list(v["aliases"]))
    known = sorted({a for v in versions for a in v["aliases"]} | {f"v{v['version']}" for v in versions})
    raise LookupError(f"restore_checkpoint: artifact {name!r} has no version or alias {tag!r}; it has {known}")


def _restore_offline(name: str, tag: str, run_dir: Any, out_root: Path, timeout: float) -> Path:
    if run_dir is None and name in _LOGGED:
        return _materialize(name, _logged_version(name, tag), out_root)

    candidates = _candidate_runs(name, run_dir)
    if not candidates:
        raise FileNotFoundError(
            f"restore_checkpoint: no W&B run to read {name!r} from (no run in this process and none under "
            f"$WANDB_DIR or {os.getcwd()}); pass run_dir='.../wandb/offline-run-<date>-<id>'."
        )
    deadline = time.monotonic() + timeout
    seen: dict[str, list[str]] = {}
    while True:
        waiting = False  # a run still being written may yet log the name or move the alias
        for path, live in candidates:
            records = _read_with_earlier_segments(path, timeout=0 if live else min(2.0, timeout))
            names = records.artifact_names()
            seen[str(records.run_dir)] = names
            waiting = waiting or not records.complete
            if name not in names:
                continue
            try:
                version = records.resolve_artifact(name, tag)
            except KeyError as err:
                if records.complete or time.monotonic() >= deadline:
                    raise LookupError(f"restore_checkpoint: {err.args[0]} (run {records.run_dir})") from None
                break
            return _materialize(name, version, out_root)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    listing = "; ".join(f"{run}: {names or 'no artifacts'}" for run, names in seen.items())
    raise LookupError(f"restore_checkpoint: no artifact named {name!r}; the runs read have {listing}")


def _read_with_earlier_segments(path: Path, timeout: float) -> Any:
    """The records of the run in ``path`` merged with every other segment of the same run id beside it,
    in start order: versions numbered as ``wandb sync`` of those folders will number them."""
    from lw_callbacks.records import log_file_of, read_run, read_segments, segments_of

    log = log_file_of(path)
    run_id = log.stem[len("run-") :]
    try:
        segments = segments_of(log.parent.parent, run_id)
    except (FileNotFoundError, ValueError):
        segments = []
    if len(segments) <= 1:
        return read_run(log, timeout=timeout, require_exit=False)
    return read_segments(segments, timeout=timeout)


def _materialize(name: str, version: Any, out_root: Path) -> Path:
    """A copy of the version's staged file that is the caller's own (never a link to a file W&B or this
    package will upload), at a path unique to its content: ``<root>/<name>-v<N>-<md5 prefix>/model.ckpt``."""
    entries = [e for e in version.entries if e.path == ENTRY_NAME] or [
        e for e in version.entries if e.path.endswith(".ckpt")
    ]
    if len(entries) != 1:
        raise LookupError(
            f"restore_checkpoint: {name}:v{version.version} holds {[e.path for e in version.entries]}, "
            f"not one checkpoint file ({ENTRY_NAME})"
        )
    entry = entries[0]
    source = entry.local_path
    target = out_root / f"{name}-v{version.version}-{_digest_tag(entry.digest)}" / os.path.basename(entry.path)
    if target.is_file() and target.stat().st_size == entry.size and _uploader.md5_b64(target) == entry.digest:
        return target.resolve()  # a verified copy made before
    if not source or not os.path.isfile(source):
        raise FileNotFoundError(
            f"restore_checkpoint: {name}:v{version.version}'s staged file {source!r} is gone (W&B deletes staged "
            "copies once `wandb sync` has uploaded them); restore it with the online reference "
            f"'entity/project/{name}:v{version.version}'."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        _uploader.reflink_or_copy(source, str(tmp))
        actual = _uploader.md5_b64(tmp)
        if actual != entry.digest:
            raise ValueError(
                f"restore_checkpoint: the staged file of {name}:v{version.version} ({source}) has md5 {actual}, but "
                f"the run recorded {entry.digest}: it changed after it was logged. Versions of {name}: aliases "
                f"{version.aliases}; refusing to return it."
            )
        os.replace(tmp, target)  # atomic: ranks doing this at once all end with the same whole file
    finally:
        if tmp.exists():
            tmp.unlink()
    return target.resolve()


def _digest_tag(digest: str) -> str:
    """The first 8 hex digits of a base64 md5 digest (a restored file's folder name carries it)."""
    try:
        return base64.b64decode(digest).hex()[:8]
    except (ValueError, TypeError):
        return _sanitize(digest)[:8]


def _restore_online(ref: str, name: str, out_root: Path, timeout: float) -> Path:  # pragma: no cover - needs a server
    import wandb

    api = wandb.Api()
    try:
        artifact = api.artifact(ref, type="model")
    except Exception as err:
        known = ""
        try:
            collection_path = ref.rsplit(":", 1)[0]
            versions = api.artifacts("model", collection_path)
            known = "; it has " + ", ".join(f"v{v.version} {v.aliases}" for v in versions)
        except Exception:
            pass
        raise LookupError(f"restore_checkpoint: W&B has no {ref!r} ({err}){known}") from err
    target_dir = out_root / f"{name}-{artifact.version}"
    done = target_dir / ".complete"
    lock = target_dir.with_name(target_dir.name + ".lock")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another process downloads it: wait for it
        deadline = time.monotonic() + max(timeout, 600.0)
        while not done.exists() and lock.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    else:
        os.close(fd)
        try:
            if not done.exists():
                artifact.download(root=str(target_dir))
                done.touch()
        finally:
            lock.unlink(missing_ok=True)
    if not done.exists():
        artifact.download(root=str(target_dir))
        done.touch()
    files = sorted(target_dir.rglob("*.ckpt"))
    if len(files) != 1:
        raise LookupError(f"restore_checkpoint: {ref} holds {[str(f) for f in files]}, not one .ckpt file")
    return files[0].resolve()
