"""Rank 0's W&B run folder on every rank of a Fabric job: :class:`FabricShareRunDir`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.run_info import RunDirOptions, SharedRun, ShareRunDirMixin, describe_run


class FabricShareRunDir(ShareRunDirMixin):
    r"""Make rank 0's W&B run folder, id, name and config known on every rank of a Fabric job.

    :meth:`share_run_dir` starts the run on global rank 0 (if it has not started), broadcasts its
    folder, id, name and config with one ``fabric.broadcast`` (every rank calls it), and sets the
    attributes below and ``os.environ["WANDB_DIR"]`` on every rank, exactly as
    :class:`~lw_callbacks.ShareRunDir` does (it is that callback's core). Under a W&B sweep,
    ``config`` holds the sweep's values on every rank: build the model from it after the hook.

    Attributes (``None`` before :meth:`share_run_dir` and under ``WANDB_MODE=disabled``):
        run_dir, files_dir, wandb_dir, run_id, run_name: as ``ShareRunDir``.
        config: the run's config, the same plain ``dict`` on every rank (``{}`` before the hook
            and when W&B is disabled).

    Args:
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.

    Raises:
        ConfigurationError: in ``__init__``, when ``set_env`` is not a ``bool``; from the hook,
            when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricShareRunDir
        >>> share = FabricShareRunDir()
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, callbacks=[share],  # e.g. strategy="ddp", devices=2
        ...                   loggers=[WandbLogger(project="digits", config={"hidden": 64})])
        >>> fabric.launch()
        >>> fabric.call("share_run_dir", fabric)
        >>> share.run_dir.name  # the same path on every rank
        'offline-run-...'
        >>> share.config  # a sweep's values, on every rank: build the model from them
        {'hidden': 64}
    """

    def __init__(self, set_env: bool = True) -> None:
        self._options = RunDirOptions.check(type(self).__name__, set_env=set_env)
        self._shared = SharedRun(type(self).__name__)

    def share_run_dir(self, fabric: Any) -> Path | None:
        """Broadcast rank 0's run folder to every rank; returns it (``None`` when W&B is disabled)."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        info = describe_run(run_of(logger, 0), logger, type(self).__name__) if fabric.global_rank == 0 else None
        info = fabric.broadcast(info, src=0)  # every rank enters it
        self._shared.adopt(info, fabric.global_rank, self.set_env)
        return self._shared.run_dir
