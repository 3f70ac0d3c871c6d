"""What every rank knows of rank 0's W&B run: describe the run on rank 0, adopt the description on each rank.

:func:`describe_run` turns rank 0's run into a plain ``dict`` (folder, id, name, config, each config
value pickled on its own) that a broadcast carries; :meth:`SharedRun.adopt` takes it on a rank. The
broadcast itself belongs to the caller (the Trainer's strategy or ``fabric.broadcast``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from lw_callbacks._errors import Option, check_bool, warn
from lw_callbacks._wandb import run_folder, warning_cache

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

__all__ = [
    "RunDirOptions",
    "ShareRunDirMixin",
    "SharedRun",
    "describe_run",
    "pack_config",
    "run_config",
    "sweep_values",
    "unpack_config",
]


def _plain(value: Any) -> Any:
    """A W&B config value as plain Python: nested mappings become ``dict``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def pack_config(config: Mapping[str, Any] | None, owner: str = "ShareRunDir") -> dict[str, bytes]:
    """Each key of a run's config (W&B's own ``_``-keys left out) pickled on its own, for a broadcast.

    A value that cannot be pickled is left out with one warning naming its key (on global rank 0,
    where this runs), so one bad value neither breaks nor hangs the collective.
    """
    packed: dict[str, bytes] = {}
    if config is None:
        return packed
    items = config.items() if hasattr(config, "items") else ()
    for key, value in items:
        if str(key).startswith("_"):
            continue
        try:
            packed[str(key)] = pickle.dumps(_plain(value))
        except Exception as err:
            warning_cache.warn(
                f"{owner}: the run's config value {key!r} cannot be sent to the other ranks "
                f"({type(err).__name__}: {err}); `share.config` leaves it out on every rank."
            )
    return packed


def unpack_config(packed: Mapping[str, bytes], global_rank: int = 0, owner: str = "ShareRunDir") -> dict[str, Any]:
    """The plain config dict of :func:`pack_config`'s output; a value that fails to load is left out
    with a warning naming its key (e.g. an object whose class this process cannot import)."""
    config: dict[str, Any] = {}
    for key, blob in packed.items():
        try:
            config[key] = pickle.loads(blob)
        except Exception as err:
            warn(
                f"[rank {global_rank}] {owner}: the run's config value {key!r} could not be loaded on this "
                f"rank ({type(err).__name__}: {err}); `share.config` leaves it out here.",
                all_ranks=True,
            )
    return config


def sweep_values(run: Run | None = None, owner: str = "ShareRunDir") -> dict[str, Any]:
    """The values a W&B sweep agent gave this run, read with wandb's own reader from the file the agent
    wrote (``WANDB_SWEEP_PARAM_PATH``, the file ``wandb.init`` reads); ``{}`` outside a sweep.

    Needed where the process's run is *attached* rather than started (rank 0 under ``ddp_spawn``):
    wandb 0.31 gives an attached run an empty config, without the sweep's values.
    """
    settings = getattr(run, "settings", None)
    path = getattr(settings, "sweep_param_path", None) or os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not os.path.isfile(path):
        return {}
    from wandb.sdk.lib import config_util

    try:
        values = config_util.dict_from_config_file(path) or {}
    except Exception as err:
        warning_cache.warn(f"{owner}: could not read the sweep's parameters from {path} ({err}).")
        return {}
    return {str(k): v for k, v in values.items() if not str(k).startswith("_")}


def run_config(run: Run, sweep: Mapping[str, Any] | None = None, owner: str = "ShareRunDir") -> dict[str, Any]:
    """The run's config as a plain dict: its own items, with a sweep's values over them (as wandb
    locks them), W&B's own ``_``-keys left out. ``sweep``: :func:`sweep_values` if already read."""
    config = {str(k): v for k, v in run.config.items() if not str(k).startswith("_")}
    config.update(sweep_values(run, owner) if sweep is None else sweep)
    return config


def describe_run(run: Run | None, logger: object, owner: str = "ShareRunDir") -> dict[str, Any] | None:
    """Rank 0's description of ``run`` for a broadcast; ``None`` when there is no run (W&B disabled)."""
    if run is None:
        return None
    folder = run_folder(run, logger)  # <root>/wandb/<offline-run-...>, also for an attached run
    sweep = sweep_values(run, owner)
    return {
        "run_dir": str(folder),
        "files_dir": str(folder / "files"),
        "wandb_dir": str(folder.parent.parent),
        "run_id": run.id,
        "run_name": run.name or None,
        "config": pack_config(run_config(run, sweep, owner), owner),
        "sweep_keys": sorted(sweep),
    }


