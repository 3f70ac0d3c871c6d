"""LogPredictionSamples: the same evaluation samples every epoch, as captioned images and a W&B Table."""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import WarningCache, rank_zero_warn
from torch import Tensor
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler
from typing_extensions import override

from lw_callbacks import _tasks, _wandb
from lw_callbacks._errors import ConfigurationError

__all__ = ["LogPredictionSamples"]

STAGES = ("validation", "test", "predict")
_INPUT_KEYS = (
    "image", "images", "img", "x", "input", "inputs", "input_ids", "text", "features", "pixel_values",
    *_tasks.AUDIO_KEYS,
)
_TARGET_KEYS = ("label", "labels", "y", "target", "targets", "class", "classes", "mask", "masks")
_OUTPUT_KEYS = (
    "preds", "pred", "predictions", "logits", "probs", "probabilities", "scores", "y_hat", "out", "masks",
    "detections",
)
_ACCEPTED_BATCH = (
    "a tuple / list `(x, y, ...)`, a dict holding the input and target under `input_key` / `target_key`, "
    "or a bare input tensor (no targets)"
)
_ACCEPTED_OUTPUT = (
    "a tensor of labels `(N,)`, a tensor of logits or probabilities `(N, C)`, a dict holding one of those under "
    f"{list(_OUTPUT_KEYS)} (or `output_key`), or nothing usable (None, a scalar loss, a dict without "
    "predictions), in which case the callback runs `pl_module(x)` on the chosen samples"
)
_MAX_SCORE_COLUMNS = 64
_MAX_VALUES_SHOWN = 64
_BAND_ROWS = 16  # image rows scaled at a time for display (float64 working copies of 16 rows)


@dataclass
class _Sample:
    """One chosen example, already on the CPU: what the table and the captions need."""

    id: int
    display: Any  # uint8 HxW / HxWxC array, a PIL image, a string, a list of values
    truth: Any
    pred: Any = None
    scores: list[float] | None = None
    metric: float | None = None  # segmentation IoU, detection matches at IoU 0.5, regression absolute error


@dataclass
class _StageState:
    """What one stage (validation, test or predict) keeps between batches and epochs: O(num_samples)."""

    positions: list[int] | None = None  # stream positions chosen on this rank, sorted, fixed once chosen
    ids: dict[int, int] = field(default_factory=dict)  # stream position -> dataset index (the sample id)
    seen: int = 0  # examples of the stream passed so far in this epoch
    checked: bool = False  # the first batch's layout and output have been validated
    ran: bool = False  # at least one batch reached the callback during this fit / test / predict
    collected: dict[int, _Sample] = field(default_factory=dict)  # this epoch's samples, by stream position
    images: dict[int, Any] = field(default_factory=dict)  # display form of each id, computed once
    encoded: dict[int, Any] = field(default_factory=dict)  # id -> last logged wandb.Image: its PNG, encoded once
    input_kind: str | None = None  # "image", "value", "text" or "audio"
    task: str | None = None  # told from the first batch (or the task= argument)
    inputs_table: Any = None  # the wandb.Table holding the inputs, logged once per run
    inputs_run: str | None = None  # id of the run that holds inputs_table
    disabled: bool = False  # unreadable input first seen after training began: logging stopped for this fit


