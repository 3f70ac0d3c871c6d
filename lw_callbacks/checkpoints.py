"""UploadCheckpoints: every checkpoint ModelCheckpoint keeps, safe in W&B without slowing training. The
Lightning adapter over :mod:`lw_callbacks.core.publish`: it finds the ``ModelCheckpoint`` callbacks,
notices what they save and hands each file over with its metadata and aliases;
:func:`~lw_callbacks.restore.restore_checkpoint` (re-exported here) gets one of them back."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from typing_extensions import override

from lw_callbacks import _compat, _state
from lw_callbacks._errors import ConfigurationError, Option, warn
from lw_callbacks._model_checkpoints import (
    AsyncSaves,
    CheckpointsKey,
    Moment,
    after_checkpoints,
    check_checkpoints,
    check_dirpath,
    collection_names,
    files_on_disk,
    find_checkpoints,
    mtime_ns,
    rewritten_in_place,
    run_after_checkpoints,
    same_file,
    unwrap_saves,
    without_hook,
    wrap_saves,
)
from lw_callbacks._wandb import finish_after_interrupted_cell, get_run, require_wandb_logger
from lw_callbacks.core import files
from lw_callbacks.core.jobs import DUPLICATE, SENT, SKIPPED, UPLOADED
from lw_callbacks.core.publish import Publisher
from lw_callbacks.core.versions import (
    LOGGED,
    OWNER,
    UploadOptions,
    UploadOptionsMixin,
    flush_limit,
    version_aliases,
    version_metadata,
)
from lw_callbacks.restore import restore_checkpoint

__all__ = ["UploadCheckpoints", "restore_checkpoint"]

_OWNER = OWNER


class UploadCheckpoints(UploadOptionsMixin, Callback):
    r"""Upload every checkpoint that ``ModelCheckpoint`` saves as a W&B ``model`` artifact, in the background.

    Each tracked ``ModelCheckpoint`` gets its own collection (``model-<run id>-<monitor>``); each new file
    becomes a version holding ``model.ckpt``, with aliases ``latest``, ``best`` (by that callback's
    ``monitor`` and ``mode``; without one, Lightning's ``best_model_path``), ``epoch-<n>``, ``step-<n>``
    and ``aliases``. The training thread only hands the file over (a hard link, or an open descriptor);
    a worker thread hashes and logs it, and a staged copy stays until W&B holds the version durably, so a
    resumed run uploads whatever a crash left out. Your checkpoint files are only read. The docs' checkpoint
    pages describe the hand-over, crash safety and resume, and each checkpoint setup (folders, fsspec URLs,
    ``AsyncCheckpointIO``, DDP).

    Attributes:
        collection_names: after ``setup``, the artifact name of each tracked ``ModelCheckpoint`` in
            Trainer order (the same on every rank).

    Args:
        name: template of each collection's name, with the fields ``{run_id}``, ``{monitor}``,
            ``{mode}`` and ``{index}`` (the callback's position among the tracked ones). ``None``:
            ``model-{run_id}-{monitor}``, or ``model-{run_id}`` for a callback without ``monitor``.
            Characters outside ``A-Z a-z 0-9 _ . -`` in a monitor name (``val/acc``) become ``_``.
        aliases: extra aliases for every new version (letters, digits, ``_ . -``).
        checkpoints: the ``ModelCheckpoint`` callbacks to upload (a list, or one callback); ``None``:
            every one on the Trainer.
        flush_timeout: seconds to wait for pending uploads when fit ends or fails.
        staging_dir: where hand-over links are made (in ``<staging_dir>/<run id>/<collection>/``);
            ``None``: ``.upload-staging`` in each checkpoint's folder, which is on the same filesystem,
            so the hand-over is a hard link. On another filesystem each file is copied there by the
            upload worker.
        progress_bar: show a progress bar while flushing when 64 MiB or more remain.

    Options are read-only after construction (setting one raises ``AttributeError``).

    Raises:
        ConfigurationError: at construction, for a bad ``name`` template, alias, ``checkpoints`` (not
            ``ModelCheckpoint`` callbacks), ``flush_timeout``, ``staging_dir`` or ``progress_bar``.
        ConfigurationError: at ``setup``, when the Trainer has no ``WandbLogger``.
        ConfigurationError: at ``setup``, when two collections (of this or another UploadCheckpoints) get one name.
        ConfigurationError: at ``setup``, when a tracked ``dirpath`` is on a URL scheme it cannot read (``http://``).

    Example::

        >>> from lw_callbacks import UploadCheckpoints
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> upload = UploadCheckpoints()
        >>> checkpoint = ModelCheckpoint(monitor="val_acc", mode="max")
        >>> trainer = Trainer(logger=WandbLogger(project="digits"), callbacks=[checkpoint, upload], max_epochs=1,
        ...                   limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False,
        ...                   enable_model_summary=False)  # WandbLogger's log_model stays off
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        >>> upload.collection_names == [f"model-{trainer.logger.experiment.id}-val_acc"]
        True
        >>> path = upload.restore("best")  # or restore_checkpoint(upload.collection_names[0] + ":best")
        >>> model = DigitsClassifier.load_from_checkpoint(path)
    """

    def __init__(
        self,
        name: str | None = None,
        aliases: Sequence[str] = (),
        checkpoints: Sequence[ModelCheckpoint] | ModelCheckpoint | None = None,
        flush_timeout: float = 600.0,
        staging_dir: str | os.PathLike[str] | None = None,
        progress_bar: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        # the options (checked once), hand-over, ledger (this callback's state), worker and flushes, shared
        # with the Fabric class
        self._options = UploadOptions(name, aliases, flush_timeout, staging_dir, progress_bar, owner)
        self.publisher = Publisher(self._options)
        self._checkpoints = check_checkpoints(owner, checkpoints)
        self.collection_names: list[str] = []
        self._tracked: list[ModelCheckpoint] = []
        self._fingerprints: dict[int, tuple[Any, ...]] = {}
        self._handed_step: dict[int, int] = {}
        # (step of the save under way or None, the state before that step's first save, that step)
        self._step_state: tuple[int | None, dict[str, Any], int] | None = None
        self._fit_start_ns = 0
        self._run_id = ""
        self._async: AsyncSaves | None = None
        self._warned: set[str] = set()
        self._state_key: str | None = None
        self._key_of_checkpoints = CheckpointsKey()
        if self._checkpoints is None:
            self._state_key = self._generate_state_key(name=self.name, aliases=list(self.aliases))

    checkpoints = Option[list[ModelCheckpoint] | None]("The tracked ``ModelCheckpoint`` callbacks, or ``None``: all.")

    @property
    @override
    def state_key(self) -> str:
        # read on every hook call: built once from read-only options, or (`checkpoints`) by `CheckpointsKey`
        if self._state_key is not None:
            return self._state_key
        return self._key_of_checkpoints(self, self._checkpoints or ())

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        logger = require_wandb_logger(trainer, _OWNER)
        log_model = getattr(logger, "_log_model", False)
        if log_model:
            warn(
                f"{_OWNER} and `WandbLogger(log_model={log_model!r})` would both upload every checkpoint "
                "(twice the storage, and log_model copies and hashes on the training thread). Turn off "
                "`log_model` (`WandbLogger(log_model=False)`, the default) and keep UploadCheckpoints."
            )
        self._tracked = find_checkpoints(trainer, self.checkpoints)
        for mc in self._tracked:
            check_dirpath(mc.dirpath or trainer.default_root_dir)
        run = get_run(trainer, _OWNER)
        run_id = str(run.id) if run is not None else None
        problem = self.publisher.staging_problem() if run is not None and self._tracked else None
        # every rank, so names are known everywhere and a bad staging_dir stops every rank
        run_id, problem = trainer.strategy.broadcast((run_id, problem), src=0)
        if problem is not None:
            raise ConfigurationError(problem)
        self.collection_names = self._names(run_id, trainer) if run_id is not None else []
        self._run_id = run_id or ""
        run_after_checkpoints(trainer, self, self._tracked)
        self._fit_start_ns = time.time_ns() - 50_000_000  # file mtimes use a coarse clock
        self._fingerprints.clear()
        self._handed_step.clear()
        self._step_state = None
        self._async = AsyncSaves.find(trainer.strategy)
        if run is None or not self._tracked:
            if run is not None:
                warn(
                    f"{_OWNER}: the Trainer has no ModelCheckpoint, so there is nothing to upload. Add one, e.g. "
                    "`ModelCheckpoint(monitor='val_loss')`, or leave `enable_checkpointing=True` so Lightning adds "
                    "its default one."
                )
            self.publisher.uploader = None
            return
        for mc, coll in zip(self._tracked, self.collection_names, strict=True):
            self.publisher.ledger.collection(coll, mc.monitor, mc.mode)
        self.publisher.begin(run, logger)
        for mc in self._tracked:
            wrap_saves(mc, self._around_save, self._keeps)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint's callback states were loaded; also for a resume with nothing left to train.
        if self.publisher.uploader is None:
            return
        try:
            self._reconcile(trainer)
        except Exception as err:  # never stop training over it
            warn(f"{_OWNER}: could not compare the checkpoints on disk with the run's records "
                           f"({type(err).__name__}: {err}); files saved before this fit may be missing in W&B.")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.publisher.uploader is None:
            return
        self._scan(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs on every training batch: a ModelCheckpoint that saved since the last scan moved its
        # `_last_global_step_saved` (every save sets it), so only then is there anything to scan.
        if self.publisher.uploader is None:
            return
        fingerprints = self._fingerprints
        for index, mc in enumerate(self._tracked):
            seen = fingerprints.get(index)
            if seen is None or seen[0] is None or seen[0] != getattr(mc, "_last_global_step_saved", None):
                self._scan(trainer)
                return

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelCheckpoint saves at a training epoch end after every callback that is not a Checkpoint,
        # this one included: a private Checkpoint, on the Trainer for this moment only, scans after it.
        if self.publisher.uploader is None:
            return
        callbacks = without_hook(trainer, self)
        callbacks.append(after_checkpoints(self, self._scan, _compat.namespace_of(trainer)))
        setattr(trainer, "callbacks", callbacks)  # noqa: B010 - a new list: the hook loop now running keeps its own

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scan(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scan(trainer)
        self._wait_for_saves("fit ended")
        self.publisher.flush("fit ended", self._end_of_fit_timeout(trainer))
        self.publisher.share_logged(trainer.global_rank == 0, trainer.strategy.broadcast)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        finish_after_interrupted_cell(trainer, exception)  # in a kernel, once the cell is done
        if self.publisher.uploader is None:
            return
        try:
            self._scan(trainer)
            self._wait_for_saves(f"fit stopped with {type(exception).__name__}")
        finally:
            self.publisher.flush(f"fit stopped with {type(exception).__name__}")
            self.publisher.keep_logged()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.publisher.uploader is not None:
            self._wait_for_saves("teardown")
            self.publisher.flush("teardown")
        for mc in self._tracked:
            unwrap_saves(mc)
        setattr(trainer, "callbacks", without_hook(trainer, self))  # noqa: B010 - see run_after_checkpoints

    @override
    def state_dict(self) -> dict[str, Any]:
        # Inside a ModelCheckpoint save, the state as it was before the step's first save: every file
        # saved at one step (a top-k file and its `last.ckpt`) then holds the same bytes, although
        # each save's hand-over updates the ledger in between.
        if self._step_state is not None and self._step_state[0] is not None:
            return _state.save(copy.deepcopy(self._step_state[1]))
        return _state.save(self.publisher.state_dict())

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.publisher.load_state_dict(_state.load(type(self).__name__, state_dict))

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
                ``aliases``. Without a ``monitor``, ``best`` is the newest checkpoint, as for
                ``trainer.fit(ckpt_path="best")``.
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
        if not LOGGED.get(name):  # every rank learns what rank 0 logged when fit ends
            return None
        return restore_checkpoint(f"{name}:{alias}", root=root)

    # ------------------------------------------------------------------ setup helpers
    def _names(self, run_id: str, trainer: pl.Trainer | None = None) -> list[str]:
        """The collection of each tracked ModelCheckpoint; unique among every UploadCheckpoints of the
        Trainer, or ``ConfigurationError``."""
        every = _compat.model_checkpoints(trainer) if trainer else []
        names = collection_names(self.name, run_id, every, self._tracked)
        if trainer is None:
            return names
        mine = dict(zip((id(mc) for mc in self._tracked), names, strict=True))
        for other in list(getattr(trainer, "callbacks", [])):
            if other is self or not isinstance(other, UploadCheckpoints):
                continue
            try:
                tracked = find_checkpoints(trainer, other.checkpoints)
                theirs = collection_names(other.name, run_id, every, tracked)
            except ConfigurationError:
                continue  # its own setup reports it
            for mc, name in zip(tracked, theirs, strict=True):
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

    def _reconcile(self, trainer: pl.Trainer) -> None:
        """Upload what earlier segments of this run left undone, whatever moment they were killed at.

        The publisher reads what the run's earlier segments recorded and uploads this run's staged
        files they lack (:meth:`~lw_callbacks.core.publish.Publisher.recover`); then every file of a
        tracked ModelCheckpoint on disk that the records lack is handed over (the worker hashes it and
        skips content already held).
        """
        publisher = self.publisher
        uploader = publisher.uploader
        assert uploader is not None
        ledger = publisher.ledger
        run_id = uploader.run_id
        roots = publisher.staging_roots([mc.dirpath or "." for mc in self._tracked])
        found = publisher.recover(self.collection_names, roots)
        known, queued, saving = found.known, found.queued, found.saved
        if not found.segments_read and not saving:
            return
        resumed_from = mtime_ns(trainer.ckpt_path)
        loaded = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None) or {}
        resumed_step = loaded.get("global_step", trainer.global_step) if isinstance(loaded, dict) else None
        for index, mc in enumerate(self._tracked):
            # Only files this run's ModelCheckpoint saved: the ones its restored state names (saved no later
            # than the checkpoint resumed from, so not a file another run wrote under the same name since)
            # and the ones its claims name (uploaded by `recover`). Never other files of a shared folder.
            dirpath = os.path.realpath(mc.dirpath) if mc.dirpath else None
            claimed = [p for p in saving if dirpath and os.path.dirname(p) == dirpath]
            named = files_on_disk(mc) if found.segments_read else []
            for path in dict.fromkeys([*named, *claimed]):
                real = os.path.realpath(path)
                if real in queued:
                    continue
                folder = os.path.isdir(real)
                try:
                    sig = files.signature_of(real, folder)
                except OSError:
                    continue
                if real not in saving and (resumed_from is None or sig[3] > resumed_from + 2_000_000_000):
                    continue
                if not folder and files.cut_zip(real):  # killed while ModelCheckpoint wrote it
                    self._not_uploaded(path, "its save was cut short when its process ended (not a whole checkpoint)")
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
                is_last = bool(mc.last_model_path) and os.path.realpath(mc.last_model_path) == real and not any(
                    os.path.realpath(p) == real for p in mc.best_k_models
                )
                if is_last and any(
                    e.get("collection") == self.collection_names[index] and e.get("global_step") == resumed_step
                    for e in ledger.files.values()
                ):  # the last.ckpt saved at the step of a checkpoint handed over then: the same weights
                    ledger.note(real, sig, SKIPPED, reason="same step as a top-k checkpoint")
                    continue
                queued.add(real)
                moment = Moment.of(trainer, mc)
                self._hand_over(moment, index, mc, path, real, sig, is_last, fresh=False, folder=folder)
        for notes in saving.values():  # each such file is handed over (claimed again) or known by now
            for note in notes:
                publisher.saved(note)

    # ------------------------------------------------------------------ hand-over (training thread)
    def _scan(self, trainer: pl.Trainer, only: ModelCheckpoint | None = None) -> None:
        if self.publisher.uploader is None:
            return
        for index, mc in enumerate(self._tracked):
            if only is not None and mc is not only:
                continue
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
                warn(f"{_OWNER}: could not hand over checkpoints of {mc!r} ({type(err).__name__}: {err}).")

    def _scan_one(self, trainer: pl.Trainer, index: int, mc: ModelCheckpoint) -> None:
        """Note what ``mc`` names now, with the moment's metadata, and hand the new files over: at once,
        or, under a checkpoint IO that writes later (``AsyncCheckpointIO``), on its writer thread once
        every save submitted so far has finished."""
        moment = Moment.of(trainer, mc)
        if self._async is not None and self._async.submit(self._take, index, mc, moment):
            return
        self._take(index, mc, moment)

    def _wait_for_saves(self, why: str) -> None:
        """Under an asynchronous checkpoint IO, wait (at most ``flush_timeout``) until the saves submitted
        so far are written and handed over."""
        if self._async is not None and not self._async.wait(self.flush_timeout):
            warn(
                f"{_OWNER}: asynchronous checkpoint writes were still running {self.flush_timeout:g}s after {why} "
                "(flush_timeout); the checkpoints they write are not uploaded by this fit (the next fit of this run "
                "uploads them from disk)."
            )

    def _take(self, index: int, mc: ModelCheckpoint, moment: Moment) -> None:
        if self.publisher.uploader is None:  # a write that finished after the fit's flush
            for path in moment.paths:
                if not self.publisher.ledger.files.get(os.path.realpath(path)):
                    self._not_uploaded(path, "its asynchronous write finished after the fit's last flush")
            return
        found = []
        for path in moment.paths:
            remote = files.is_remote(path)
            real = path if remote else os.path.realpath(files.local_path(path))
            folder = not remote and os.path.isdir(real)  # a sharded checkpoint: one version of all its files
            try:
                sig = files.remote_signature(path) if remote else files.signature_of(real, folder)
            except OSError:
                if real not in self.publisher.ledger.files:  # else handed over before it was deleted
                    self._not_uploaded(path, "it was deleted before it could be handed over (it does not exist)")
                continue
            if not remote and not folder and not os.path.isfile(real):
                self._not_uploaded(path, "it is neither a regular file nor a folder")
                continue
            if self.publisher.ledger.is_known(real, sig):
                continue
            found.append((sig[3], path, real, sig, remote, folder))
        for _, path, real, sig, remote, folder in sorted(found):
            is_last = path in moment.last
            fresh = sig[3] >= self._fit_start_ns
            if not fresh and self.publisher.state_loaded:
                # Saved by the fit this one resumes from, which handed it over (it was uploaded, or
                # its staged copy is picked up from the staging folder by `_recover_leftovers`).
                self.publisher.ledger.note(real, sig, SKIPPED, reason="saved before the resumed fit")
                continue
            if is_last and fresh and self._handed_step.get(index) == moment.global_step:
                self.publisher.ledger.note(real, sig, SKIPPED, reason="same step as a top-k checkpoint")
                continue
            self._hand_over(moment, index, mc, path, real, sig, is_last, fresh, remote=remote, folder=folder)
            if not is_last and fresh:
                self._handed_step[index] = moment.global_step

    def _not_uploaded(self, path: str, why: str) -> None:
        """One warning per checkpoint that a ModelCheckpoint reports and this callback does not upload."""
        if path in self._warned:
            return
        self._warned.add(path)
        warn(f"{_OWNER}: {path} is not uploaded: {why}.")

    def _hand_over(
        self,
        moment: Moment,
        index: int,
        mc: ModelCheckpoint,
        path: str,
        real: str,
        sig: list[int],
        is_last: bool,
        fresh: bool,
        unclaimed: bool = False,
        remote: bool = False,
        folder: bool = False,
    ) -> None:
        assert self.publisher.uploader is not None
        collection = self.collection_names[index]
        score = moment.score_of(path, fresh)
        epoch = moment.epoch if fresh else None
        # `step` is the `trainer/global_step` Lightning logged this fit's metrics at when the file was
        # saved (one axis with the metrics, `best_step` and the samples); `global_step` counts optimizer
        # steps, as ModelCheckpoint's file names do.
        step = moment.step if fresh else None
        metadata = version_metadata(
            path, score=score, monitor=mc.monitor, mode=mc.mode, epoch=epoch,
            global_step=moment.global_step if fresh else None, is_last=is_last, step={"step": step},
            extra={"ModelCheckpoint": moment.settings, **({"folder": True} if folder else {})},
        )
        aliases = version_aliases(epoch, step, self.aliases)
        # Without a monitor, Lightning's best (`best_model_path`, what `ckpt_path="best"` loads) is the newest save.
        best = mc.monitor is None and not is_last and same_file(moment.best_model_path, real)
        self.publisher.stage_and_submit(
            path, real, sig, collection, score, metadata, aliases, unclaimed=unclaimed, best=best, remote=remote,
            is_folder=folder, in_place=not folder and not remote and rewritten_in_place(mc, path, is_last),
        )

    def _around_save(self, mc: ModelCheckpoint, trainer: pl.Trainer, filepath: str, save: Callable[[], None]) -> None:
        """Claim each file ``mc`` saves the moment its save returns (on global rank 0), with the state as it
        was before the step's first save frozen for ``state_dict`` while it saves."""
        note = None
        if trainer.is_global_zero and mc in self._tracked:
            try:
                note = self.publisher.saving(filepath, self.collection_names[self._tracked.index(mc)])
            except Exception:
                note = None
        step = trainer.global_step
        if self._step_state is None or self._step_state[2] != step:
            self._step_state = (None, copy.deepcopy(self.publisher.state_dict()), step)
        self._step_state = (step, self._step_state[1], step)
        try:
            save()
        finally:
            self._step_state = (None, self._step_state[1], step)
        if trainer.is_global_zero:
            self._scan(trainer, only=mc)
            self.publisher.saved(note)

    def _keeps(self, trainer: pl.Trainer, filepath: str, remove: Callable[[], None]) -> bool:
        """Whether a file top-k rotation deletes is kept for now (rank 0; the worker deletes it once its bytes
        are staged or uploaded). Under an asynchronous checkpoint IO this is decided on its writer thread,
        behind the writes and hand-overs queued before: none is deleted before its write or hand-over."""
        if not trainer.is_global_zero:
            return False
        if self._async is not None and self._async.submit(self._hold_or_remove, filepath, remove):
            return True
        return self._hold(filepath)

    def _hold(self, filepath: str) -> bool:
        with contextlib.suppress(Exception):
            return self.publisher.hold(filepath)
        return False  # a hand-over problem never stops training

    def _hold_or_remove(self, filepath: str, remove: Callable[[], None]) -> None:
        if not self._hold(filepath):
            remove()

    # ------------------------------------------------------------------ flush
    def _end_of_fit_timeout(self, trainer: pl.Trainer) -> float:
        """How long rank 0 may flush at the end of fit while the other ranks wait in a collective:
        ``flush_timeout``, but under several processes at most half the process group's timeout."""
        return flush_limit(self.flush_timeout, trainer.world_size, trainer.strategy)
