"""What :class:`~lw_callbacks.UploadCheckpoints` reads from Lightning's ``ModelCheckpoint`` and wraps
around it: the files it names and their metadata at one moment (:class:`Moment`), the default collection
names, its saves and deletions (:func:`wrap_saves`), and an asynchronous checkpoint IO's writer thread
(:class:`AsyncSaves`)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lw_callbacks import _compat
from lw_callbacks._errors import ConfigurationError, warn
from lw_callbacks._wandb import lightning_step
from lw_callbacks.core import files
from lw_callbacks.core.versions import OWNER, as_float, name_for, sanitize

_OWNER = OWNER


def check_checkpoints(owner: str, checkpoints: Any) -> list[ModelCheckpoint] | None:
    """``checkpoints`` as a list of ``ModelCheckpoint`` callbacks (one callback is a list of one), or ``None``.

    Raises:
        ConfigurationError: for a string, an empty list, or an item that is not a ``ModelCheckpoint``
            (of ``lightning.pytorch`` or ``pytorch_lightning``).
    """
    if checkpoints is None:
        return None
    if _compat.is_model_checkpoint(checkpoints):
        return [checkpoints]
    fix = ("pass the ModelCheckpoint callbacks themselves, e.g. `checkpoints=[ModelCheckpoint(monitor='val_loss')]` "
           "(the same instances as in `Trainer(callbacks=...)`), or None for every ModelCheckpoint of the Trainer")
    if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Sequence):
        raise ConfigurationError(
            f"{owner}(checkpoints={checkpoints!r}): `checkpoints` must be a list of ModelCheckpoint callbacks, "
            f"got {type(checkpoints).__name__}; {fix}."
        )
    if not checkpoints:
        raise ConfigurationError(f"{owner}(checkpoints=[]): an empty list uploads nothing; {fix}.")
    bad = [cb for cb in checkpoints if not _compat.is_model_checkpoint(cb)]
    if bad:
        raise ConfigurationError(
            f"{owner}(checkpoints={list(checkpoints)!r}): {bad[0]!r} ({type(bad[0]).__name__}) is not a "
            f"ModelCheckpoint; {fix}."
        )
    return list(checkpoints)


def default_names(run_id: str, every: list[ModelCheckpoint]) -> dict[int, str]:
    """Default collection name of each ModelCheckpoint: ``model-<run id>-<monitor>``, and when two share
    a monitor, the fixed part of their ``filename`` (or the name of their folder, or their position)."""
    base = {id(mc): f"model-{run_id}-{sanitize(mc.monitor)}" if mc.monitor else f"model-{run_id}" for mc in every}
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


def check_dirpath(dirpath: str | os.PathLike[str]) -> None:
    """Refuse (at ``setup``) a checkpoint folder on a filesystem whose files cannot be uploaded."""
    scheme = files.scheme_of(dirpath)
    if scheme is None or scheme in files.LOCAL_SCHEMES or scheme in files.REMOTE_SCHEMES:
        return
    handled = ", ".join(f"{s}://" for s in (*files.LOCAL_SCHEMES, *files.REMOTE_SCHEMES))
    raise ConfigurationError(
        f"{_OWNER}: ModelCheckpoint(dirpath={os.fspath(dirpath)!r}) is on a filesystem ({scheme}) whose checkpoints "
        f"it cannot upload; it uploads checkpoints from local paths and {handled} (streamed through fsspec). Save "
        "them to one of those, e.g. `ModelCheckpoint(dirpath='s3://bucket/ckpts')` with s3fs installed, or leave "
        "this ModelCheckpoint out with `UploadCheckpoints(checkpoints=[...])`."
    )


def _filename_stem(mc: ModelCheckpoint) -> str:
    fixed = re.sub(r"\{[^}]*\}", "", mc.filename or "")
    return sanitize(fixed).strip("-_=.")


def _dir_stem(mc: ModelCheckpoint) -> str:
    return sanitize(os.path.basename(os.path.normpath(mc.dirpath))) if mc.dirpath else ""


def files_on_disk(mc: ModelCheckpoint) -> list[str]:
    """Checkpoint files (and checkpoint folders, as sharded strategies save) of ``mc`` on disk that its
    state names."""
    paths = [*mc.best_k_models, mc.best_model_path, getattr(mc, "_last_checkpoint_saved", ""), mc.last_model_path]
    return [p for p in dict.fromkeys(str(p) for p in paths if p) if os.path.isfile(p) or os.path.isdir(p)]


def mtime_ns(path: Any) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except (OSError, TypeError, ValueError):
        return None


def rewritten_in_place(mc: ModelCheckpoint, path: str, is_last: bool) -> bool:
    """Whether ``path`` may be saved again under the same name and written in place: a ``last.ckpt``
    copy, or a ``filename`` without fields, in a folder on another filesystem than the temporary folder
    (fsspec's local save writes there and, across filesystems, copies onto the existing file)."""
    fixed = (is_last and mc.save_last is True) or (bool(mc.filename) and "{" not in str(mc.filename))
    if not fixed:
        return False
    try:
        return os.stat(os.path.dirname(os.path.realpath(path))).st_dev != os.stat(tempfile.gettempdir()).st_dev
    except OSError:
        return True




def wrap_saves(
    mc: ModelCheckpoint,
    around_save: Callable[[ModelCheckpoint, pl.Trainer, str, Callable[[], None]], None],
    keeps: Callable[[pl.Trainer, str, Callable[[], None]], bool],
) -> None:
    """Route each save of ``mc`` through ``around_save(mc, trainer, path, save)`` (which calls ``save``),
    and each deletion of a checkpoint (top-k rotation) through ``keeps(trainer, path, remove)``: the file
    is deleted now unless it returns True (it then keeps it, or calls ``remove`` later)."""
    if "_save_checkpoint" in vars(mc) or "_remove_checkpoint" in vars(mc):
        return
    save, remove = mc._save_checkpoint, mc._remove_checkpoint

    def saved(trainer: pl.Trainer, filepath: str) -> None:
        around_save(mc, trainer, str(filepath), lambda: save(trainer, filepath))

    def removing(trainer: pl.Trainer, filepath: str) -> None:
        if not keeps(trainer, str(filepath), lambda: remove(trainer, filepath)):
            remove(trainer, filepath)

    mc._save_checkpoint = saved  # type: ignore[method-assign]
    mc._remove_checkpoint = removing  # type: ignore[method-assign]


def unwrap_saves(mc: ModelCheckpoint) -> None:
    """Undo :func:`wrap_saves`."""
    vars(mc).pop("_save_checkpoint", None)
    vars(mc).pop("_remove_checkpoint", None)


def same_file(path: str | os.PathLike[str] | None, real: str) -> bool:
    return bool(path) and os.path.realpath(str(path)) == real


class AsyncSaves:
    """Work run on an asynchronous checkpoint IO's writer thread (``AsyncCheckpointIO``, either namespace).

    Its saves run in order on a one-worker executor and each returns once its file is complete, so
    work submitted to that executor after a save runs once the file is whole, off the training thread.
    """

    def __init__(self, io: Any) -> None:
        self.io = io
        self.futures: list[Future[None]] = []

    @staticmethod
    def find(strategy: pl.strategies.Strategy) -> AsyncSaves | None:
        io = getattr(strategy, "checkpoint_io", None)
        for _ in range(8):  # wrappers of wrappers
            if io is None:
                return None
            # Lightning 2.4 makes the executor in __init__; later releases lazily, in `_ensure_setup`
            if hasattr(io, "_executor") and (
                callable(getattr(io, "_ensure_setup", None)) or getattr(io, "_executor", None) is not None
            ):
                return AsyncSaves(io)
            io = getattr(io, "checkpoint_io", None)
        return None

    def submit(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` after every save submitted so far; False when it cannot (run it yourself)."""
        try:
            if callable(getattr(self.io, "_ensure_setup", None)):
                self.io._ensure_setup()
            future = self.io._executor.submit(self._run, fn, *args)
        except Exception:  # shut down, or not the executor we know
            return False
        self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(future)
        return True

    @staticmethod
    def _run(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # a hand-over problem never stops training
            warn(f"{_OWNER}: could not hand over a checkpoint written asynchronously ({type(err).__name__}: "
                           f"{err}).")

    def wait(self, timeout: float) -> bool:
        """Wait for the work submitted so far; True when it is all done within ``timeout`` s."""
        pending = [f for f in self.futures if not f.done()]
        if pending:
            wait_for_futures(pending, timeout)
        self.futures = [f for f in self.futures if not f.done()]
        return not self.futures


@dataclass
class Moment:
    """What a ModelCheckpoint names and the trainer's counters at one hook, captured on the training
    thread: the hand-over may run later, on an asynchronous checkpoint IO's writer thread."""

    paths: list[str]
    last: set[str]
    best_k: dict[str, float | None]
    best_model_path: str
    monitor: str | None
    current: float | None
    epoch: int
    step: int
    global_step: int
    settings: dict[str, Any]

    @classmethod
    def of(cls, trainer: pl.Trainer, mc: ModelCheckpoint) -> Moment:
        named = [*mc.best_k_models, mc.best_model_path, getattr(mc, "_last_checkpoint_saved", ""), mc.last_model_path]
        paths = list(dict.fromkeys(str(p) for p in named if p))
        best_k = {str(p): as_float(v) for p, v in mc.best_k_models.items()}
        last = {str(mc.last_model_path)} - set(best_k) if mc.last_model_path else set()
        # the monitored value now, the score of a file saved outside the top k (`last.ckpt`)
        current = None
        if mc.monitor and set(paths) - set(best_k):
            current = as_float(trainer.callback_metrics.get(mc.monitor))
        return cls(
            paths, last, best_k, str(mc.best_model_path or ""), mc.monitor, current, trainer.current_epoch,
            lightning_step(trainer), trainer.global_step, _settings(mc),
        )

    def score_of(self, path: str, fresh: bool) -> float | None:
        if self.monitor is None:
            return None
        if path in self.best_k:
            return self.best_k[path]
        return self.current if fresh else None


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


def find_checkpoints(trainer: pl.Trainer, checkpoints: Sequence[ModelCheckpoint] | None) -> list[ModelCheckpoint]:
    """The tracked ``ModelCheckpoint`` callbacks: ``checkpoints`` (each must be on the Trainer), or, for
    ``None``, every one on the Trainer."""
    if checkpoints is None:
        found = _compat.model_checkpoints(trainer)
        for mc in _compat.foreign_checkpoints(trainer):
            warn(
                f"{_OWNER}: {mc!r} is uploaded, but Lightning does not count it as a checkpoint callback of "
                f"this Trainer (`trainer.checkpoint_callback`, `ckpt_path='best'` do not see it)."
                + _compat.mix_hint(trainer, mc)
            )
        return found
    every = _compat.model_checkpoints(trainer)
    missing = [cb for cb in checkpoints if not any(cb is mc for mc in every)]
    if missing:
        raise ConfigurationError(
            f"{_OWNER}(checkpoints=...) got {len(missing)} ModelCheckpoint(s) that are not among the Trainer's "
            "callbacks; pass the same instances to `Trainer(callbacks=[...])`, or leave `checkpoints=None` to "
            "upload every ModelCheckpoint on the Trainer."
        )
    return list(checkpoints)


def collection_names(
    template: str | None, run_id: str, every: list[ModelCheckpoint], tracked: list[ModelCheckpoint]
) -> list[str]:
    """The collection of each of ``tracked`` (by ``template``, or the default names among ``every``
    ModelCheckpoint of the Trainer); ``ConfigurationError`` when the template gives two the same name."""
    defaults = default_names(run_id, [*every, *[mc for mc in tracked if mc not in every]])
    names: list[str] = []
    for index, mc in enumerate(tracked):
        name = defaults[id(mc)] if template is None else name_for(template, run_id, mc.monitor, mc.mode, index)
        if name in names:
            raise ConfigurationError(
                f"{_OWNER}(name={template!r}) gives the same artifact name {name!r} to two ModelCheckpoints; "
                "add a field that tells them apart, e.g. `name='model-{run_id}-{monitor}-{index}'`."
            )
        names.append(name[:128])
    return names


def run_after_checkpoints(trainer: pl.Trainer, owner: Callback, tracked: list[ModelCheckpoint]) -> None:
    """Make sure ``owner``'s hooks run after every tracked ModelCheckpoint's.

    Lightning calls ``on_train_epoch_end`` of ``Checkpoint`` and ``EarlyStopping`` callbacks after
    the module's own hook and after every other callback's, and ModelCheckpoint saves there by
    default; a private ``Checkpoint`` (:func:`after_checkpoints`), appended last by the owner's own
    ``on_train_epoch_end`` (which Lightning runs first) and gone after its hook, forwards that hook, so it
    costs no hook call on the training batches. The owner is not a ``Checkpoint`` itself, so Lightning
    still adds its default ``ModelCheckpoint``.
    """
    callbacks = without_hook(trainer, owner)  # one left behind by a fit that stopped
    setattr(trainer, "callbacks", callbacks)  # noqa: B010 - a new list: a hook loop already running keeps the old one
    if owner not in callbacks or not tracked:
        return
    last = max(callbacks.index(mc) for mc in tracked if mc in callbacks)
    mine = callbacks.index(owner)
    if mine > last:
        return
    callbacks.remove(owner)
    callbacks.insert(last, owner)  # `last` shifted down by one after the removal
    setattr(trainer, "callbacks", callbacks)  # noqa: B010 - a new list: a hook loop already running keeps the old one


def without_hook(trainer: pl.Trainer, owner: Callback) -> list[Callback]:
    """The Trainer's callbacks without ``owner``'s :func:`after_checkpoints` hook."""
    callbacks: list[Callback] = list(getattr(trainer, "callbacks", []))
    return [cb for cb in callbacks if not (isinstance(cb, AfterCheckpointsHook) and cb.owner is owner)]


class AfterCheckpointsHook:
    """Runs ``scan`` where Lightning runs checkpoint callbacks: last. Mixed into the ``Checkpoint`` class
    of the Trainer's own package (:func:`after_checkpoints`), so that a Trainer of either package runs it
    last."""

    def __init__(self, owner: Callback, scan: Callable[[pl.Trainer], None]) -> None:
        self.owner = owner
        self.scan = scan

    @property
    def state_key(self) -> str:
        return f"_AfterCheckpoints[{self.owner.state_key}]"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self.scan(trainer)
        finally:  # its moment is over: off the Trainer until the next epoch end
            setattr(trainer, "callbacks", without_hook(trainer, self.owner))  # noqa: B010

    def __reduce__(self) -> tuple[Any, ...]:  # ddp_spawn pickles the Trainer's callbacks
        return (after_checkpoints, (self.owner, self.scan, _compat.namespace_of(self)))


class CheckpointsKey:
    """``UploadCheckpoints``' ``state_key`` when it was given its ``ModelCheckpoint`` callbacks: it names
    their keys, which follow their settable options, and Lightning reads it on every hook call (about
    16 µs to build with two of them). Built again only when what those keys are made of changed: each
    callback's identity and the five attributes Lightning's ``ModelCheckpoint.state_key`` reads; built
    on every call when a class computes its key another way."""

    def __init__(self) -> None:
        self._made: tuple[Any, str] = (None, "")

    def __call__(self, owner: Any, checkpoints: Sequence[ModelCheckpoint]) -> str:
        parts = _key_parts(checkpoints)
        if parts is None or parts != self._made[0]:
            key = owner._generate_state_key(name=owner.name, aliases=list(owner.aliases),
                                            checkpoints=[mc.state_key for mc in checkpoints])
            if parts is None:
                return str(key)
            self._made = (parts, key)
        return self._made[1]


_PLAIN_KEY: dict[type, bool] = {}  # whether a class's state_key is ModelCheckpoint's own


def _key_parts(checkpoints: Sequence[ModelCheckpoint]) -> tuple[Any, ...] | None:
    parts: list[Any] = []
    for mc in checkpoints:
        plain = _PLAIN_KEY.get(type(mc))
        if plain is None:
            owner = next((k for k in type(mc).__mro__ if "state_key" in k.__dict__), None)
            plain = _PLAIN_KEY[type(mc)] = owner is not None and owner.__name__ == "ModelCheckpoint"
        if not plain:  # a subclass with a key of its own
            return None
        parts.append((id(mc), mc.monitor, mc.mode, mc._every_n_train_steps, mc._every_n_epochs,
                      mc._train_time_interval))
    return tuple(parts)


_HOOK_CLASSES: dict[type, type] = {}


def after_checkpoints(owner: Callback, scan: Callable[[pl.Trainer], None], namespace: str | None) -> Callback:
    """An :class:`AfterCheckpointsHook` that is a ``Checkpoint`` of ``namespace``'s package."""
    roots = ("pytorch_lightning",) if namespace == "pytorch_lightning" else ("lightning.pytorch",)
    base = _compat.classes("callbacks", "Checkpoint", roots)[0]
    cls = _HOOK_CLASSES.get(base)
    if cls is None:
        cls = _HOOK_CLASSES[base] = type("_AfterCheckpoints", (AfterCheckpointsHook, base), {})
    return cls(owner, scan)
