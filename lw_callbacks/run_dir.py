"""ShareRunDir: rank 0's W&B run directory, id and name, known on every rank."""

from __future__ import annotations

import base64
import copy
import os
import pickle
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lw_callbacks import _compat
from lw_callbacks._errors import ConfigurationError, Option, check_seconds
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

__all__ = ["ShareRunDir", "pack_config", "run_config", "shared_run_config", "sweep_values", "unpack_config"]


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors: compare as different
        return False


class ShareRunDir(ShareRunDirMixin, Callback):
    r"""Make rank 0's W&B run directory, id, name and config known on every rank.

    Only global rank 0 has a live ``wandb`` run; on the other ranks ``wandb.run`` is ``None`` and
    ``WandbLogger.experiment`` is a dummy. At ``setup`` this callback starts the run on rank 0 (if it
    has not started), broadcasts its folder, id, name and config through the Trainer's strategy (one
    broadcast, entered by every rank), and on every rank sets ``os.environ["WANDB_DIR"]`` and the
    attributes below. It works with every launcher (Lightning's ``ddp`` and ``ddp_spawn``, torchrun,
    SLURM, several nodes), unlike setting ``WANDB_DIR`` from ``wandb.run.dir`` before the other ranks
    start.

    Under a W&B sweep the agent's values reach ``wandb.config`` on rank 0 only, so without this the
    other ranks build their model from the script's defaults. ``config`` gives every rank the run's
    values, and ``apply_config_to_hparams=True`` writes them into the LightningModule's ``hparams``
    at ``setup``: before ``LightningModule.setup`` and ``configure_model`` run on each rank, and
    before Lightning builds the optimizers and logs the hyperparameters. A module that builds its
    layers in ``configure_model`` and its optimizer in ``configure_optimizers`` from ``self.hparams``
    then trains with the sweep's values on every rank.

    Attributes (``None`` until ``setup``, and under ``WANDB_MODE=disabled``):
        run_dir: the run's own folder, ``<save_dir>/wandb/offline-run-<date>-<id>`` (or
            ``run-<date>-<id>`` online), wherever W&B put it.
        files_dir: ``run_dir / "files"`` (``wandb.run.dir``): files there are uploaded with the run.
        wandb_dir: the root W&B writes under (the ``WandbLogger``'s ``save_dir``); this is the value
            ``WANDB_DIR`` gets on every rank.
        run_id: the run's id. run_name: its display name (``None`` offline if none was given).
        config: the run's config as rank 0 holds it at ``setup``, the same plain ``dict`` on every
            rank (``{}`` until then and when W&B is disabled): a sweep's values,
            ``WandbLogger(config=...)``, ``logger.experiment.config.update(...)`` made before ``fit``.
            Lightning logs the module's hyperparameters after ``setup``; they are not in it unless
            an earlier ``fit`` of the same run logged them.

    Args:
        checkpoints_in_run_dir: put the checkpoints of every ``ModelCheckpoint`` that has no
            ``dirpath`` into ``run_dir / "checkpoints"`` (outside ``files/``, so the run does not
            upload them a second time).
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.
        apply_config_to_hparams: on every rank, set each key of ``pl_module.hparams`` that the run's
            config also has to the config's value (the run's config wins over the script's defaults,
            the YAML of LightningCLI and the command line). A sweep parameter the module's hparams
            do not have gets one warning naming it. Values are applied as they are, without
            casting.

    Raises:
        ConfigurationError: in ``__init__``, when an argument is not a ``bool``; at
            ``setup``, when the Trainer has no ``WandbLogger``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import ShareRunDir
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> share = ShareRunDir(checkpoints_in_run_dir=True)
        >>> trainer = Trainer(
        ...     logger=WandbLogger(project="digits", config={"batch_size": 32}),
        ...     callbacks=[share, ModelCheckpoint(monitor="val_acc", mode="max")],
        ...     max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        ...     log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
        >>> share.run_dir.name  # the same path on every rank
        'offline-run-...'
        >>> trainer.checkpoint_callback.dirpath == str(share.run_dir / "checkpoints")
        True
        >>> share.config  # the same dict on every rank
        {'batch_size': 32}

    Under a sweep with DDP, the layers built from ``hparams`` after ``ShareRunDir``'s ``setup``::

        class Net(LightningModule):
            def __init__(self, hidden: int = 64, lr: float = 1e-2) -> None:
                super().__init__()
                self.save_hyperparameters()
                self.net = None

            def configure_model(self) -> None:  # after ShareRunDir's setup, on every rank
                if self.net is None:
                    self.net = nn.Sequential(nn.Linear(64, self.hparams.hidden), nn.ReLU(),
                                             nn.Linear(self.hparams.hidden, 10))

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

        share = ShareRunDir(checkpoints_in_run_dir=True, apply_config_to_hparams=True)
        trainer = Trainer(logger=WandbLogger(project="mnist"), strategy="ddp", devices=2,
                          callbacks=[share, ModelCheckpoint(monitor="val_acc", mode="max")])
        trainer.fit(Net(), datamodule=dm)
        share.run_dir  # the same path on every rank
        share.config   # the same dict on every rank, e.g. {"lr": 0.003, "hidden": 128} under a sweep

    On nodes without a shared filesystem, rank 0's folder does not exist on the other nodes: there
    the folder is created (empty) and a warning says so. To read the run's config before the Trainer
    exists (to build a model outside the LightningModule's hooks), see :func:`shared_run_config`.
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


def shared_run_config(logger: Any, timeout: float = 300.0) -> dict[str, Any]:
    r"""Rank 0's W&B run config on every process, *before* the Trainer (or Fabric) exists.

    For scripts that need a sweep's values to build the model, data or optimizer before training
    starts. Call it on every process, at the same point of the script, with the W&B logger you then
    give to the Trainer (Lightning's ``WandbLogger``) or to Fabric (wandb's Fabric ``WandbLogger``):
    global rank 0 starts the run (a sweep agent's values go into its config there), and every
    process gets the run's config as a plain ``dict``. The logger keeps using that run.

    How the config reaches the other processes depends on the launcher:

    - a single process, and Lightning's ``ddp_spawn``: this process is rank 0; whatever you build
      from the config is sent to the spawned ranks with the model.
    - Lightning's ``ddp`` on one node: the script's own process is rank 0; when ``fit`` starts the
      launcher re-runs the script for the other ranks, which inherit the config from it (through an
      environment variable that only the launcher's direct children accept).
    - ``torchrun``, SLURM (``srun``) and any ``env://`` launch (``RANK``, ``WORLD_SIZE``,
      ``MASTER_ADDR``, ``MASTER_PORT``): a rendezvous through torch.distributed's ``TCPStore`` at
      ``MASTER_ADDR:MASTER_PORT``: torchrun's own store when it has one, otherwise one hosted by
      rank 0 until every rank has read the config (then the port is free for the process group).

    Lightning's own ``ddp`` launcher on several nodes is not covered (a node's first process does
    not know its global rank before the Trainer exists): there use
    ``ShareRunDir(apply_config_to_hparams=True)``, which covers every launcher.

    Args:
        logger: the W&B logger the Trainer or Fabric will use.
        timeout: seconds a rank waits for rank 0's config before it raises.

    Returns:
        The run's config (W&B's own ``_``-keys left out): the sweep's values and whatever else the
        run was started with (``WandbLogger(config=...)``); ``{}`` when W&B is disabled.

    Raises:
        ConfigurationError: on a node other than the first of a Lightning-launched ``ddp``
            job (``NODE_RANK`` > 0 without ``RANK``), or in a rank Lightning's ``ddp`` launcher
            started when the script's first process did not call it before ``fit``.
        RuntimeError: rank 0 failed to start the run, or did not answer within ``timeout``.

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
        env: Any = TorchElasticEnvironment()
    elif SLURMEnvironment.detect():
        env = SLURMEnvironment()
    elif all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]))
    else:
        return None
    return env.global_rank(), env.world_size(), env.main_address, env.main_port


def _packed_run_config(logger: Any) -> dict[str, bytes]:
    run = run_of(logger, 0)
    return {} if run is None else pack_config(run_config(run, owner="shared_run_config"), "shared_run_config")


def _exchange(logger: Any, rank: int, world_size: int, address: str, port: int, timeout: float) -> dict[str, Any]:
    from datetime import timedelta

    from torch.distributed import TCPStore

    if world_size <= 1:
        return unpack_config(_packed_run_config(logger), rank, "shared_run_config")
    # torchrun's agent hosts a store at MASTER_ADDR:MASTER_PORT for its workers; otherwise rank 0 hosts
    # one here and closes it once every rank has read, before the process group binds that port.
    host = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
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
        if "error" in data:
            raise RuntimeError(f"shared_run_config: rank 0 failed to start the run: {data['error']}")
        return unpack_config(data["config"], rank, "shared_run_config")
    finally:
        del store
