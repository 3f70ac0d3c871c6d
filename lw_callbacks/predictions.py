"""LogPredictionSamples: the same evaluation samples every epoch, as captioned images and a W&B Table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lw_callbacks import _compat, _wandb
from lw_callbacks._errors import Option, WarnOnce, warn
from lw_callbacks.core.batches import InputError
from lw_callbacks.core.sample_options import STAGES as STAGES  # public here too: lw_callbacks.predictions.STAGES
from lw_callbacks.core.sample_options import SampleOptions, SampleOptionsView, arguments
from lw_callbacks.core.samples import SampleCore

__all__ = ["LogPredictionSamples"]


class LogPredictionSamples(SampleOptionsView, Callback):
    r"""Log the model's predictions on the same ``num_samples`` evaluation examples every epoch, as
    captioned images and W&B Tables, at ``trainer/global_step`` on global rank 0.

    Each logged stage writes ``<section>/inputs`` once per run (the pixels), and ``<section>/table``
    and ``<section>/images`` every logged epoch; ``<section>`` is ``key`` for validation and
    ``<key>_<stage>`` otherwise. Predictions come from ``predict``, else the step output, else the
    module's own ``predict_step``, else ``forward``, on the chosen rows only. How samples are chosen,
    the tasks and their columns, ignored labels and distributed runs: ``docs/callbacks.md`` and
    ``docs/prediction-tasks.md``.

    Args:
        num_samples: how many examples to log, spread evenly over rank 0's evaluation stream.
        every_n_epochs: log validation after epochs ``n - 1``, ``2n - 1``, ... (as
            ``check_val_every_n_epoch`` counts); test, predict and ``trainer.validate`` log every time.
        key: name of the panel section (``key/images``, ``key/table``, ``key/inputs``).
        class_names: names for labels ``0 .. C-1``, used in captions, the table and score columns.
        log_images: log the captioned-image panel.
        log_table: log the inputs table once and a predictions table every logged epoch.
        log_scores: add per-class ``score_<class>`` columns (up to 64 classes).
        stages: which loops to log: any of ``"validation"``, ``"test"``, ``"predict"``.
        log_sanity_check: also log during the sanity-check validation before training.
        input_key: key of the input in dict batches (``None``: the first usual name present).
        target_key: key of the target in dict batches (``None``: the first usual name present).
        output_key: key of the predictions in dict step outputs (``None``: ``preds``, ``logits``, ...).
        dataloader_idx: which evaluation dataloader to sample from.
        task: ``"auto"`` (told from the first batch), ``"classification"``, ``"segmentation"``,
            ``"detection"``, ``"text"``, ``"audio"``, ``"regression"`` or ``"reconstruction"``.
        box_format: detection boxes as ``"xyxy"`` (torchvision) or ``"cxcywh"``.
        normalized_boxes: detection box coordinates are fractions of the image size, not pixels.
        score_threshold: predicted boxes scoring below this are left out.
        sample_rate: samples per second of audio inputs (required for audio).
        decode: turns one sample's token ids into a string: a callable such as ``tokenizer.decode``,
            or its dotted import path (from LightningCLI YAML), imported at setup.
        predict: ``predict(pl_module, batch) -> predictions`` on a batch holding only the chosen rows,
            in place of the step output; a callable or its dotted import path, imported at setup.
        ignore_index: a target label, or a list of them, counted in no metric and shown as
            ``"ignored"``; ``None`` reads it from the module at setup; ``[]`` ignores none.

    Raises:
        ConfigurationError: If an argument has a value it does not accept (at construction).
        ConfigurationError: If the Trainer has no ``WandbLogger`` (at ``setup``; not under ``fast_dev_run``).
        ConfigurationError: If a ``decode`` / ``predict`` path does not import (at ``setup``).
        ConfigurationError: If a stage's first batch or step output cannot be read, or ``class_names`` do
            not cover its labels (at that batch, on every rank).
        ConfigurationError: If ``predict``, ``predict_step`` or ``forward`` fails on the chosen rows or returns
            no predictions, or a sharding strategy's step returns none (at the first batch).

    Example::

        >>> from pathlib import Path
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks import LogPredictionSamples
        >>> from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
        >>> from lw_callbacks.records import read_run
        >>> samples = LogPredictionSamples(num_samples=4, class_names=[str(i) for i in range(10)])
        >>> samples.section("validation"), samples.section("test")
        ('predictions', 'predictions_test')
        >>> trainer = Trainer(
        ...     logger=WandbLogger(project="digits", save_dir=Path("runs").resolve()),
        ...     callbacks=[samples],
        ...     max_epochs=1, limit_train_batches=2, limit_val_batches=2, enable_checkpointing=False,
        ...     log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        ... )
        >>> # validation_step may return preds, logits, or nothing (then the callback runs the model)
        >>> trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
        >>> run = trainer.logger.experiment
        >>> folder = Path(run.dir).parent
        >>> run.finish()
        >>> records = read_run(folder)
        >>> sorted(key for key in records.keys() if key.startswith("predictions/"))
        ['predictions/images', 'predictions/inputs', 'predictions/table']
        >>> table = records.tables("predictions/table")[-1]
        >>> table.columns[:4], len(table.rows)
        (['id', 'sample', 'ground truth', 'prediction'], 4)
    """

    def __init__(
        self,
        num_samples: int = 16,
        every_n_epochs: int = 1,
        key: str = "predictions",
        class_names: list[str] | None = None,
        log_images: bool = True,
        log_table: bool = True,
        log_scores: bool = True,
        stages: list[str] | tuple[str, ...] | str = ("validation",),
        log_sanity_check: bool = False,
        input_key: str | None = None,
        target_key: str | None = None,
        output_key: str | None = None,
        dataloader_idx: int = 0,
        task: str = "auto",
        box_format: str = "xyxy",
        normalized_boxes: bool = False,
        score_threshold: float = 0.3,
        sample_rate: int | None = None,
        decode: Callable[[list[int]], str] | str | None = None,
        predict: Callable[[Any, Any], Any] | str | None = None,
        ignore_index: int | list[int] | None = None,
    ) -> None:
        super().__init__(SampleOptions(**arguments(locals()), owner=type(self).__name__))
        self._core = SampleCore(self.options)
        self._warnings = WarnOnce()
        self._quiet = False  # fast_dev_run (set at setup)
        self._fit_ended = False  # on_fit_end reached: the fit ran to its end
        self._said: set[str] = set()  # stages already said at setup to run no batch
        self._passes: dict[str, int] = {}  # evaluation passes outside the sanity check, per stage
        self._state_key = self._generate_state_key(key=self.key, stages=self.stages)

    every_n_epochs = Option[int]("Log every ``every_n_epochs``-th validation epoch.", via="options")
    stages = Option["tuple[str, ...]"]("The loops logged, each once, as a tuple.", via="options")
    log_sanity_check = Option[bool]("Whether the sanity check's validation is logged.", via="options")
    dataloader_idx = Option[int]("Which evaluation dataloader the samples come from.", via="options")

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it on every hook call; it names read-only options, so it was built once, in __init__.
        return self._state_key

    def section(self, stage: str) -> str:
        """The panel section a stage logs under: ``key`` for validation, ``key_<stage>`` otherwise."""
        return self._core.section(stage)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logger = _wandb.require_wandb_logger(trainer, type(self).__name__)
        if logger is not None:
            _wandb.warm_up_media()  # W&B's first image / table log loads modules: load them now, off this thread
        self._quiet = logger is None  # fast_dev_run: nothing is logged, so nothing is said about what is not
        self._core.resolve(pl_module)  # dotted paths imported and ignored labels read: a bad one fails before training
        self._core.sharded = _shards_parameters(trainer.strategy)
        self._fit_ended = False
        self._said = set()
        self._passes = dict.fromkeys(self._core.states, 0)
        for name in self._stages_of(stage):  # a new fit / test / predict may bring other data
            self._core.reset(name)
            why = None if self._quiet else _why_never_runs(trainer, pl_module, name, stage)
            if why is not None:
                self._said.add(name)
                self._warnings.warn(f"{type(self).__name__}: `stages` includes {name!r}, but {why}", cause=(name, why))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True  # not reached by a tuner's trial fit, which ends at teardown

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        owner = type(self).__name__
        for name in self._stages_of(stage):
            st = self._core.states[name]
            why = None if st.ran else _why_no_batch(trainer, name, self.dataloader_idx)
            if why is not None:
                self._warnings.warn(f"{owner}: the {name} loop ran no batch ({why}); nothing was logged.")
                continue
            if self._quiet or name in self._said or st.disabled or st.logged or trainer.global_rank != 0:
                continue  # said already (at setup, or when logging stopped), or nothing to say
            fit = _fn_name(stage) == "fit"
            if fit and not self._fit_ended:
                continue
            self._warnings.warn(
                f"{owner}: no {name} sample was logged in this {_fn_name(stage)} "
                f"({self._why_nothing_logged(trainer, name, fit, st.ran)}).",
                cause=("nothing logged", name),
            )

    def _why_nothing_logged(self, trainer: pl.Trainer, stage: str, fit: bool, ran: bool) -> str:
        if not ran and not fit:
            return f"the {stage} loop ran no batch"
        if not ran:
            return (
                f"the {stage} loop never ran: with `check_val_every_n_epoch={trainer.check_val_every_n_epoch}`, "
                f"`val_check_interval={trainer.val_check_interval}` the fit ended before its first validation; "
                "validate more often, or set `stages=` to the stages that run"
            )
        passes = self._passes.get(stage, 0)
        if fit and passes == 0:
            return (
                "the validation loop ran only in the sanity check, which is logged only with "
                "`log_sanity_check=True`; the fit ended before its first validation (see "
                "`check_val_every_n_epoch`, `val_check_interval`, `max_steps`)"
            )
        if fit and self.every_n_epochs > 1:
            return (
                f"`every_n_epochs={self.every_n_epochs}` logs after epochs {self.every_n_epochs - 1}, "
                f"{2 * self.every_n_epochs - 1}, ..., and no validation of this fit fell on one; lower "
                "`every_n_epochs` or train longer"
            )
        return "no chosen sample was collected; see the warnings above"

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._core.start_epoch("validation")
        if not trainer.sanity_checking and "validation" in self._passes:
            self._passes["validation"] += 1

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._core.start_epoch("test")

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._core.start_epoch("predict")

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end("validation", trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end("test", trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end("predict", trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end("validation", trainer)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end("test", trainer)

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end("predict", trainer)

    # ------------------------------------------------------------------ per batch
    def _stages_of(self, trainer_stage: str | None) -> list[str]:
        wanted = {"fit": "validation", "validate": "validation", "test": "test", "predict": "predict"}.get(
            _fn_name(trainer_stage), ""
        )
        return [wanted] if wanted in self._core.states else []

    def _active(self, stage: str, trainer: pl.Trainer) -> bool:
        if stage not in self._core.states:
            return False
        if self._core.states[stage].disabled:
            return False
        opts = self._core.options  # read on every batch: plain attributes
        if trainer.sanity_checking and not opts.log_sanity_check:
            return False
        if stage == "validation" and not trainer.sanity_checking and trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % opts.every_n_epochs == 0  # as check_val_every_n_epoch
        return True

    def _batch_end(
        self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, dl_idx: int
    ) -> None:
        core = self._core
        if dl_idx != core.options.dataloader_idx or stage not in core.states:
            return
        st = core.states[stage]
        active = self._active(stage, trainer)
        if not active and (st.checked or st.disabled):
            st.ran = True
            return
        try:
            # The first batch seen is checked on every rank, logged or not (the sanity check's, by default).
            x, y, n = core.read_batch(stage, batch, outputs, pl_module)
            if not active:
                return
            if st.positions is None:
                loader, num_batches = _loader_of(trainer, stage, self.dataloader_idx)
                core.choose_positions(stage, loader, num_batches, warn_shuffle=trainer.global_rank == 0)
            if trainer.global_rank != 0:  # rank 0's samples are logged; the other ranks do no more work
                return
            core.collect_chosen(stage, pl_module, x, y, outputs, n, batch)
        except InputError as err:
            if trainer.state.fn != "fit" or trainer.sanity_checking:
                raise  # nothing has trained yet: stop now, with the message
            core.disable(stage)
            warn(
                f"{err} {type(self).__name__} logs no more {stage} samples in this fit (training goes on); fix it "
                "as said above (with num_sanity_val_steps > 0 it would have stopped the fit before training)."
            )

    # ------------------------------------------------------------------ logging (rank 0)
    def _epoch_end(self, stage: str, trainer: pl.Trainer) -> None:
        if not self._active(stage, trainer):
            return
        if trainer.global_rank != 0:
            self._core.states[stage].collected = {}
            return
        self._core.log_collected(
            stage, lambda: _wandb.get_run(trainer, type(self).__name__), _wandb.lightning_step(trainer)
        )


# ---------------------------------------------------------------------- helpers
_LIMIT = {"validation": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}


def _fn_name(trainer_stage: str | None) -> str:
    """``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``, from a ``TrainerFn`` or its string value."""
    return str(getattr(trainer_stage, "value", trainer_stage) or "")


def _overrides(module: pl.LightningModule, method: str) -> bool:
    """Whether ``module`` (a LightningModule of either namespace) defines its own ``method``."""
    from lightning_utilities.core.overrides import is_overridden

    bases = [cls for cls in _compat.classes("core.module", "LightningModule") if isinstance(module, cls)]
    return not bases or is_overridden(method, module, bases[0])


def _why_never_runs(trainer: pl.Trainer, module: pl.LightningModule, stage: str, trainer_fn: str | None) -> str | None:
    """Why ``stage`` will run no batch under this ``trainer.<fn>`` call (known at ``setup``), with the fix;
    ``None`` when it may run. Lightning itself refuses ``validate`` / ``test`` without their step."""
    other = "or set `stages=` to the stages that run (e.g. `stages=['test']` with `trainer.test`)."
    fn = _fn_name(trainer_fn)
    if fn == "fit" and not _overrides(module, "validation_step"):
        return (
            f"{type(module).__name__} has no `validation_step`, so Lightning runs no validation loop in this fit "
            f"and no validation sample is logged. Add a `validation_step` and a val dataloader to the module, {other}"
        )
    limit = getattr(trainer, _LIMIT[stage], None)
    if limit == 0:
        return (
            f"the Trainer has `{_LIMIT[stage]}=0`, so the {stage} loop runs no batch and no {stage} sample is "
            f"logged. Set `{_LIMIT[stage]}` above 0, {other}"
        )
    if fn == "fit":
        source = getattr(getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None),
                         "_data_source", None)
        is_defined = getattr(source, "is_defined", None)
        if callable(is_defined) and not is_defined():
            return (
                "this fit has no val dataloader (no `val_dataloaders=` given to `fit`, no `val_dataloader()` on the "
                "module or datamodule), so Lightning runs no validation loop and no validation sample is logged. "
                f"Pass a val dataloader, {other}"
            )
    return None


def _shards_parameters(strategy: object) -> bool:
    """Whether a strategy splits the parameters across ranks (FSDP, DeepSpeed, model parallel)."""
    return _compat.has_class_named(strategy, "FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def _why_no_batch(trainer: pl.Trainer, stage: str, idx: int) -> str | None:
    """Why a stage that loaded its data gave this callback no batch; ``None`` when there is nothing to say
    (the loop never ran, e.g. ``check_val_every_n_epoch`` beyond the last epoch or a tuner's trial fit, or
    the user set ``limit_<stage>_batches=0``)."""
    attr = {"validation": "val", "test": "test", "predict": "predict"}[stage]
    if getattr(trainer, f"limit_{attr}_batches", None) == 0:
        return None
    try:
        counts = list(getattr(trainer, f"num_{attr}_batches", None) or ())
    except Exception:
        return None
    if not counts:
        return None
    if idx >= len(counts):
        return f"dataloader_idx={idx}, but the {stage} loop has {len(counts)} dataloader(s)"
    if counts[idx] == 0:
        return f"the {stage} dataloader {idx} is empty"
    return None


def _loader_of(trainer: pl.Trainer, stage: str, idx: int) -> tuple[Any, Any]:
    attr = {"validation": "val", "test": "test", "predict": "predict"}[stage]
    loaders = getattr(trainer, f"{attr}_dataloaders", None)
    counts = getattr(trainer, f"num_{attr}_batches", None)
    if isinstance(loaders, (list, tuple)):
        loader = loaders[idx] if idx < len(loaders) else None
    elif isinstance(loaders, Mapping):
        loader = list(loaders.values())[idx] if idx < len(loaders) else None
    else:
        loader = loaders if idx == 0 else None
    count = counts[idx] if isinstance(counts, (list, tuple)) and idx < len(counts) else None
    return loader, count
