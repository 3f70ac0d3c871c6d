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

    The keys and panels of ``wandb.watch`` (``gradients/<name>``, ``parameters/<name>``, ``graph_0``),
    read in ``on_before_optimizer_step`` on global rank 0 with no hook per parameter, and removed
    when fit ends.

    Args:
        log: ``"gradients"``, ``"parameters"`` or ``"all"``.
        log_freq: log every this many optimizer steps (``trainer.global_step``), from step 0; with
            several optimizers, every this many steps of each.
        log_graph: log the module graph from the first training batch of each fit.
        include: parameter-name patterns to watch (``fnmatch``, e.g. ``"encoder.*"``); ``None``: every
            trainable parameter.
        exclude: parameter-name patterns not to watch, e.g. ``["*.bias", "*norm*"]``.
        bins: bins per histogram, 1 to 512.

    Raises:
        ConfigurationError:
            If ``log`` is not one of the accepted values.
        ConfigurationError:
            If ``log_freq`` is not an int >= 1 or ``bins`` not an int from 1 to 512.
        ConfigurationError:
            If ``log_graph`` is not a bool, or ``include`` / ``exclude`` not a pattern or a list of them.
        ConfigurationError:
            At ``setup``, if the Trainer has no ``WandbLogger``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import WatchModel
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> watch = WatchModel(log="all", log_freq=2, exclude=["*.bias"])
        >>> watch.log_gradients, watch.log_parameters
        (True, True)
        >>> trainer = Trainer(logger=WandbLogger(project="digits"), callbacks=[watch], max_steps=4,
        ...                   limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        ...                   enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())  # logs at steps 0 and 2
        >>> watch.watched_names  # everything is released when fit ends
        []
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
        self._only, self._countdown = None, 0  # the first optimizer step reads the step it starts from
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
        if self.core.graph_pending:  # an attribute test on every batch; the graph's hooks on the first
            self.core.arm_graph(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.core.graph_pending:
            self.core.finish_graph()

    # With one optimizer: the optimizer, and how many of its steps to let pass before the next look at
    # `trainer.global_step` (both set by that look, which also logs at a logging step; None: look now)
    _only: Any = None
    _countdown = 0

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        # Runs on every optimizer step: between logging steps, an identity and an integer test. Reading
        # `trainer.global_step` and `trainer.optimizers` walks several properties (about 2 µs a step
        # inside a fit), so they are read on the step the countdown says is the next logging step, and
        # the countdown is set again from them: it cannot drift further than one interval.
        if optimizer is self._only and self._countdown > 0:
            self._countdown -= 1
            return
        optimizers = trainer.optimizers
        if len(optimizers) < 2:
            step = trainer.global_step
            freq = self.core.options.log_freq
            self._only, self._countdown = optimizer, freq - step % freq - 1
            if step % freq == 0:
                self.core.log_histograms(step, lightning_step(trainer))
            return
        self._only = None
        # several optimizers (manual optimization): each one's steps are counted apart, and at its
        # log steps the parameters it owns are logged, their gradients fresh
        index = next((i for i, opt in enumerate(optimizers) if opt is optimizer), -1)
        step = self.core.optimizer_steps.get(index, 0)
        self.core.optimizer_steps[index] = step + 1
        if step % self.core.options.log_freq == 0:
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
