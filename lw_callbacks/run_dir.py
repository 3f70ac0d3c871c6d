"""ShareRunDir: rank 0's W&B run directory, id and name, known on every rank."""

from __future__ import annotations

import base64
import copy
import os
import pickle
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lw_callbacks import _compat
from lw_callbacks._errors import ConfigurationError, Option, check_seconds, warn
from lw_callbacks._wandb import require_wandb_logger, run_of, warning_cache
from lw_callbacks.core.run_info import (
    RunDirOptions,
    SharedRun,
    ShareRunDirMixin,
    describe_run,
    pack_config,
    run_config,
    sweep_values,
    unpack_config,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    import pytorch_lightning
    from lightning.fabric.plugins.environments import ClusterEnvironment
    from lightning.pytorch.loggers import WandbLogger
    from wandb.integration.lightning.fabric import WandbLogger as FabricWandbLogger

    #: the W&B loggers of a Trainer (either namespace) or of Fabric
    AnyWandbLogger: TypeAlias = WandbLogger | pytorch_lightning.loggers.WandbLogger | FabricWandbLogger

__all__ = ["ShareRunDir", "pack_config", "run_config", "shared_run_config", "sweep_values", "unpack_config"]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors: compare as different
        return False


class ShareRunDir(ShareRunDirMixin, Callback):
    r"""Make rank 0's W&B run folder, id, name and config known on every rank.

    At ``setup`` the run is started on global rank 0 and described to every rank in one broadcast
    of the Trainer's strategy, under every launcher; ``os.environ["WANDB_DIR"]`` and the attributes
    below are then set on every rank. Under a sweep, ``config`` holds the sweep's values everywhere.

    Attributes (``None`` until ``setup``, and under ``WANDB_MODE=disabled``):
        run_dir: the run's own folder (``<save_dir>/wandb/offline-run-<date>-<id>``).
        files_dir: ``run_dir / "files"``, uploaded with the run.
        wandb_dir: the root W&B writes under; the value ``WANDB_DIR`` gets.
        run_id: the run's id.
        run_name: the run's display name.
        config: the run's config at ``setup``, the same plain ``dict`` on every rank (``{}`` until then).

    Args:
        checkpoints_in_run_dir: save the checkpoints of every ``ModelCheckpoint`` without ``dirpath``
            into ``run_dir / "checkpoints"``.
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.
        apply_config_to_hparams: at ``setup``, on every rank, set each key of ``pl_module.hparams``
            that the run's config has to the config's value (before ``configure_model`` and
            ``configure_optimizers``).

    Raises:
        ConfigurationError:
            At ``setup``, if the Trainer has no ``WandbLogger``.
        ConfigurationError:
            If an argument is not a bool.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import ShareRunDir
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> share = ShareRunDir(checkpoints_in_run_dir=True)
        >>> trainer = Trainer(logger=WandbLogger(project="digits", config={"batch_size": 32}), callbacks=[share],
        ...                   max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False,
        ...                   enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
        >>> share.run_dir.name, share.config  # the same on every rank
        ('offline-run-...', {'batch_size': 32})
        >>> trainer.checkpoint_callback.dirpath == str(share.run_dir / "checkpoints")
        True
    """

    def __init__(
        self, checkpoints_in_run_dir: bool = False, set_env: bool = True, apply_config_to_hparams: bool = False
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self._options = RunDirOptions.check(
            owner, checkpoints_in_run_dir=checkpoints_in_run_dir, set_env=set_env,
            apply_config_to_hparams=apply_config_to_hparams,
        )
        self._shared = SharedRun(owner)
        self._redirected: set[int] = set()

    checkpoints_in_run_dir = Option[bool](
        "Whether ModelCheckpoints without ``dirpath`` save into the run's folder.", via="options"
    )
    apply_config_to_hparams = Option[bool](
        "Whether the run's config is set into ``pl_module.hparams`` at setup.", via="options"
    )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = require_wandb_logger(trainer, type(self).__name__)
        info: dict[str, Any] | None = None
        if trainer.global_rank == 0:
            info = describe_run(run_of(logger, 0), logger, type(self).__name__)
        # Every rank enters the broadcast (never a rank-0-only collective); None means "disabled".
        # The run's config travels in the same broadcast, each value pickled on its own.
        info = trainer.strategy.broadcast(info, src=0)
        if not self._shared.adopt(info, trainer.global_rank, self.set_env):
            return
        if self.checkpoints_in_run_dir:
            self._redirect_checkpoints(trainer)
        if self.apply_config_to_hparams:
            self._apply_to_hparams(pl_module)

    def _apply_to_hparams(self, pl_module: pl.LightningModule) -> None:
        """Set the matching keys of ``pl_module.hparams`` to the run's config, on every rank alike."""
        hparams = pl_module.hparams
        # Lightning logs ``hparams_initial`` to the run after setup: keep it equal to what trains.
        initial = getattr(pl_module, "_hparams_initial", None)
        changed = []
        for key, value in self.config.items():
            if key in hparams:
                if not _same(hparams[key], value):
                    changed.append(key)
                hparams[key] = value
                if initial is not None and key in initial:
                    initial[key] = copy.deepcopy(value)
        if changed and any(True for _ in pl_module.parameters()):
            # the classic trap: layers built in __init__ keep the values they were built with
            warning_cache.warn(
                f"ShareRunDir(apply_config_to_hparams=True) set {', '.join(map(repr, changed))} of "
                f"{type(pl_module).__name__}.hparams to the run's config, but the module already has parameters "
                "at setup: layers built in `__init__` keep the old values. Build them in `configure_model()` and "
                "the optimizer in `configure_optimizers()` from `self.hparams`."
            )
        missing = [key for key in self._shared.sweep_keys if key not in hparams]
        if missing:
            known = sorted(hparams) or "none: call `self.save_hyperparameters()` in `__init__`"
            warning_cache.warn(
                f"ShareRunDir(apply_config_to_hparams=True): the sweep sets {', '.join(map(repr, missing))}, "
                f"which {type(pl_module).__name__}.hparams does not have, so the model does not get "
                f"{'it' if len(missing) == 1 else 'them'}. Its hparams: {known}. Name the sweep's parameters "
                "after the module's `__init__` arguments, or read them from `share.config`."
            )

    def _redirect_checkpoints(self, trainer: pl.Trainer) -> None:
        assert self.run_dir is not None
        target = str(self.run_dir / "checkpoints")
        for callback in _compat.model_checkpoints(trainer):
            if callback.dirpath is None:
                self._redirected.add(id(callback))
            if id(callback) in self._redirected:  # again on a later fit, into that fit's run
                callback.dirpath = target


# ------------------------------------------------------------------ the config before the Trainer

_ENV_KEY = "LW_CALLBACKS_RUN_CONFIG"
_calls = 0


def shared_run_config(logger: AnyWandbLogger, timeout: float = 300.0) -> dict[str, Any]:
    r"""Rank 0's W&B run config on every process, *before* the Trainer (or Fabric) exists.

    Call it on every process, at the same point of the script, with the W&B logger you then give to
    the Trainer or Fabric: global rank 0 starts the run (with a sweep's values), every process gets
    its config. It works in one process, under Lightning's ``ddp`` (one node) and ``ddp_spawn``, and
    under ``torchrun``, SLURM or any ``env://`` launch; for Lightning's ``ddp`` on several nodes use
    ``ShareRunDir(apply_config_to_hparams=True)``.

    Args:
        logger: the W&B logger the Trainer or Fabric will use.
        timeout: seconds a rank waits for rank 0's config before it raises.

    Returns:
        The run's config (W&B's own ``_``-keys left out); ``{}`` when W&B is disabled.

    Raises:
        ConfigurationError:
            If ``logger`` is not a W&B logger or ``timeout`` not a number of seconds > 0.
        ConfigurationError:
            On a node other than the first of a Lightning-launched ``ddp`` job, or in a rank that
            Lightning's ``ddp`` launcher started before the script's first process called it.
        RuntimeError:
            If rank 0 failed to start the run, or did not answer within ``timeout``.

    Example::

        logger = WandbLogger(project="digits", config={"lr": 1e-2, "hidden": 64})
        config = shared_run_config(logger)  # on every rank: the sweep's values
        model = Net(hidden=config["hidden"], lr=config["lr"])
        Trainer(logger=logger, strategy="ddp", devices=2).fit(model, datamodule=dm)
    """
    check_seconds("shared_run_config", "timeout", timeout, example="300")
    if not (_compat.is_wandb_logger(logger) or _compat.is_fabric_wandb_logger(logger)):
        raise ConfigurationError(
            f"shared_run_config(logger={logger!r}): logger must be the W&B logger you give to the Trainer "
            "(lightning's `WandbLogger`) or to Fabric (wandb's Fabric `WandbLogger`), got "
            f"{type(logger).__name__}, e.g. `shared_run_config(WandbLogger(project='digits'))`."
        )
    global _calls
    _calls += 1
    inherited = _inherited_config()
    if inherited is not None:
        return inherited
    rendezvous = _rendezvous_env()
    if rendezvous is None:
        if os.environ.get("NODE_RANK", "0") != "0" and "RANK" not in os.environ:
            raise ConfigurationError(
                "shared_run_config: this is node "
                f"{os.environ['NODE_RANK']} of a job launched by Lightning's `ddp`, whose processes learn their "
                "global rank only from the Trainer. Launch with torchrun or SLURM, or use "
                "`ShareRunDir(apply_config_to_hparams=True)`, which works under every launcher."
            )
        if os.environ.get("LOCAL_RANK", "0") != "0":
            raise ConfigurationError(
                f"shared_run_config: this process (LOCAL_RANK={os.environ['LOCAL_RANK']}) was started by "
                "Lightning's `ddp` launcher, but the script's first process did not call shared_run_config "
                "before `trainer.fit`. Call it on every process, before `fit`."
            )
        packed = _packed_run_config(logger)
        # Lightning's `ddp` launcher re-runs this script for the other local ranks with a copy of this
        # environment: they take the config from here (only as direct children of this process).
        os.environ[_ENV_KEY] = _b64({"pid": os.getpid(), "config": packed})
        return unpack_config(packed, 0, "shared_run_config")
    return _exchange(logger, *rendezvous, timeout=timeout)


def _b64(data: dict[str, Any]) -> str:
    return base64.b64encode(pickle.dumps(data)).decode()


def _inherited_config() -> dict[str, Any] | None:
    value = os.environ.get(_ENV_KEY)
    if not value or "LOCAL_RANK" not in os.environ:
        return None
    try:
        data = pickle.loads(base64.b64decode(value))
    except Exception:
        return None
    if not isinstance(data, dict) or data.get("pid") != os.getppid():
        return None
    return unpack_config(data["config"], int(os.environ.get("LOCAL_RANK", "0")), "shared_run_config")


def _rendezvous_env() -> tuple[int, int, str, int] | None:
    """(global rank, world size, address, port) of a launch that set them before the script runs."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        env: ClusterEnvironment = TorchElasticEnvironment()
    elif SLURMEnvironment.detect():
        env = SLURMEnvironment()
    elif all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]))
    else:
        return None
    return env.global_rank(), env.world_size(), env.main_address, env.main_port


def _wait_for_close(store: Any, key: str, timeout: float) -> None:
    """On a rank other than 0, when rank 0 hosts the store: return once rank 0 has closed it. The process
    group's rendezvous binds the same port next, and a rank that reached it while the store still
    answered there would talk to the store being closed and fail (rank 0 then waits for it until its
    own timeout). Nothing sets the key waited for: the wait ends when the connection does."""
    from datetime import timedelta

    from torch.distributed import DistNetworkError

    try:
        store.wait([f"{key}/closed"], timedelta(seconds=timeout))
    except DistNetworkError:  # the connection closed: rank 0 closed its store
        return
    except Exception as err:
        warn(f"shared_run_config: rank 0 did not close its rendezvous store within {timeout:.0f}s "
             f"({type(err).__name__}: {err}); the process group's rendezvous on the same port may fail.")


def _packed_run_config(logger: AnyWandbLogger) -> dict[str, bytes]:
    run = run_of(logger, 0)
    return {} if run is None else pack_config(run_config(run, owner="shared_run_config"), "shared_run_config")


def _exchange(
    logger: AnyWandbLogger, rank: int, world_size: int, address: str, port: int, timeout: float
) -> dict[str, Any]:
    from datetime import timedelta

    from torch.distributed import TCPStore

    if world_size <= 1:
        return unpack_config(_packed_run_config(logger), rank, "shared_run_config")
    # torchrun's agent hosts a store at MASTER_ADDR:MASTER_PORT for its workers; otherwise rank 0 hosts
    # one here and closes it once every rank has read, before the process group binds that port, and
    # the other ranks return only once it closed.
    rank0_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    host, host_elsewhere = rank == 0 and rank0_hosts, rank != 0 and rank0_hosts
    store = TCPStore(
        address, port, world_size if host else None, is_master=host,
        timeout=timedelta(seconds=timeout), wait_for_workers=False,
    )
    key = f"lw_callbacks/run_config/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_calls}"
    try:
        if rank == 0:
            try:
                packed = _packed_run_config(logger)
            except BaseException as err:  # tell the others, so they do not wait for nothing
                store.set(f"{key}/data", _b64({"error": f"{type(err).__name__}: {err}"}))
                raise
            store.set(f"{key}/data", _b64({"config": packed}))
            store.wait([f"{key}/done"])
            return unpack_config(packed, rank, "shared_run_config")
        try:
            data = pickle.loads(base64.b64decode(store.get(f"{key}/data")))
        except Exception as err:
            raise RuntimeError(
                f"shared_run_config: rank {rank} got no run config from rank 0 at {address}:{port} within "
                f"{timeout:.0f}s ({type(err).__name__}: {err}). Is every rank calling it?"
            ) from err
        if store.add(f"{key}/acks", 1) == world_size - 1:
            store.set(f"{key}/done", "1")
        if host_elsewhere:
            _wait_for_close(store, key, timeout)
        if "error" in data:
            raise RuntimeError(f"shared_run_config: rank 0 failed to start the run: {data['error']}")
        return unpack_config(data["config"], rank, "shared_run_config")
    finally:
        del store
