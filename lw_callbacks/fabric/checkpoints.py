"""Checkpoints saved with ``fabric.save`` as W&B artifacts: :class:`FabricUploadCheckpoints`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from lw_callbacks import _state
from lw_callbacks._errors import (
    ConfigurationError,
    Option,
    check_choice,
    check_int,
    check_path,
    check_str,
    warn,
)
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core import files
from lw_callbacks.core.publish import Publisher
from lw_callbacks.core.versions import (
    UploadOptions,
    UploadOptionsMixin,
    as_float,
    check_aliases,
    flush_limit,
    name_for,
    version_aliases,
    version_metadata,
)

if TYPE_CHECKING:
    from wandb import Run

    from lw_callbacks.fabric._common import Fabric



class FabricUploadCheckpoints(UploadOptionsMixin):
    r"""Upload checkpoints saved with ``fabric.save`` as W&B ``model`` artifacts, without slowing training.

    After ``fabric.save(path, state)``, call :meth:`upload_checkpoint` on every rank: global rank 0 hands
    the file over and returns, and a worker thread uploads it, as :class:`~lw_callbacks.UploadCheckpoints`
    does (the same core). Each file becomes a version of ``collection_name`` holding ``model.ckpt``, with
    aliases ``latest``, ``best`` (by ``score``, with ``monitor`` and ``mode``), ``epoch-<n>``, ``step-<n>``
    and ``aliases``. Call :meth:`training_done` on every rank at the end (it flushes and shares what was
    logged), or :meth:`training_failed` from an ``except`` block. Your checkpoint files are only read.

    Attributes:
        collection_name: the artifact name, known on every rank after the first upload call.

    Args:
        name: collection name template with ``{run_id}``, ``{monitor}``, ``{mode}``, ``{index}`` (0).
        monitor: the name of the score passed to :meth:`upload_checkpoint`; enables ``best``.
        mode: ``"min"`` or ``"max"``: which score is best.
        aliases: extra aliases for every version.
        flush_timeout: seconds to wait for pending uploads at the end.
        staging_dir: where hand-over links go; ``None``: ``.upload-staging`` beside each file.
        progress_bar: show a progress bar while flushing 64 MiB or more.

    Options are read-only after construction (setting one raises ``AttributeError``).

    Raises:
        ConfigurationError: at construction, for a bad template, alias, ``flush_timeout``, ``mode``, ``monitor``,
            ``staging_dir`` or ``progress_bar``.
        ConfigurationError: from :meth:`upload_checkpoint`, when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricUploadCheckpoints, restore_checkpoint
        >>> upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[upload])
        >>> fabric.launch()
        >>> model = torch.nn.Linear(8, 1)
        >>> for epoch, val_acc in enumerate([0.5, 0.8, 0.7]):
        ...     fabric.save(f"checkpoints/epoch{epoch}.ckpt", {"model": model, "val_acc": val_acc})
        ...     fabric.call("upload_checkpoint", fabric, f"checkpoints/epoch{epoch}.ckpt",
        ...                 step=epoch, epoch=epoch, score=val_acc)
        >>> fabric.call("training_done", fabric)  # flushes, and tells every rank what was logged
        >>> path = restore_checkpoint(upload.collection_name + ":best")
        >>> path.name, path.parent.name.rsplit("-", 2)[1]  # the best version: epoch 1, val_acc 0.8
        ('model.ckpt', 'v1')
        >>> torch.load(path, weights_only=True)["val_acc"]
        0.8
    """

    def __init__(
        self,
        name: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        aliases: Sequence[str] = (),
        flush_timeout: float = 600.0,
        staging_dir: str | None = None,
        progress_bar: bool = True,
    ) -> None:
        owner = type(self).__name__
        self._mode = check_choice(owner, "mode", mode, ("min", "max"))
        self._monitor = check_str(owner, "monitor", monitor, allow_none=True, example="'val_acc'")
        # the options (checked once), hand-over, ledger, worker and flushes of UploadCheckpoints, its messages
        # naming this class
        self._options = UploadOptions(name, aliases, flush_timeout, staging_dir, progress_bar, owner)
        self.publisher = Publisher(self._options)
        self.collection_name: str | None = None
        self._run: Run | None = None

    monitor = Option[str | None]("The name of the score, or ``None`` (no ``best`` alias).")
    mode = Option[str]("``\"min\"`` or ``\"max\"``: which score is best.")

    def upload_checkpoint(
        self,
        fabric: Fabric,
        path: str | os.PathLike[str],
        *,
        step: int | None = None,
        epoch: int | None = None,
        score: Any = None,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Hand the checkpoint file at ``path`` (as ``fabric.save`` wrote it) over for upload.

        Args:
            fabric: the ``Fabric``.
            path: the file ``fabric.save`` wrote, or the folder of a sharded checkpoint (one version
                holding all its files; :func:`restore_checkpoint` returns the folder).
            step: optimizer step of the checkpoint (metadata and alias ``step-<n>``).
            epoch: epoch of the checkpoint (metadata and alias ``epoch-<n>``).
            score: the ``monitor`` value of this checkpoint (a number or a one-element tensor).
            aliases: extra aliases for this version only.
            metadata: extra JSON-serializable metadata for this version.

        Raises:
            FileNotFoundError: on global rank 0, when ``path`` does not exist.
            ConfigurationError: ``path`` is not a path; ``step`` /
                ``epoch`` not an int >= 0; a bad alias; on global rank 0, ``metadata`` that is not
                JSON-serializable (:class:`~lw_callbacks.ConfigurationError`, raised before anything
                is marked, so the corrected call for the same file uploads it).
        """
        call = f"{type(self).__name__}.upload_checkpoint"
        check_path(call, "path", path, allow_none=False)
        check_int(call, "step", step, minimum=0, allow_none=True, example="100")
        check_int(call, "epoch", epoch, minimum=0, allow_none=True, example="3")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigurationError(
                f"{call}(metadata={metadata!r}): metadata must be a dict of JSON-serializable values or None, "
                f"got {type(metadata).__name__}, e.g. metadata={{'lr': 0.01}}."
            )
        extra = list(check_aliases(aliases, call))
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        publisher = self.publisher
        if self.collection_name is None:  # first call: every rank learns the name (one broadcast)
            run = run_of(logger, fabric.global_rank)
            run_id = str(run.id) if run is not None else None
            run_id = fabric.broadcast(run_id, src=0)
            self.collection_name = name_for(self.name, run_id, self.monitor, self.mode, 0)[:128] if run_id else ""
            self._run = run
        if fabric.global_rank != 0 or self._run is None:
            return
        real = os.path.realpath(path)
        folder = os.path.isdir(real)  # a sharded checkpoint: one version holding all its files
        if not folder and not os.path.isfile(real):
            raise FileNotFoundError(
                f"{call}(path={str(path)!r}): no such file on global rank 0; "
                "pass the path given to `fabric.save(path, state)`, after that call."
            )
        value = as_float(score)
        value = value if value is not None and math.isfinite(value) else None
        meta = version_metadata(
            path, score=value, monitor=self.monitor, mode=self.mode, epoch=epoch, global_step=step, is_last=False,
            extra={**dict(metadata or {}), **({"folder": True} if folder else {})},
        )
        try:  # checked before anything is marked, so a corrected call for the same file is not skipped
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(
                f"{call}(metadata=...) must be JSON-serializable (str, numbers, "
                f"bools, None, lists and dicts of them; no NaN): {err}. Convert values first, e.g. "
                "`float(tensor)` or `str(path)`."
            ) from None
        if publisher.uploader is None:
            publisher.check_staging()  # a staging_dir that cannot be used: ConfigurationError naming it
            publisher.ledger.collection(self.collection_name, self.monitor, self.mode)
            publisher.begin(self._run, logger, owner=type(self).__name__)
        try:
            sig = files.signature_of(real, folder)
            if publisher.ledger.is_known(real, sig):
                return  # this content was handed over already
            all_aliases = version_aliases(epoch, step, publisher.options.aliases, extra)
            score_for_best = value if self.monitor is not None else None
            publisher.stage_and_submit(
                str(path), real, sig, self.collection_name, score_for_best, meta, all_aliases, is_folder=folder
            )
        except Exception as err:  # a hand-over problem never stops training
            warn(f"{type(self).__name__}: could not hand over {path} ({type(err).__name__}: {err}).")

    def training_done(self, fabric: Fabric) -> None:
        """Flush pending uploads and share what was logged with every rank (a broadcast: call on every rank).

        Under several processes rank 0 flushes for at most half the process group's timeout (or
        ``flush_timeout``, if shorter), so no rank waits in the broadcast longer than the group
        allows; what is left goes on in the background and ``wandb.finish()`` waits for it.
        """
        publisher = self.publisher
        world_size, strategy = getattr(fabric, "world_size", 1), getattr(fabric, "strategy", None)
        publisher.flush("training ended", flush_limit(publisher.options.flush_timeout, world_size, strategy))
        publisher.share_logged(fabric.global_rank == 0, fabric.broadcast)

    def training_failed(self, fabric: Fabric | None = None, exception: BaseException | None = None) -> None:
        """Flush pending uploads after a failure, with no collective (call it from ``except``)."""
        why = f"training stopped with {type(exception).__name__}" if exception is not None else "training stopped"
        self.publisher.flush(why)
        self.publisher.keep_logged()

    def state_dict(self) -> dict[str, Any]:
        """The ledger of handed-over files, to save with the checkpoint for a resume."""
        return _state.save(self.publisher.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.publisher.load_state_dict(_state.load(type(self).__name__, state_dict))