class SharedRun:
    """Rank 0's run as this rank knows it: ``None`` / ``{}`` / ``[]`` until :meth:`adopt` took a description."""

    def __init__(self, owner: str = "ShareRunDir") -> None:
        self.owner = owner  # the class the user built, named in warnings
        self.run_dir: Path | None = None
        self.files_dir: Path | None = None
        self.wandb_dir: Path | None = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self.config: dict[str, Any] = {}
        self.sweep_keys: list[str] = []

    def adopt(self, info: Mapping[str, Any] | None, global_rank: int, set_env: bool) -> bool:
        """Take rank 0's description (:func:`describe_run`, after the broadcast) on this rank; with
        ``set_env`` also ``os.environ["WANDB_DIR"]``. ``False`` when W&B is disabled (``info`` is ``None``)."""
        if info is None:
            self.config, self.sweep_keys = {}, []
            return False
        self.run_dir = Path(info["run_dir"])
        self.files_dir = Path(info["files_dir"])
        self.wandb_dir = Path(info["wandb_dir"])
        self.run_id = info["run_id"]
        self.run_name = info["run_name"]
        self.config = unpack_config(info.get("config", {}), global_rank, self.owner)
        self.sweep_keys = list(info.get("sweep_keys", []))
        if set_env:
            os.environ["WANDB_DIR"] = str(self.wandb_dir)
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            warn(
                f"[rank {global_rank}] {self.owner}: rank 0's run folder {self.run_dir} does not exist on this "
                "node (no shared filesystem?); created it here empty. Files written there stay on this node.",
                all_ranks=True,
            )
        return True


@dataclass(frozen=True)
class RunDirOptions:
    """The options of one ``ShareRunDir`` or ``FabricShareRunDir``, checked once by :meth:`check`."""

    set_env: bool = True
    checkpoints_in_run_dir: bool = False
    apply_config_to_hparams: bool = False
    owner: str = field(default="ShareRunDir", compare=False)  # the class the user built, named in messages

    @classmethod
    def check(cls, owner: str, **flags: Any) -> RunDirOptions:
        """The options of the constructor's arguments (each a ``bool``).

        Raises:
            ConfigurationError: for an argument that is not a ``bool``, naming it.
        """
        return cls(**{name: check_bool(owner, name, value) for name, value in flags.items()}, owner=owner)


T = TypeVar("T")


class _Found(Generic[T]):
    """What rank 0's run told this rank: the attribute of the same name of the object's ``SharedRun``,
    readable and assignable (a result, not an option)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Found[T]: ...

    @overload
    def __get__(self, obj: ShareRunDirMixin, objtype: type | None = None) -> T: ...

    def __get__(self, obj: ShareRunDirMixin | None, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj._shared, self.name)

    def __set__(self, obj: ShareRunDirMixin, value: T) -> None:
        setattr(obj._shared, self.name, value)


class ShareRunDirMixin:
    """The options of a ``ShareRunDir`` or ``FabricShareRunDir`` (read-only) and what it found (the
    run's folder, id, name and config), as attributes of the object that keeps them under ``_options``
    and ``_shared``."""

    _options: RunDirOptions
    _shared: SharedRun

    @property
    def options(self) -> RunDirOptions:
        """The checked options (frozen)."""
        return self._options

    set_env = Option[bool]("Whether ``WANDB_DIR`` is set on every rank to rank 0's W&B folder.", via="options")
    run_dir = _Found["Path | None"]("The run's own folder.")
    files_dir = _Found["Path | None"]("``run_dir / \"files\"``: files there are uploaded with the run.")
    wandb_dir = _Found["Path | None"]("The root W&B writes under; the value ``WANDB_DIR`` gets.")
    run_id = _Found["str | None"]("The run's id.")
    run_name = _Found["str | None"]("The run's display name.")
    config = _Found["dict[str, Any]"]("The run's config, the same plain ``dict`` on every rank (a sweep's values).")
