"""Rank 0's W&B run folder on every rank of a Fabric job: :class:`FabricShareRunDir`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core.run_info import RunDirOptions, SharedRun, ShareRunDirMixin, describe_run

if TYPE_CHECKING:
    from lw_callbacks.fabric._common import Fabric


class FabricShareRunDir(ShareRunDirMixin):
    r"""Make rank 0's W&B run folder, id, name and config known on every rank of a Fabric job.

    :meth:`share_run_dir`, called on every rank, starts the run on global rank 0 and sets on every
    rank, after one ``fabric.broadcast``, the attributes :class:`~lw_callbacks.ShareRunDir` has
    (``run_dir``, ``files_dir``, ``wandb_dir``, ``run_id``, ``run_name``, ``config``) and
    ``os.environ["WANDB_DIR"]``.

    Args:
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.

    Raises:
        ConfigurationError:
            From the hook, if the Fabric has no W&B logger.
        ConfigurationError:
            If ``set_env`` is not a bool.

    Example::

        >>> import lightning as L
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricShareRunDir
        >>> fabric = L.Fabric(accelerator="cpu", devices=1,  # e.g. strategy="ddp", devices=2
        ...                   loggers=[WandbLogger(project="digits", config={"hidden": 64})])
        >>> share = FabricShareRunDir()
        >>> share.share_run_dir(fabric).name  # on every rank
        'offline-run-...'
        >>> share.config  # the same on every rank (a sweep's values)
        {'hidden': 64}
    """

    def __init__(self, set_env: bool = True) -> None:
        self._options = RunDirOptions.check(type(self).__name__, set_env=set_env)
        self._shared = SharedRun(type(self).__name__)

    def share_run_dir(self, fabric: Fabric) -> Path | None:
        """Broadcast rank 0's run folder to every rank; returns it (``None`` when W&B is disabled)."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        info = describe_run(run_of(logger, 0), logger, type(self).__name__) if fabric.global_rank == 0 else None
        info = fabric.broadcast(info, src=0)  # every rank enters it
        self._shared.adopt(info, fabric.global_rank, self.set_env)
        return self._shared.run_dir
