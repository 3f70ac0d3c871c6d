"""WatchModel: gradient and parameter histograms, and the model graph, with nothing armed between log steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lw_callbacks._wandb import (
    finish_after_interrupted_cell,
    lightning_step,
    require_wandb_logger,
    run_of,
    skip_pandas_import,
)
from lw_callbacks.core.histograms import GRAPH_KEY as GRAPH_KEY  # the summary key of the graph
from lw_callbacks.core.histograms import WatchBase

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.optim import Optimizer

__all__ = ["WatchModel"]


class WatchModel(WatchBase, Callback):
    r"""Log histograms of gradients and / or parameters to W&B every ``log_freq`` optimizer steps.

    The callback form of ``WandbLogger.watch`` / ``wandb.watch``, with the same keys and panels
    (``gradients/<param name>``, ``parameters/<param name>``, ``graph_0`` in the summary), but:

    - it installs no hook on any parameter or module to collect histograms: on a log step it reads
      the gradients in ``on_before_optimizer_step``, where they are final (after gradient
      accumulation and the DDP all-reduce) and unscaled (after the AMP ``GradScaler.unscale_``);
      between log steps it costs one modulo per optimizer step;
    - ``log_freq`` counts optimizer steps (``trainer.global_step``), not micro-batches, and
      histograms land at ``trainer/global_step`` 0, ``log_freq``, ``2 * log_freq``, ...;
    - with several optimizers (manual optimization, a GAN's generator and discriminator), each
      optimizer's steps are counted apart: at its 0th, ``log_freq``-th, ... step, the parameters it
      owns (its ``param_groups``) are logged, with the gradients it steps with, at the W&B step of
      that batch; no gradient left over from another optimizer's step is logged;
    - only global rank 0 does any work, with no collective;
    - it removes everything it installed when fit ends (or fails), so the same model can be fit
      again, resumed, or watched by another instance, with no error and no duplicate keys;
    - it is configured like any other callback, including from LightningCLI YAML.

    Only trainable parameters (``requires_grad``) are watched. A parameter whose gradient is
    ``None`` on a log step (unused in that step) gets no gradient histogram at that step. Values
    that are NaN or infinite are left out of a histogram; a tensor with no finite value gets no
    histogram at that step.

    Args:
        log: ``"gradients"``, ``"parameters"`` or ``"all"`` (both).
        log_freq: log every this many optimizer steps (``trainer.global_step``), starting at step 0;
            with several optimizers, every this many steps of each optimizer.
        log_graph: log the model's module graph (as ``wandb.watch(log_graph=True)`` does) from the
            first training batch of each fit; its forward hooks are removed at the end of that batch.
        include: parameter-name patterns (``fnmatch`` style, e.g. ``"encoder.*"``, matched against
            ``LightningModule.named_parameters()`` names) to watch; ``None`` watches every
            trainable parameter.
        exclude: parameter-name patterns not to watch (applied after ``include``), e.g.
            ``["*.bias", "*norm*"]``.
        bins: bins per histogram (1 to 512; W&B shows at most 512).

    Raises:
        ConfigurationError: at construction, for a ``log`` outside the accepted values, ``log_freq``
            that is not an int >= 1, ``bins`` outside 1..512, a ``log_graph`` that is not a bool, or
            ``include`` / ``exclude`` that are not a pattern or a list of patterns; at ``setup``, when
            the Trainer has no ``WandbLogger`` (under ``fast_dev_run`` nothing is logged and nothing
            is raised).

    Options are read-only after construction (setting one raises ``AttributeError``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import WatchModel
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> watch = WatchModel(log="all", log_freq=2, exclude=["*.bias"])
        >>> watch.log_gradients, watch.log_parameters
        (True, True)
        >>> trainer = Trainer(
        ...     logger=WandbLogger(project="digits"),
        ...     callbacks=[watch],
        ...     max_steps=4, limit_val_batches=0, enable_checkpointing=False,
        ...     log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())  # logs at steps 0 and 2
        >>> watch.watched_names  # everything is released when fit ends
        []

    From LightningCLI YAML::

        trainer:
          callbacks:
            - class_path: lw_callbacks.WatchModel
              init_args: {log: all, log_freq: 50}
    """

    @property
    def log_gradients(self) -> bool:
        """Whether gradient histograms are logged."""
        return self.options.log_gradients

    @property
    def log_parameters(self) -> bool:
        """Whether parameter histograms are logged."""
        return self.options.log_parameters

    # ----------------------------------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and require_wandb_logger(trainer, type(self).__name__) is not None:
            skip_pandas_import()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.core.release()
        if trainer.global_step == 0:  # a fresh fit; a resumed or continued one keeps counting
            self.core.optimizer_steps = {}
        watched = self.core.select(pl_module)
        if trainer.global_rank != 0:
            return
        self.core.start(run_of(require_wandb_logger(trainer, type(self).__name__), trainer.global_rank), watched)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.core.arm_graph(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.core.finish_graph()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) < 2:
            # runs on every optimizer step: leave on an integer test unless this step logs
            step = trainer.global_step
            if step % self.options.log_freq:
                return
            self.core.log_histograms(step, lightning_step(trainer))
            return
        # several optimizers (manual optimization): each one's steps are counted apart, and at its
        # log steps the parameters it owns are logged, their gradients fresh
        index = next((i for i, opt in enumerate(optimizers) if opt is optimizer), -1)
        step = self.core.optimizer_steps.get(index, 0)
        self.core.optimizer_steps[index] = step + 1
        if step % self.options.log_freq == 0:
            self.core.log_histograms(step, lightning_step(trainer), optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        # the steps of each optimizer of a model with several, so that a resumed fit goes on counting
        return {"optimizer_steps": dict(self.core.optimizer_steps)} if self.core.optimizer_steps else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.optimizer_steps = {int(k): int(v) for k, v in state_dict.get("optimizer_steps", {}).items()}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.core.release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.core.release()
        finish_after_interrupted_cell(trainer, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.core.release()