class LogPredictionSamples(Callback):
    r"""Log the model's predictions on the same ``num_samples`` evaluation examples every epoch.

    At the end of each chosen validation epoch (and of ``trainer.test`` / ``trainer.predict`` when
    ``stages`` asks for them), global rank 0 logs at ``trainer/global_step``, the same step Lightning
    logs that validation's metrics at:

    * ``<section>/images``: the samples as images captioned ``Ground Truth: <y> - Prediction: <p>``
      (class names when ``class_names`` is given), when ``log_images`` and the inputs are images;
    * ``<section>/inputs``: a W&B Table ``id, image | input, ground truth``, logged **once per run**
      (the first time the stage logs), which holds the pixels;
    * ``<section>/table``: a new W&B Table every epoch, ``id, sample, ground truth, prediction`` and,
      when the model gives class scores, one ``score_<class>`` column per class. ``sample`` is a
      reference to the row of ``<section>/inputs`` with that id (``wandb.Table.index_ref``), so
      later epochs upload only predictions, never the images again.

    ``<section>`` is ``key`` for validation and ``<key>_test`` / ``<key>_predict`` for the other stages.

    **Which samples.** The examples at fixed positions of the evaluation stream, spread evenly over
    it (the first ``num_samples`` when its length is unknown), chosen once and kept: with the usual
    unshuffled evaluation loader they are the same dataset examples every epoch. ``id`` is the
    example's index in the dataset. Only the chosen examples are detached and copied to the CPU;
    batches holding none of them cost a few integer comparisons.

    **Where predictions come from**, with no change to the LightningModule: the output of
    ``validation_step`` / ``test_step`` / ``predict_step`` when it is a tensor of labels ``(N,)`` (the
    W&B guide's module), logits or probabilities ``(N, C)`` (argmax; the scores column holds the
    softmax, or the probabilities as given), or a dict holding either under ``preds`` / ``logits``
    / ``probs`` (or ``output_key``). Otherwise (``None``, a scalar loss, a dict without predictions)
    the callback runs ``pl_module(x)`` on the chosen samples only.

    **Batches**: ``(x, y, ...)`` tuples / lists, dicts (``input_key`` / ``target_key``; by default the
    first of ``image, images, x, input, inputs, input_ids, text, ...`` and ``label, labels, y,
    target, ...`` found), or a bare input tensor. **Inputs**: image tensors or arrays ``(N, C, H, W)``,
    ``(N, H, W)`` or ``(N, H, W, C)`` with 1, 3 or 4 channels, ``uint8`` or float of any range
    (scaled for display; NaN / inf pixels are drawn as black / white), lists of PIL images or
    arrays; anything else (token ids, feature vectors, text) goes into the table as text / values,
    with no image column and no image panel.

    **Distributed runs.** Each rank sees its own shard of the evaluation set; this callback logs
    **rank 0's samples** and enters no collective at all: nothing to gather, nothing that can hang,
    no work on the other ranks beyond checking the first batch's layout (so a bad layout fails on
    every rank alike). With Lightning's default unshuffled ``DistributedSampler`` rank 0's shard is
    the same every epoch, and ``id`` is still the dataset index.

    **Checks.** The layout of the first batch of each stage (and the step output, and ``class_names``
    against the labels) is checked on every rank at the first batch the callback sees, logged or
    not: with the default sanity check that is before training starts, so a bad setting stops the
    fit at once. Under ``fast_dev_run`` the checks run and nothing is logged. When an input first
    turns out unreadable after training began (``num_sanity_val_steps=0``), the callback warns once
    and logs no more samples in that fit instead of ending a fit that has trained.

    **Other tasks** (``task="auto"`` tells them from the first batch and step output; pass ``task=`` to
    say which):

    * ``"segmentation"``: targets and predictions ``(N, H, W)`` class ids or ``(N, C, H, W)`` scores
      (argmax; one channel is thresholded) over image inputs. The inputs table's image carries the
      ground-truth mask (uploaded once, with the pixels); each epoch's table holds the predicted mask
      (a colour image) and ``iou`` (mean over the classes present in either mask); the panel's images
      carry ``masks={"ground_truth", "predictions"}`` with ``class_names`` as class labels.
    * ``"detection"``: torchvision-style targets and outputs, one dict per image with ``boxes`` ``(K,
      4)``, ``labels`` and (predictions) ``scores``. Boxes are ``xyxy`` pixels unless ``box_format`` /
      ``normalized_boxes`` say otherwise; predictions scoring below ``score_threshold`` are left out
      and the rest clipped to the image. The inputs table's image carries the ground-truth boxes;
      each epoch's table holds the boxes per class and ``matches@0.5`` (predictions matched one to
      one to a ground-truth box of their class at IoU >= 0.5); the panel's images carry
      ``boxes={"ground_truth", "predictions"}``.
    * ``"text"``: string inputs, or integer token ids ``(N, L)`` shown through ``decode``, in a
      ``text`` column; predictions may be strings (or token ids with ``decode``) or class scores.
    * ``"audio"``: waveforms ``(N, T)``, ``(N, 1, T)`` or a list of 1-D ones (dict key ``audio`` /
      ``waveform`` / ...; or any float input when ``sample_rate`` is given) become ``wandb.Audio`` in
      the inputs table's ``audio`` column (16-bit WAV at ``sample_rate``).
    * ``"regression"``: float targets (first batch not all whole numbers) and predictions ``(N,)``
      or ``(N, 1)``: ``target``, ``prediction`` and ``abs_error`` columns.

    Under a strategy that shards the parameters (FSDP, DeepSpeed, model parallel), the step must
    return the predictions: running ``forward`` on rank 0 alone would wait forever for the other
    ranks' shards, so the callback refuses that at the first batch, on every rank.

    Args:
        num_samples: how many examples to log (rank 0's first ``num_samples`` positions, spread).
        every_n_epochs: log validation every this many epochs, counted as Lightning's
            ``check_val_every_n_epoch`` and ``ModelCheckpoint(every_n_epochs=...)`` count them:
            after epochs ``n - 1``, ``2n - 1``, ... (epoch numbers from 0). Test, predict and a
            ``trainer.validate`` outside fit log every time they run.
        key: name of the panel section (``key/images``, ``key/table``, ``key/inputs``).
        class_names: names for labels ``0 .. C-1``, used in captions, the table and score columns.
        log_images: log the captioned-image panel.
        log_table: log the inputs table once and a predictions table every logged epoch.
        log_scores: add per-class ``score_<class>`` columns when the model gives class scores
            (up to 64 classes).
        stages: which loops to log: any of ``"validation"``, ``"test"``, ``"predict"``.
        log_sanity_check: also log during the sanity-check validation before training.
        input_key: key of the input in dict batches (``None``: the first usual name present).
        target_key: key of the target in dict batches (``None``: the first usual name present).
        output_key: key of the predictions in dict step outputs (``None``: ``preds``, ``logits``, ...).
        dataloader_idx: which evaluation dataloader to sample from.
        task: ``"auto"`` (told from the first batch), ``"classification"``, ``"segmentation"``,
            ``"detection"``, ``"text"``, ``"audio"`` or ``"regression"``.
        box_format: detection boxes as ``"xyxy"`` (torchvision) or ``"cxcywh"``.
        normalized_boxes: detection box coordinates are fractions of the image size, not pixels.
        score_threshold: predicted boxes scoring below this are left out.
        sample_rate: samples per second of audio inputs (required for audio).
        decode: turns one sample's token ids (a list of ints) into a string: a callable such as
            ``tokenizer.decode``, or its dotted import path (from LightningCLI YAML), imported at setup.

    Raises:
        ConfigurationError: at construction, for ``num_samples < 1``, ``every_n_epochs < 1``, an
            unknown or empty ``stages``, ``class_names`` that are not a list of strings, a flag that is
            not a bool, or a key that is not a string; at ``setup``, when the Trainer has no
            ``WandbLogger`` (under ``fast_dev_run`` nothing is logged and nothing is raised); at the
            first batch of a stage, for a batch or step output this callback cannot read (the message
            names the shape or type that arrived and what is accepted), ``input_key`` /
            ``target_key`` on batches that are not dicts, ``class_names`` that do not cover the
            labels, and a step that returns no predictions under a sharding strategy. For the other
            tasks: an unknown ``task`` / ``box_format``, ``task="audio"`` without ``sample_rate``
            (construction); a ``decode`` path that does not import (setup); at the first batch, a mask
            whose size differs from its image, a ground-truth box outside its image, audio without a
            sample rate, each naming the sample and the shapes.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.loggers import WandbLogger
        from lw_callbacks import LogPredictionSamples

        trainer = Trainer(
            logger=WandbLogger(project="mnist"),
            callbacks=[LogPredictionSamples(num_samples=16, class_names=[str(i) for i in range(10)])],
        )
        trainer.fit(model, datamodule=dm)  # validation_step may return preds, logits, or nothing

    An empty validation set logs nothing and warns once.
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
    ) -> None:
        super().__init__()
        self._task_opts = _tasks.TaskOptions(task, box_format, normalized_boxes, score_threshold, sample_rate, decode)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigurationError(
                f"LogPredictionSamples(num_samples={num_samples!r}): num_samples must be an integer >= 1 "
                "(how many examples to log each epoch), e.g. num_samples=16."
            )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigurationError(
                f"LogPredictionSamples(every_n_epochs={every_n_epochs!r}): every_n_epochs must be an integer "
                ">= 1 (1 logs every validation epoch, 5 every fifth), e.g. every_n_epochs=1."
            )
        stage_list = [stages] if isinstance(stages, str) else list(stages)
        unknown = [s for s in stage_list if s not in STAGES]
        if unknown or not stage_list:
            raise ConfigurationError(
                f"LogPredictionSamples(stages={stages!r}): unknown stage(s) {unknown or stage_list}; accepted "
                f"stages are {list(STAGES)}, e.g. stages=['validation', 'test']."
            )
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"LogPredictionSamples(key={key!r}): key must be a non-empty string, e.g. key='predictions'."
            )
        if class_names is not None:
            if isinstance(class_names, str) or not isinstance(class_names, Sequence):
                raise ConfigurationError(
                    f"LogPredictionSamples(class_names={class_names!r}): class_names must be a list of strings, "
                    "one per class in label order, e.g. class_names=['cat', 'dog'] (a single string is not split)."
                )
            class_names = list(class_names)
            if not all(isinstance(n, str) for n in class_names):
                raise ConfigurationError(
                    f"LogPredictionSamples(class_names={class_names!r}): class_names must be a list of strings, "
                    "one per class in label order, e.g. class_names=['cat', 'dog']."
                )
        if isinstance(dataloader_idx, bool) or not isinstance(dataloader_idx, int) or dataloader_idx < 0:
            raise ConfigurationError(
                f"LogPredictionSamples(dataloader_idx={dataloader_idx!r}): dataloader_idx must be an integer >= 0."
            )
        for flag, value in (
            ("log_images", log_images),
            ("log_table", log_table),
            ("log_scores", log_scores),
            ("log_sanity_check", log_sanity_check),
        ):
            if not isinstance(value, bool):
                raise ConfigurationError(f"LogPredictionSamples({flag}={value!r}): `{flag}` must be True or False.")
        for name, key_value in (("input_key", input_key), ("target_key", target_key), ("output_key", output_key)):
            if key_value is not None and (not isinstance(key_value, str) or not key_value):
                raise ConfigurationError(
                    f"LogPredictionSamples({name}={key_value!r}): `{name}` must be a key of your dict batches / step "
                    f"outputs (a non-empty string), or None to use the usual names."
                )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.key = key
        self.class_names = class_names
        self.log_images = log_images
        self.log_table = log_table
        self.log_scores = log_scores
        self.stages = tuple(dict.fromkeys(stage_list))
        self.log_sanity_check = log_sanity_check
        self.input_key = input_key
        self.target_key = target_key
        self.output_key = output_key
        self.dataloader_idx = dataloader_idx
        self.task = task
        self.box_format = box_format
        self.normalized_boxes = normalized_boxes
        self.score_threshold = self._task_opts.score_threshold
        self.sample_rate = sample_rate
        self.decode = decode
        self._state: dict[str, _StageState] = {s: _StageState() for s in self.stages}
        self._sharded = False  # the strategy shards parameters: forward on rank 0 alone would hang
        self._warnings = WarningCache()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key, stages=self.stages)

    def section(self, stage: str) -> str:
        """The panel section a stage logs under: ``key`` for validation, ``key_<stage>`` otherwise."""
        return self.key if stage == "validation" else f"{self.key}_{stage}"

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if _wandb.require_wandb_logger(trainer, type(self).__name__) is not None:
            _wandb.warm_up_media()  # W&B's first image / table log loads modules: load them now, off this thread
        self._task_opts.resolve()  # a dotted decode path is imported here: a bad one fails before training
        self._sharded = _shards_parameters(trainer.strategy)
        for name in self._stages_of(stage):  # a new fit / test / predict may bring other data
            st = self._state[name]
            st.ran, st.checked, st.positions, st.ids, st.images, st.encoded = False, False, None, {}, {}, {}
            st.disabled, st.task = False, None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name in self._stages_of(stage):
            st = self._state[name]
            why = None if st.ran else _why_no_batch(trainer, name, self.dataloader_idx)
            if why is not None:
                self._warnings.warn(f"LogPredictionSamples: the {name} loop ran no batch ({why}); nothing was logged.")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start("validation")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start("test")

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start("predict")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end("validation", trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end("test", trainer, pl_module, outputs, batch, dataloader_idx)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
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
        name = str(getattr(trainer_stage, "value", trainer_stage) or "")  # TrainerFn or its string value
        wanted = {"fit": "validation", "validate": "validation", "test": "test", "predict": "predict"}.get(name, "")
        return [wanted] if wanted in self._state else []

    def _epoch_start(self, stage: str) -> None:
        st = self._state.get(stage)
        if st is not None:
            st.seen = 0
            st.collected = {}

    def _active(self, stage: str, trainer: pl.Trainer) -> bool:
        if stage not in self._state:
            return False
        if self._state[stage].disabled:
            return False
        if trainer.sanity_checking and not self.log_sanity_check:
            return False
        if stage == "validation" and not trainer.sanity_checking and trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs == 0  # as check_val_every_n_epoch
        return True

    def _batch_end(
        self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, dl_idx: int
    ) -> None:
        if dl_idx != self.dataloader_idx or stage not in self._state:
            return
        st = self._state[stage]
        active = self._active(stage, trainer)
        if not active and (st.checked or st.disabled):
            st.ran = True
            return
        try:
            # The first batch seen is checked on every rank, logged or not (the sanity check's, by default).
            x, y, n = self._read_batch(stage, batch, outputs)
            if not active:
                return
            if st.positions is None:
                self._choose_positions(stage, trainer)
            if trainer.global_rank != 0:  # rank 0's samples are logged; the other ranks do no more work
                return
            assert st.positions is not None
            start = st.seen
            st.seen += n
            lo = bisect.bisect_left(st.positions, start)
            hi = bisect.bisect_left(st.positions, start + n)
            if lo == hi:
                return
            local = [p - start for p in st.positions[lo:hi]]
            self._collect_or_warn(stage, pl_module, x, y, outputs, local, start)
        except _InputError as err:
            if trainer.state.fn != "fit" or trainer.sanity_checking:
                raise  # nothing has trained yet: stop now, with the message
            st.disabled, st.collected = True, {}
            rank_zero_warn(
                f"{err} LogPredictionSamples logs no more {stage} samples in this fit (training goes on); fix "
                "the setting, and keep the sanity check (num_sanity_val_steps > 0) to catch this before training."
            )

    def _read_batch(self, stage: str, batch: Any, outputs: Any) -> tuple[Any, Any, int]:
        """Split ``batch`` into inputs, targets and their count; the stage's first batch is checked
        (on every rank, so a bad layout fails everywhere alike)."""
        st = self._state[stage]
        st.ran = True
        x, y = self._split_batch(batch)
        n = _batch_len(x)
        if not st.checked:
            self._check_first(stage, x, y, outputs, n, self._input_key_of(batch))
            st.checked = True
        return x, y, n

    def _collect_or_warn(
        self, stage: str, module: Any, x: Any, y: Any, outputs: Any, local: list[int], start: int
    ) -> None:
        """:meth:`_collect`; a problem other than bad input warns once and leaves the samples out."""
        try:
            self._collect(stage, module, x, y, outputs, local, start)
        except _InputError:
            raise
        except Exception as err:  # a logging problem never ends training
            self._warnings.warn(
                f"LogPredictionSamples: could not read the {stage} samples of this batch "
                f"({type(err).__name__}: {err}); they are left out of the log."
            )

    def _split_batch(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            x_key = self.input_key or next((k for k in _INPUT_KEYS if k in batch), None)
            y_key = self.target_key or next((k for k in _TARGET_KEYS if k in batch), None)
            if x_key is None or x_key not in batch:
                raise _InputError(
                    f"LogPredictionSamples: the batch is a dict with keys {sorted(map(str, batch))} and no input under "
                    f"{[self.input_key] if self.input_key else list(_INPUT_KEYS)}. Pass "
                    "LogPredictionSamples(input_key=..., target_key=...) naming your keys. Accepted batches: "
                    f"{_ACCEPTED_BATCH}."
                )
            if self.target_key is not None and self.target_key not in batch:
                raise _InputError(
                    f"LogPredictionSamples(target_key={self.target_key!r}): the batch dict has keys "
                    f"{sorted(map(str, batch))}; pass the key that holds the targets (or target_key=None)."
                )
            return batch[x_key], (batch[y_key] if y_key is not None else None)
        given = [f"{n}={v!r}" for n, v in (("input_key", self.input_key), ("target_key", self.target_key)) if v]
        if given:
            raise _InputError(
                f"LogPredictionSamples({', '.join(given)}): the batch is a {type(batch).__name__}, not a dict, so "
                f"there is no key to look up ({_describe(batch)}). Remove {' and '.join(given)} (a tuple batch is "
                "read as `(x, y, ...)`), or make the batches dicts."
            )
        if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], str):
            if len(batch) == 1:
                return batch[0], None
            return batch[0], batch[1]
        if isinstance(batch, (Tensor, np.ndarray)) or (isinstance(batch, list) and batch):
            return batch, None
        raise _InputError(
            f"LogPredictionSamples: cannot read a batch of type {type(batch).__name__}"
            f"{_describe(batch)}. Accepted batches: {_ACCEPTED_BATCH}."
        )

    def _input_key_of(self, batch: Any) -> str | None:
        if not isinstance(batch, Mapping):
            return None
        return self.input_key or next((k for k in _INPUT_KEYS if k in batch), None)

    def _raw_output(self, outputs: Any) -> Any:
        """The step output's predictions as they came (under ``output_key`` / a usual key for dicts)."""
        if isinstance(outputs, Mapping):
            keys = [self.output_key] if self.output_key else list(_OUTPUT_KEYS)
            found = next((k for k in keys if k in outputs), None)
            return outputs[found] if found is not None else None
        return outputs

    def _check_first(self, stage: str, x: Any, y: Any, outputs: Any, n: int, x_key: str | None = None) -> None:
        st = self._state[stage]
        raw = self._raw_output(outputs)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        st.task = _tasks.guess(self._task_opts, x, y, raw, x_key, _looks_like_images(x))
        if st.task in _tasks.ANNOTATED:
            self._check_annotated(stage, x, y, raw, n)
            return
        if st.task == "audio":
            _tasks.check_audio(x, self._task_opts, stage)
            st.input_kind = "audio"
        elif st.task == "text":
            _tasks.check_text(x, self._task_opts, stage)
            st.input_kind = "text"
        else:
            st.input_kind = _input_kind(x)
        if _tasks.is_strings(raw):  # generated text: shown as it is
            if len(raw) != n:
                raise _InputError(
                    f"LogPredictionSamples: the {stage} step returned {len(raw)} strings for a batch of {n} examples."
                )
            return
        if self._sharded and self._output_tensor(outputs, n, stage) is None:
            raise _InputError(
                f"LogPredictionSamples: the {stage} step returned no predictions, and under a strategy that shards "
                "the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on rank 0 alone "
                f"would wait forever for the other ranks. Return the predictions from the {stage} step, as one of: "
                f"{_ACCEPTED_OUTPUT.split(', or nothing usable')[0]}."
            )
        if y is not None and _batch_len(y) != n:
            raise _InputError(
                f"LogPredictionSamples: the {stage} batch holds {n} inputs ({_describe(x)}) but {_batch_len(y)} "
                f"targets ({_describe(y)}); inputs and targets must have the same first dimension."
            )
        value = self._output_tensor(outputs, n, stage)
        if st.task == "regression":
            _tasks.check_regression(value, y, n, stage)
            return
        if st.task == "text" and _tasks.decode_rows(value, self._task_opts) is not None:
            return  # token ids to decode, not class scores
        if self.class_names is None:
            return
        labels, scores = _labels_and_scores(value) if value is not None else (None, None)
        k = len(self.class_names)
        needed = []
        if scores is not None and scores.ndim == 2 and scores.shape[1] > 1:
            needed.append(("scores", int(scores.shape[1]) - 1))
        for what, vals in (("labels", _int_values(y)), ("predictions", _int_values(labels))):
            if vals:
                needed.append((what, max(vals)))
        for what, top in needed:
            if top >= k:
                raise _InputError(
                    f"LogPredictionSamples(class_names=<{k} names>): the first {stage} batch holds {what} up to "
                    f"class {top}, which needs at least {top + 1} class names. Pass one name per class in label "
                    "order, or class_names=None to show the numbers."
                )

    def _has_predictions(self, stage: str, outputs: Any, n: int) -> bool:
        """Whether the step output holds this stage's task predictions (after the first batch's check)."""
        task = self._state[stage].task
        raw = self._raw_output(outputs)
        if task == "segmentation":
            return isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0
        if task == "detection":
            return _tasks.is_detections(raw)
        return _tasks.is_strings(raw) or self._output_tensor(outputs, n, stage) is not None

    def _check_annotated(self, stage: str, x: Any, y: Any, raw: Any, n: int) -> None:
        """First-batch checks of a segmentation / detection batch."""
        st = self._state[stage]
        task = st.task
        if not _looks_like_images(x):
            raise _InputError(
                f"LogPredictionSamples(task={task!r}): the {stage} inputs are a {_describe(x)}, not images; "
                f"{task} needs image inputs (N, C, H, W) / (N, H, W) / (N, H, W, C) or a list of images."
            )
        st.input_kind = "image"
        if y is not None and _batch_len(y) != n:
            raise _InputError(
                f"LogPredictionSamples: the {stage} batch holds {n} inputs ({_describe(x)}) but {_batch_len(y)} "
                f"targets ({_describe(y)}); inputs and targets must have the same first dimension."
            )
        if task == "segmentation":
            value = raw if isinstance(raw, Tensor) and raw.ndim > 0 else None
            if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
                raise _InputError(
                    f"LogPredictionSamples(task='segmentation'): the {stage} step returned a {_describe(raw)}; "
                    "expected masks (N, H, W) of class ids or scores (N, C, H, W), a dict holding them, or nothing "
                    "(the callback then runs the module's forward on the chosen samples)."
                )
            _tasks.check_segmentation(x, y, value, n, stage, self.class_names)
        else:
            value = raw if _tasks.is_detections(raw) else None
            if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
                raise _InputError(
                    f"LogPredictionSamples(task='detection'): the {stage} step returned a {_describe(raw)}; expected "
                    "a list of one dict per image with 'boxes', 'labels' and 'scores' (as torchvision detection "
                    "models return), a dict holding it, or nothing (the callback then runs the module's forward)."
                )
            _tasks.check_detection(x, y, value, n, stage, self._task_opts, self.class_names)
        if self._sharded and value is None:
            raise _InputError(
                f"LogPredictionSamples: the {stage} step returned no predictions, and under a strategy that shards "
                "the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on rank 0 alone "
                f"would wait forever for the other ranks. Return the {task} predictions from the {stage} step."
            )

    def _output_tensor(self, outputs: Any, n: int, stage: str) -> Tensor | None:
        """The step output's predictions tensor, layout checked; ``None`` means "run forward"."""
        value = outputs
        if isinstance(outputs, Mapping):
            keys = [self.output_key] if self.output_key else list(_OUTPUT_KEYS)
            found = next((k for k in keys if k in outputs), None)
            if found is None:
                if self.output_key is not None:
                    raise _InputError(
                        f"LogPredictionSamples(output_key={self.output_key!r}): the {stage} step returned a dict "
                        f"with keys {sorted(map(str, outputs))}; pass the key holding predictions, or output_key=None."
                    )
                return None
            value = outputs[found]
        if value is None or (isinstance(value, Tensor) and value.ndim == 0):
            return None
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, Tensor):
            return None  # e.g. (loss, something): not predictions; run forward
        _check_prediction_shape(value, n, stage, "step output")
        return value

    # ------------------------------------------------------------------ choosing samples
    def _choose_positions(self, stage: str, trainer: pl.Trainer) -> None:
        st = self._state[stage]
        loader, num_batches = _loader_of(trainer, stage, self.dataloader_idx)
        length = _stream_length(loader, num_batches)
        k = self.num_samples
        if length is None or length <= k:
            positions = list(range(k))
        else:
            positions = sorted({round(i * (length - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
        st.positions = positions
        st.ids = {p: _dataset_index(loader, p) for p in positions}
        sampler = getattr(loader, "sampler", None)
        shuffled = isinstance(sampler, RandomSampler) or (
            isinstance(sampler, DistributedSampler) and bool(getattr(sampler, "shuffle", False))
        )
        if shuffled and trainer.global_rank == 0:
            rank_zero_warn(
                f"LogPredictionSamples: the {stage} dataloader shuffles, so the examples at the chosen positions "
                "change every epoch. Use shuffle=False for evaluation loaders to follow the same samples."
            )

    # ------------------------------------------------------------------ collecting (rank 0, chosen rows only)
    def _collect(
        self, stage: str, pl_module: pl.LightningModule, x: Any, y: Any, outputs: Any, local: list[int], start: int
    ) -> None:
        st = self._state[stage]
        ids = [st.ids.get(start + p, start + p) for p in local]
        if st.task in _tasks.ANNOTATED:
            self._collect_annotated(stage, pl_module, x, y, outputs, local, ids, start)
            return
        raw = self._raw_output(outputs)
        if _tasks.is_strings(raw):
            rows: Any = [raw[i] for i in local]
        else:
            value = self._output_tensor(outputs, _batch_len(x), stage)
            rows = _take(value, local) if value is not None else self._forward(pl_module, x, local, stage)
        preds, probs = self._predictions(st.task, rows)
        truths = self._truths(st.task, y, local)
        for j, pos in enumerate(p + start for p in local):
            sid = ids[j]
            if sid not in st.images:  # pixels are copied once, from the batch row straight into the kept form
                st.images[sid] = _tasks.off_heap(self._display(x[local[j]], st.input_kind or "value", sid))
            metric = None
            if st.task == "regression" and isinstance(truths[j], float) and isinstance(preds[j], float):
                metric = round(abs(preds[j] - truths[j]), 6)
            st.collected[pos] = _Sample(
                id=sid,
                display=st.images[sid],
                truth=truths[j],
                pred=preds[j],
                scores=probs[j] if probs is not None else None,
                metric=metric,
            )

    def _predictions(self, task: str | None, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions (and class probabilities) of the chosen rows, read as the task reads them."""
        if _tasks.is_strings(rows):
            return list(rows), None
        if task == "regression":
            return _tasks.floats(rows), None
        if task == "text":
            texts = _tasks.decode_rows(rows, self._task_opts)
            if texts is not None:
                return texts, None
        labels, scores = _labels_and_scores(rows)
        return _label_list(labels), (_probabilities(scores) if scores is not None else None)

    def _truths(self, task: str | None, y: Any, local: list[int]) -> list[Any]:
        if y is None:
            return [None] * len(local)
        rows = _take(y, local)
        if task == "regression":
            return _tasks.floats(rows)
        if task == "text":
            texts = _tasks.decode_rows(rows, self._task_opts)
            if texts is not None:
                return texts
        return _label_list(rows)

    def _display(self, sample: Any, kind: str, sid: int) -> Any:
        if kind == "audio":
            return _tasks.write_wav(sample, sid, self._task_opts)  # the WAV file's path, written once
        if kind == "text" and not isinstance(sample, str):
            return (_tasks.decode_rows(sample[None], self._task_opts) or [str(sample)])[0]
        return _display(sample, kind)

    def _collect_annotated(
        self,
        stage: str,
        pl_module: pl.LightningModule,
        x: Any,
        y: Any,
        outputs: Any,
        local: list[int],
        ids: list[int],
        start: int,
    ) -> None:
        """Segmentation / detection: pixels and ground truth once per sample id, predictions every epoch."""
        st = self._state[stage]
        raw = self._raw_output(outputs)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        segmentation = st.task == "segmentation"
        if segmentation:  # reduced to uint8 class ids now: the scores are not kept
            if isinstance(raw, Tensor) and raw.ndim > 0:
                preds: list[Any] = list(_tasks.mask_rows(raw, local))
            else:
                rows: Any = self._forward_raw(pl_module, x, local, stage)
                if isinstance(rows, Mapping):
                    rows = next((rows[k] for k in ("out", *_OUTPUT_KEYS) if k in rows), rows)
                if not isinstance(rows, Tensor) or rows.ndim not in (3, 4) or rows.shape[0] != len(local):
                    raise _InputError(
                        f"LogPredictionSamples(task='segmentation'): pl_module(x) on the chosen {stage} samples "
                        f"returned a {_describe(rows)}; expected masks (k, H, W) or scores (k, C, H, W)."
                    )
                preds = list(_tasks.mask_rows(rows, range(len(local))))
                del rows
        else:
            if _tasks.is_detections(raw):
                found = [raw[i] for i in local]
            else:
                found = self._forward_raw(pl_module, x, local, stage)
                if not _tasks.is_detections(found) or len(found) != len(local):
                    raise _InputError(
                        f"LogPredictionSamples(task='detection'): pl_module(x) on the chosen {stage} samples returned "
                        f"a {_describe(found)}; expected a list of dicts with 'boxes', 'labels', 'scores'."
                    )
            preds = [
                _tasks.read_boxes(d, _tasks.image_hw(x[i]), self._task_opts, predicted=True)
                for d, i in zip(found, local, strict=True)
            ]
        for j, sid in enumerate(ids):
            if sid in st.images:
                continue
            i = local[j]  # read in place: the row's pixels and mask are converted straight into the kept copy
            truth: Any = None
            if y is not None and segmentation:
                truth = _tasks.mask_rows(y, [i])[0]
            elif y is not None:
                truth = _tasks.read_boxes(y[i], _tasks.image_hw(x[i]), self._task_opts, predicted=False)
            st.images[sid] = (_tasks.off_heap(_display(x[i], "image")), truth)
        for j, pos in enumerate(p + start for p in local):
            display, truth = st.images[ids[j]]
            metric: float | None = None
            if truth is not None:
                metric = _tasks.mask_iou(truth, preds[j]) if segmentation else _tasks.matches(truth, preds[j])
            st.collected[pos] = _Sample(id=ids[j], display=display, truth=truth, pred=preds[j], metric=metric)

    def _forward_raw(self, pl_module: pl.LightningModule, x: Any, local: list[int], stage: str) -> Any:
        """``pl_module(x)`` on the chosen rows only, as it comes."""
        chosen = _take(x, local, keep_device=True)
        try:
            with torch.no_grad():
                out = pl_module(chosen)
        except Exception as err:
            raise _InputError(
                f"LogPredictionSamples: the {stage} step returned no predictions, so the callback ran the module "
                f"forward on the chosen samples ({_describe(chosen)}), which failed: {type(err).__name__}: {err}. "
                f"Return predictions from the step, as one of: {_ACCEPTED_OUTPUT}."
            ) from err
        if isinstance(out, Tensor):
            return out.detach().cpu()
        return out

    def _forward(self, pl_module: pl.LightningModule, x: Any, local: list[int], stage: str) -> Tensor:
        out = self._forward_raw(pl_module, x, local, stage)
        if isinstance(out, Mapping):
            found = next((k for k in ([self.output_key] if self.output_key else _OUTPUT_KEYS) if k in out), None)
            out = out[found] if found is not None else None
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            out = out[0]
        if not isinstance(out, Tensor):
            raise _InputError(
                f"LogPredictionSamples: pl_module(x) on the chosen {stage} samples returned "
                f"{type(out).__name__}; expected logits / probabilities (N, C) or labels (N,)."
            )
        _check_prediction_shape(out, len(local), stage, "forward output")
        return out.detach().cpu()

    # ------------------------------------------------------------------ logging (rank 0)
    def _epoch_end(self, stage: str, trainer: pl.Trainer) -> None:
        if not self._active(stage, trainer):
            return
        if trainer.global_rank != 0:
            self._state[stage].collected = {}
            return
        self._log_collected(
            stage, lambda: _wandb.get_run(trainer, type(self).__name__), _wandb.lightning_step(trainer)
        )

    def _log_collected(self, stage: str, get_run: Callable[[], Any], step: int) -> None:
        """Log (rank 0) the samples collected for ``stage`` at ``step``; a failure warns, never raises."""
        st = self._state[stage]
        samples = [st.collected[p] for p in sorted(st.collected)]
        st.collected = {}
        if not samples:
            return
        run = get_run()
        if run is None:
            return
        try:
            self._log(stage, run, samples, step)
        except Exception as err:  # a logging failure never ends training
            rank_zero_warn(
                f"LogPredictionSamples: building the {stage} samples for W&B failed ({type(err).__name__}: {err}); "
                "training goes on without them."
            )

    def _name(self, label: Any) -> Any:
        if label is None:
            return None
        if self.class_names is not None and isinstance(label, int):
            if 0 <= label < len(self.class_names):
                return self.class_names[label]
            return str(label)
        return label

    def _log(self, stage: str, run: Any, samples: list[_Sample], step: int) -> None:
        import wandb

        st = self._state[stage]
        section = self.section(stage)
        owner = type(self).__name__
        is_image = st.input_kind == "image"
        annotated = st.task in _tasks.ANNOTATED
        truth_column = "target" if st.task == "regression" else "ground truth"
        if self.log_table:
            known = _row_index(st.inputs_table)
            if st.inputs_run != getattr(run, "id", None) or any(s.id not in known for s in samples):
                rows = [[s.id, self._input_cell(st, s), self._truth_cell(st, s)] for s in samples]
                kind = st.input_kind or "value"
                columns: list[str | int] = ["id", kind if kind in ("image", "text", "audio") else "input", truth_column]
                inputs = wandb.Table(columns=columns, data=rows)
                # Logged on its own first: its artifact must exist before a later table can reference its rows.
                if _wandb.log(run, {f"{section}/inputs": inputs}, step, owner):
                    st.inputs_table, st.inputs_run = inputs, getattr(run, "id", None)
            row_of = _row_index(st.inputs_table)
            refs = [st.inputs_table.index_ref(row_of[s.id]) if s.id in row_of else None for s in samples]
            if annotated:
                columns, rows = self._annotated_rows(st, samples, refs)
            else:
                columns, rows = self._prediction_rows(st, samples, refs)
            _wandb.log(run, {f"{section}/table": wandb.Table(columns=columns, data=rows)}, step, owner)
        if self.log_images:
            if not is_image:
                if st.input_kind not in ("text", "audio"):
                    self._warnings.warn(
                        f"LogPredictionSamples: the {stage} inputs are not images ({st.input_kind}); "
                        "they go into the table only, with no image panel."
                    )
                return
            if annotated:  # masks and boxes change each epoch: a new image with its annotations
                images = [self._annotated_image(st, s, caption=True) for s in samples]
                _wandb.log(run, {f"{section}/images": images}, step, owner)
                return
            images = [_captioned(st.encoded.get(s.id), s.display, self._caption(s)) for s in samples]
            if _wandb.log(run, {f"{section}/images": images}, step, owner):
                st.encoded.update((s.id, image) for s, image in zip(samples, images, strict=True))

    def _input_cell(self, st: _StageState, s: _Sample) -> Any:
        import wandb

        if st.task in _tasks.ANNOTATED:
            return self._annotated_image(st, s, caption=False)
        if st.input_kind == "image":
            return wandb.Image(s.display)
        if st.input_kind == "audio":
            return wandb.Audio(s.display)
        return _cell(s.display)

    def _truth_cell(self, st: _StageState, s: _Sample) -> Any:
        return self._summary(st, s.truth) if st.task in _tasks.ANNOTATED else _cell(self._name(s.truth))

    def _prediction_rows(
        self, st: _StageState, samples: list[_Sample], refs: list[Any]
    ) -> tuple[list[str | int], list[list[Any]]]:
        """Columns and rows of each epoch's table for classification, text, audio and regression."""
        if st.task == "regression":
            columns: list[str | int] = ["id", "sample", "target", "prediction", "abs_error"]
            rows = [[s.id, ref, _cell(s.truth), _cell(s.pred), s.metric] for s, ref in zip(samples, refs, strict=True)]
            return columns, rows
        columns = ["id", "sample", "ground truth", "prediction"]  # a new Table every call
        n_classes = max((len(s.scores) for s in samples if s.scores is not None), default=0)
        with_scores = self.log_scores and 0 < n_classes <= _MAX_SCORE_COLUMNS
        if self.log_scores and n_classes > _MAX_SCORE_COLUMNS:
            self._warnings.warn(
                f"LogPredictionSamples: {n_classes} classes is more than {_MAX_SCORE_COLUMNS}; the table holds "
                "no per-class score columns."
            )
        if with_scores:
            columns += [f"score_{self._name(c)}" for c in range(n_classes)]
        rows = []
        for s, ref in zip(samples, refs, strict=True):
            row = [s.id, ref, _cell(self._name(s.truth)), _cell(self._name(s.pred))]
            if with_scores:
                scores = s.scores or []
                row += [round(float(v), 6) if i < len(scores) else None for i, v in _pad(scores, n_classes)]
            rows.append(row)
        return columns, rows

    # ------------------------------------------------------------------ segmentation / detection cells
    def _class_name(self, c: int) -> str:
        return str(self._name(int(c)))

    def _class_labels(self, *ids: Any) -> dict[int, str]:
        present: list[int] = []
        for v in ids:
            if isinstance(v, np.ndarray):
                present += np.unique(v).tolist()
            elif isinstance(v, _tasks.Boxes):
                present += v.labels
        return _tasks.class_labels(present, self.class_names)

    def _summary(self, st: _StageState, v: Any) -> str | None:
        """Classes in a mask (``"background, circle"``) or boxes per class (``"2 circle, 1 square"``)."""
        if v is None:
            return None
        if isinstance(v, _tasks.Boxes):
            return _tasks.count_text(v.labels, self._class_name)
        return ", ".join(self._class_name(c) for c in np.unique(v).tolist())

    def _annotated_image(self, st: _StageState, s: _Sample, caption: bool) -> Any:
        """The sample's image with its ground truth (and, with ``caption``, the panel's prediction) on it."""
        import wandb

        layers: dict[str, Any] = {}
        if s.truth is not None:
            layers["ground_truth"] = s.truth
        if caption:
            layers["predictions"] = s.pred
        labels = self._class_labels(*layers.values())
        text = None
        if st.task == "segmentation":
            masks = {k: {"mask_data": v, "class_labels": labels} for k, v in layers.items()}
            if caption:
                text = f"IoU {s.metric:.3f}" if s.metric is not None and not math.isnan(s.metric) else "IoU -"
            return wandb.Image(s.display, masks=masks or None, caption=text)
        boxes = {
            k: {"box_data": _tasks.box_data(v, self._class_name), "class_labels": labels} for k, v in layers.items()
        }
        if caption:
            truth = "?" if s.truth is None else len(s.truth.labels)
            text = f"matches@0.5: {s.metric if s.metric is not None else '-'} / {truth}; predicted {len(s.pred.labels)}"
        return wandb.Image(s.display, boxes=boxes or None, caption=text)

    def _annotated_rows(
        self, st: _StageState, samples: list[_Sample], refs: list[Any]
    ) -> tuple[list[str | int], list[list[Any]]]:
        import wandb

        rows = []
        if st.task == "segmentation":
            columns: list[str | int] = ["id", "sample", "ground truth", "prediction", "iou"]
            for s, ref in zip(samples, refs, strict=True):
                metric = None if s.metric is None or math.isnan(s.metric) else s.metric
                pred = wandb.Image(_tasks.palette(s.pred), caption=self._summary(st, s.pred))
                rows.append([s.id, ref, self._summary(st, s.truth), pred, metric])
            return columns, rows
        columns = ["id", "sample", "ground truth", "prediction", "predicted boxes", "matches@0.5"]
        for s, ref in zip(samples, refs, strict=True):
            rows.append(
                [s.id, ref, self._summary(st, s.truth), self._summary(st, s.pred), len(s.pred.labels), s.metric]
            )
        return columns, rows

    def _caption(self, s: _Sample) -> str:
        if s.metric is not None and isinstance(s.pred, float):  # regression
            truth = "?" if s.truth is None else f"{s.truth:.4g}"
            return f"Target: {truth} - Prediction: {s.pred:.4g}"
        truth = "?" if s.truth is None else self._name(s.truth)
        return f"Ground Truth: {truth} - Prediction: {self._name(s.pred)}"


_InputError = _tasks.InputError  # a batch or step output this callback cannot read: raised (or, after training
# began, warned about once): the same class for the task checks of ``_tasks``


# ---------------------------------------------------------------------- helpers
def _captioned(logged: Any, display: Any, caption: str) -> Any:
    """``wandb.Image(display, caption=caption)``; from ``logged`` (the same sample's image logged before,
    its PNG already in the run's media folder) when there is one, so the pixels are not encoded again."""
    import wandb

    path = getattr(logged, "_path", None)
    if isinstance(path, str) and not getattr(logged, "_is_tmp", True) and os.path.isfile(path):
        image = wandb.Image(logged, caption=caption)
        if getattr(image, "_caption", caption) != caption:
            image._caption = caption  # W&B's copy keeps the caption of the image it copies
        return image
    return wandb.Image(display, caption=caption)


def _describe(obj: Any) -> str:
    if isinstance(obj, (Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple)):
        inner = f" of {type(obj[0]).__name__}" if obj else ""
        return f"{type(obj).__name__} of {len(obj)}{inner}"
    return type(obj).__name__


def _batch_len(x: Any) -> int:
    if isinstance(x, (Tensor, np.ndarray)):
        if x.ndim == 0:
            raise _InputError(
                f"LogPredictionSamples: the batch input is a scalar ({_describe(x)}); expected a first (batch) "
                f"dimension. Accepted batches: {_ACCEPTED_BATCH}."
            )
        return int(x.shape[0])
    try:
        return len(x)
    except TypeError:
        raise _InputError(
            f"LogPredictionSamples: cannot tell the batch size of a {type(x).__name__}. Accepted batches: "
            f"{_ACCEPTED_BATCH}."
        ) from None


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "size") and hasattr(obj, "mode")


def _image_layout(shape: tuple[int, ...]) -> str | None:
    """For one sample's shape: ``"hw"``, ``"chw"``, ``"hwc"`` or ``None`` (not an image)."""
    if len(shape) == 2:
        return "hw" if min(shape) > 1 else None
    if len(shape) == 3:
        if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            return "chw"
        if shape[-1] in (1, 3, 4):
            return "hwc"
        if shape[0] in (1, 3, 4):
            return "chw"
    return None


def _input_kind(x: Any) -> str:
    if isinstance(x, (Tensor, np.ndarray)):
        shape = tuple(x.shape)
        if len(shape) <= 2:
            return "value"
        if len(shape) in (3, 4) and _image_layout(shape[1:]) is not None:
            return "image"
        raise _InputError(
            f"LogPredictionSamples: the batch input is a {_describe(x)}, which is neither an image batch "
            "(N, C, H, W) / (N, H, W) / (N, H, W, C) with 1, 3 or 4 channels, nor values per example (N,) / (N, D)."
        )
    if isinstance(x, (list, tuple)) and x:
        first = x[0]
        if _is_pil(first):
            return "image"
        if isinstance(first, (Tensor, np.ndarray)) and _image_layout(tuple(first.shape)) is not None:
            return "image"
        return "value"
    return "value"


def _looks_like_images(x: Any) -> bool:
    try:
        return _input_kind(x) == "image"
    except _InputError:
        return False


def _take(x: Any, local: list[int], keep_device: bool = False) -> Any:
    """Rows ``local`` of a batch element, copied (never a view that keeps the whole batch alive)."""
    if isinstance(x, Tensor):
        idx = torch.as_tensor(local, dtype=torch.long, device=x.device)
        rows = x.detach().index_select(0, idx)
        return rows if keep_device else rows.cpu()
    if isinstance(x, np.ndarray):
        return x[np.asarray(local)].copy()
    return [x[i] for i in local]


def _check_prediction_shape(value: Tensor, n: int, stage: str, what: str) -> None:
    if value.ndim == 0 or value.ndim > 2 or value.shape[0] != n:
        raise _InputError(
            f"LogPredictionSamples: the {stage} {what} is a {_describe(value)}, but the batch holds {n} examples. "
            f"Accepted: {_ACCEPTED_OUTPUT}."
        )


def _labels_and_scores(value: Tensor) -> tuple[Tensor, Tensor | None]:
    """Labels and (when there are any) class scores of a few rows of predictions."""
    if value.ndim == 1:
        if value.is_floating_point():
            finite = torch.isfinite(value)
            if bool(finite.all()) and bool((value == value.round()).all()):
                return value.long(), None
            return (value > 0.5).long() if bool(((value >= 0) & (value <= 1)).all()) else (value > 0).long(), None
        return value, None
    if value.shape[1] == 1:  # one binary score per example
        v = value[:, 0].float()
        p = v if bool(((v >= 0) & (v <= 1)).all()) else torch.sigmoid(v)
        return (p > 0.5).long(), torch.stack([1 - p, p], dim=1)
    return value.argmax(dim=1), value


def _probabilities(scores: Tensor) -> list[list[float]]:
    s = scores.detach().float().cpu()
    if s.ndim != 2:
        return [[float(v)] for v in s.reshape(-1)]
    is_prob = bool(((s >= 0) & (s <= 1)).all()) and bool(torch.allclose(s.sum(dim=1), torch.ones(len(s)), atol=1e-3))
    p = s if is_prob else torch.softmax(s, dim=1)
    return p.tolist()


def _label_list(values: Any) -> list[Any]:
    if isinstance(values, Tensor):
        v = values.detach().cpu()
        if v.ndim == 2:  # one-hot targets
            v = v.argmax(dim=1)
        return [_plain(a) for a in v.tolist()]
    if isinstance(values, np.ndarray):
        return [_plain(a) for a in (values.argmax(axis=1) if values.ndim == 2 else values).tolist()]
    return [_plain(a) for a in values]


def _plain(v: Any) -> Any:
    if isinstance(v, Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _int_values(values: Any) -> list[int]:
    if values is None:
        return []
    try:
        return [v for v in _label_list(values) if isinstance(v, int) and not isinstance(v, bool)]
    except Exception:
        return []


def _display(sample: Any, kind: str) -> Any:
    """What the table and the image panel show for one sample: uint8 pixels, a PIL image, text or values."""
    if kind == "image":
        if _is_pil(sample):
            return sample
        arr = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample)
        return _to_uint8(arr)
    if isinstance(sample, str):
        return sample
    if isinstance(sample, (Tensor, np.ndarray)):
        arr = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else sample
        flat = arr.reshape(-1)[:_MAX_VALUES_SHOWN]
        vals = [_plain(round(float(v), 6)) if arr.dtype.kind == "f" else _plain(v) for v in flat.tolist()]
        if arr.ndim == 0:
            return vals[0]
        text = " ".join(str(v) for v in vals)
        return text + (" ..." if arr.size > _MAX_VALUES_SHOWN else "")
    return str(sample)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Display pixels ``(H, W)`` / ``(H, W, C)`` uint8 of one image, in their own memory mapping
    (:func:`_tasks.off_heap`). Floats and wide integers are scaled a band of rows at a time, so the
    float64 working copies stay small instead of eight times the image."""
    layout = _image_layout(tuple(arr.shape))
    if layout == "chw":
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    out = _tasks.off_heap_empty(arr.shape, np.uint8)
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        out[...] = arr
        if arr.dtype == np.bool_:
            out *= 255
        return out
    bands = [slice(r, r + _BAND_ROWS) for r in range(0, arr.shape[0], _BAND_ROWS)] if arr.ndim else [slice(None)]
    lo, hi = math.inf, -math.inf
    for band in bands:
        a = arr[band].astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if lo > hi:  # no finite pixel
        lo, hi = 0.0, 1.0
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0  # [0, 1] floats keep their brightness
    elif arr.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    for band in bands:
        a = arr[band].astype(np.float64)
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        scaled = np.where(np.isnan(a), 0.0, scaled)
        scaled = np.where(np.isposinf(a), 1.0, scaled)
        scaled = np.where(np.isneginf(a), 0.0, scaled)
        out[band] = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _pad(scores: Sequence[float], n: int) -> list[tuple[int, float]]:
    return [(i, scores[i] if i < len(scores) else math.nan) for i in range(n)]


def _row_index(table: Any) -> dict[int, int]:
    if table is None:
        return {}
    return {row[0]: i for i, row in enumerate(table.data)}


def _shards_parameters(strategy: Any) -> bool:
    """Whether a strategy splits the parameters across ranks (FSDP, DeepSpeed, model parallel)."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return bool(names & {"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})


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


def _stream_length(loader: Any, num_batches: Any) -> int | None:
    """How many examples this rank's evaluation stream yields, or ``None`` when it cannot be told."""
    if loader is None:
        return None
    sampler = getattr(loader, "sampler", None)
    length: int | None = None
    try:
        length = len(sampler) if sampler is not None else None
    except TypeError:
        length = None
    batch_size = getattr(loader, "batch_size", None)
    if isinstance(num_batches, int) and isinstance(batch_size, int) and batch_size > 0:
        capped = num_batches * batch_size
        length = capped if length is None else min(length, capped)
    return length


def _dataset_index(loader: Any, position: int) -> int:
    """The dataset index of the example at ``position`` of this rank's stream (the position if unknown)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return position
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        total = len(sampler.dataset)  # type: ignore[arg-type]
        if total:
            return (sampler.rank + position * sampler.num_replicas) % total
    return position
