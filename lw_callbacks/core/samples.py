"""The prediction-samples engine shared by ``LogPredictionSamples`` and ``FabricPredictionSamples``.

:class:`SampleCore` chooses which examples of an evaluation stream to follow, reads batches and step
outputs (checking a stage's first batch), copies the chosen rows to the CPU, and builds the captioned
images and W&B Tables it logs through ``_wandb.py``. It knows nothing of the Trainer: the callback
tells it which stage runs, hands it the loader to choose positions from, and says whether this rank
logs; the task-specific reading (masks, boxes, text, audio, regression) is in
:mod:`lw_callbacks.core.tasks`. Everything kept between batches and epochs is O(num_samples).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from lw_callbacks import _wandb
from lw_callbacks._errors import ConfigurationError, WarnOnce, check_bool, check_int, check_names, check_str, warn
from lw_callbacks.core import reconstruction, tasks
from lw_callbacks.core.tasks import InputError

__all__ = [
    "NAN", "STAGES", "SampleCore", "StageState", "check_arguments", "display", "predict_step_of", "sub_batch", "take",
]

STAGES = ("validation", "test", "predict")
NAN = "nan"  # the prediction shown for a row whose scores are all NaN or infinite
_INPUT_KEYS = (
    "image", "images", "img", "x", "input", "inputs", "input_ids", "text", "features", "pixel_values",
    *tasks.AUDIO_KEYS,
)
_TARGET_KEYS = ("label", "labels", "y", "target", "targets", "class", "classes", "mask", "masks")
_OUTPUT_KEYS = (
    "preds", "pred", "predictions", "logits", "probs", "probabilities", "scores", "y_hat", "out", "masks",
    "detections", "x_hat", "reconstruction", "reconstructions",
)
_ACCEPTED_BATCH = (
    "a tuple / list `(x, y, ...)`, a dict holding the input and target under `input_key` / `target_key`, "
    "or a bare input tensor (no targets)"
)
_ACCEPTED_OUTPUT = (
    "a tensor of labels `(N,)`, a tensor of logits or probabilities `(N, C)`, a dict holding one of those under "
    f"{list(_OUTPUT_KEYS)} (or `output_key`), or nothing usable (None, a scalar loss, a dict without "
    "predictions), in which case the callback runs `predict=`, else the module's own `predict_step`, else "
    "`pl_module(x)`, on the chosen samples"
)
_HOW_TO_PREDICT = (
    "Pass {owner}(predict=<callable(module, batch) -> predictions>) (from LightningCLI YAML, its "
    "import path), give the module a predict_step that returns predictions for a batch, or return the "
    "predictions from the {stage} step."
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
    metric: float | None = None  # segmentation IoU, detection matches@0.5, regression abs error, reconstruction MSE
    ignored: int | None = None  # segmentation: ignored pixels of the truth; detection: ignored ground-truth boxes


@dataclass
class StageState:
    """What one stage (validation, test or predict) keeps between batches and epochs: O(num_samples)."""

    positions: list[int] | None = None  # stream positions chosen on this rank, sorted, fixed once chosen
    ids: dict[int, int] = field(default_factory=dict)  # stream position -> dataset index (the sample id)
    seen: int = 0  # examples of the stream passed so far in this epoch
    checked: bool = False  # the first batch's layout and output have been validated
    ran: bool = False  # at least one batch reached the callback during this fit / test / predict
    logged: bool = False  # rank 0 handed samples to the run during this fit / test / predict
    collected: dict[int, _Sample] = field(default_factory=dict)  # this epoch's samples, by stream position
    images: dict[int, Any] = field(default_factory=dict)  # display form of each id, computed once
    encoded: dict[int, Any] = field(default_factory=dict)  # id -> last logged wandb.Image: its PNG, encoded once
    input_kind: str | None = None  # "image", "value", "text" or "audio"
    task: str | None = None  # told from the first batch (or the task= argument)
    inputs_table: Any = None  # the wandb.Table holding the inputs, logged once per run
    inputs_run: str | None = None  # id of the run that holds inputs_table
    disabled: bool = False  # unreadable input first seen after training began: logging stopped for this fit
    nan_rows: int = 0  # collected rows this epoch whose scores are all NaN / infinite
    nan_warned: bool = False  # said once per fit / test / predict


def check_arguments(
    num_samples: Any,
    every_n_epochs: Any,
    key: Any,
    class_names: Any,
    log_images: Any,
    log_table: Any,
    log_scores: Any,
    stages: Any,
    log_sanity_check: Any,
    input_key: Any,
    target_key: Any,
    output_key: Any,
    dataloader_idx: Any,
    task_opts: tasks.TaskOptions,
) -> tuple[list[str] | None, tuple[str, ...]]:
    """Check ``LogPredictionSamples``' arguments (the task ones are checked by ``task_opts``, made first).

    Returns:
        ``class_names`` as a list (or ``None``) and the stages, each once, in the order given.

    Raises:
        ConfigurationError: naming the argument, the accepted values and an example.
    """
    owner = task_opts.owner
    check_int(owner, "num_samples", num_samples, minimum=1, example="16")
    check_int(owner, "every_n_epochs", every_n_epochs, minimum=1, example="1")
    if isinstance(stages, str):
        stage_list = [stages]
    elif isinstance(stages, (list, tuple)):
        stage_list = list(stages)
    else:
        raise ConfigurationError(
            f"{owner}(stages={stages!r}): stages must be a stage name or a list of them, from {list(STAGES)}, "
            f"got {type(stages).__name__}, e.g. stages=['validation', 'test']."
        )
    unknown = [s for s in stage_list if s not in STAGES]
    if unknown or not stage_list:
        raise ConfigurationError(
            f"{owner}(stages={stages!r}): unknown stage(s) {unknown or stage_list}; accepted "
            f"stages are {list(STAGES)}, e.g. stages=['validation', 'test']."
        )
    check_str(owner, "key", key, example="'predictions'")
    if class_names is not None:
        class_names = list(check_names(owner, "class_names", class_names, example="['cat', 'dog']") or ())
    check_int(owner, "dataloader_idx", dataloader_idx, minimum=0, example="0")
    for flag, value in (
        ("log_images", log_images),
        ("log_table", log_table),
        ("log_scores", log_scores),
        ("log_sanity_check", log_sanity_check),
    ):
        check_bool(owner, flag, value)
    for name, key_value in (("input_key", input_key), ("target_key", target_key), ("output_key", output_key)):
        if key_value is not None and (not isinstance(key_value, str) or not key_value):
            raise ConfigurationError(
                f"{owner}({name}={key_value!r}): `{name}` must be a key of your dict batches / step "
                f"outputs (a non-empty string), or None to use the usual names."
            )
    return class_names, tuple(dict.fromkeys(stage_list))


class SampleCore:
    """Choose, read, collect and log prediction samples, per stage; no Trainer.

    Built from arguments already checked (:func:`check_arguments`, :class:`tasks.TaskOptions`).
    Per stage: :meth:`reset` when new data may come, :meth:`start_epoch`, then for each batch
    :meth:`read_batch` (every rank: the first batch is checked), :meth:`choose_positions` once,
    :meth:`collect_chosen` (or :meth:`collect_or_warn` on rows of the caller's choosing) on the
    logging rank, and :meth:`log_collected` at the end of the epoch.

    Attributes:
        states: stage name -> its :class:`StageState`.
        sharded: the parameters are sharded across ranks: a step that returns no predictions is refused
            at the first batch (running ``forward`` on one rank alone would hang).
        task_opts: the task arguments (``task``, boxes, ``sample_rate``, ``decode``).
        owner: the class named in the warnings of failed W&B writes.
    """

    def __init__(
        self,
        task_opts: tasks.TaskOptions,
        num_samples: int = 16,
        key: str = "predictions",
        class_names: list[str] | None = None,
        log_images: bool = True,
        log_table: bool = True,
        log_scores: bool = True,
        stages: tuple[str, ...] = ("validation",),
        input_key: str | None = None,
        target_key: str | None = None,
        output_key: str | None = None,
    ) -> None:
        self.task_opts = task_opts  # the task arguments, checked: the one copy the engine reads
        self.owner = task_opts.owner  # the class the user built, named in errors and warnings
        self.num_samples = num_samples
        self.key = key
        self.class_names = class_names
        self.log_images = log_images
        self.log_table = log_table
        self.log_scores = log_scores
        self.stages = stages
        self.input_key = input_key
        self.target_key = target_key
        self.output_key = output_key
        self.states: dict[str, StageState] = {s: StageState() for s in stages}
        self.sharded = False
        self._warnings = WarnOnce()
        self._said_predict_step = False
        self._step_failed = False  # the module's predict_step failed on an evaluation batch: forward is used

    @property
    def predict(self) -> Callable[..., Any] | str | None:
        """The ``predict`` argument as given (a callable, a dotted path, or ``None``), imported at :meth:`resolve`."""
        return self.task_opts.predict

    @property
    def ignored(self) -> frozenset[int]:
        """The labels ignored now: ``ignore_index``, or what the module said (after :meth:`resolve`)."""
        return self.task_opts.ignored

    def section(self, stage: str) -> str:
        """The panel section a stage logs under: ``key`` for validation, ``key_<stage>`` otherwise."""
        return self.key if stage == "validation" else f"{self.key}_{stage}"

    def resolve(self, module: Any = None) -> None:
        """Import dotted ``decode`` / ``predict`` paths and settle the ignored labels (``ignore_index``, or
        read from ``module``): a bad path fails here, before any batch."""
        self.task_opts.resolve(module)

    # ------------------------------------------------------------------ per stage
    def reset(self, stage: str) -> None:
        """Forget what was chosen and checked for ``stage``: a new fit / test / predict may bring other data."""
        st = self.states[stage]
        st.ran, st.checked, st.positions, st.ids, st.images, st.encoded = False, False, None, {}, {}, {}
        st.disabled, st.task, st.nan_warned, st.logged = False, None, False, False
        self._step_failed = False  # a new fit / test / predict may bring another module

    def start_epoch(self, stage: str) -> None:
        """A new pass over ``stage``'s stream: positions count from 0, nothing collected yet."""
        st = self.states.get(stage)
        if st is not None:
            st.seen = 0
            st.collected = {}
            st.nan_rows = 0

    def forget_inputs(self, stage: str) -> None:
        """The inputs changed: the kept pixels and the logged inputs table no longer name these ids."""
        st = self.states[stage]
        st.images, st.inputs_table, st.inputs_run = {}, None, None

    def disable(self, stage: str) -> None:
        """Log no more samples of ``stage`` until the next :meth:`reset`."""
        st = self.states[stage]
        st.disabled, st.collected = True, {}

    def collect_chosen(
        self, stage: str, module: Any, x: Any, y: Any, outputs: Any, n: int, batch: Any = None
    ) -> None:
        """Collect the chosen positions that fall in this batch of ``n`` examples (after :meth:`read_batch`
        and :meth:`choose_positions`); a batch holding none of them costs a few integer comparisons.
        ``batch``: the batch as the loader gave it (what ``predict`` / ``predict_step`` read)."""
        st = self.states[stage]
        assert st.positions is not None
        start = st.seen
        st.seen += n
        lo = bisect.bisect_left(st.positions, start)
        hi = bisect.bisect_left(st.positions, start + n)
        if lo == hi:
            return
        local = [p - start for p in st.positions[lo:hi]]
        self.collect_or_warn(stage, module, x, y, outputs, local, start, batch)

    def read_batch(self, stage: str, batch: Any, outputs: Any, module: Any = None) -> tuple[Any, Any, int]:
        """Split ``batch`` into inputs, targets and their count; the stage's first batch is checked
        (on every rank, so a bad layout fails everywhere alike). When the predictions do not come from
        ``outputs`` (``predict``, the module's ``predict_step`` or ``forward``), that is run on the first
        batch's first rows here too, so a module it cannot read fails at this first batch."""
        st = self.states[stage]
        st.ran = True
        x, y = self._split_batch(batch)
        n = _batch_len(x, self.owner)
        if not st.checked:
            self._check_first(stage, x, y, outputs, n, self._input_key_of(batch), batch, module)
            st.checked = True
        return x, y, n

    def collect_or_warn(
        self,
        stage: str,
        module: Any,
        x: Any,
        y: Any,
        outputs: Any,
        local: list[int],
        start: int,
        batch: Any = None,
    ) -> None:
        """Collect rows ``local`` of this batch (stream positions ``start + local``) for this epoch's log;
        a problem other than bad input (:class:`~lw_callbacks.core.tasks.InputError`, raised) warns once
        and leaves the samples out."""
        try:
            self._collect(stage, module, x, y, outputs, local, start, batch)
        except InputError:
            raise
        except Exception as err:  # a logging problem never ends training
            self._warnings.warn(
                f"{self.owner}: could not read the {stage} samples of this batch "
                f"({type(err).__name__}: {err}); they are left out of the log."
            )

    def _split_batch(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            x_key = self.input_key or next((k for k in _INPUT_KEYS if k in batch), None)
            y_key = self.target_key or next((k for k in _TARGET_KEYS if k in batch), None)
            if x_key is None or x_key not in batch:
                raise InputError(
                    f"{self.owner}: the batch is a dict with keys {sorted(map(str, batch))} and no input under "
                    f"{[self.input_key] if self.input_key else list(_INPUT_KEYS)}. Pass "
                    f"{self.owner}(input_key=..., target_key=...) naming your keys. Accepted batches: "
                    f"{_ACCEPTED_BATCH}."
                )
            if self.target_key is not None and self.target_key not in batch:
                raise InputError(
                    f"{self.owner}(target_key={self.target_key!r}): the batch dict has keys "
                    f"{sorted(map(str, batch))}; pass the key that holds the targets (or target_key=None)."
                )
            return batch[x_key], (batch[y_key] if y_key is not None else None)
        given = [f"{n}={v!r}" for n, v in (("input_key", self.input_key), ("target_key", self.target_key)) if v]
        if given:
            raise InputError(
                f"{self.owner}({', '.join(given)}): the batch is a {type(batch).__name__}, not a dict, so "
                f"there is no key to look up ({tasks.describe(batch)}). Remove {' and '.join(given)} (a tuple batch is "
                "read as `(x, y, ...)`), or make the batches dicts."
            )
        if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], str):
            if len(batch) == 1:
                return batch[0], None
            return batch[0], batch[1]
        if isinstance(batch, (Tensor, np.ndarray)) or (isinstance(batch, list) and batch):
            return batch, None
        raise InputError(
            f"{self.owner}: cannot read a batch of type {type(batch).__name__}"
            f"{tasks.describe(batch)}. Accepted batches: {_ACCEPTED_BATCH}."
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

    def _check_first(
        self,
        stage: str,
        x: Any,
        y: Any,
        outputs: Any,
        n: int,
        x_key: str | None = None,
        batch: Any = None,
        module: Any = None,
    ) -> None:
        st = self.states[stage]
        if self.task_opts.predictor is None and self.output_key is not None and isinstance(outputs, Mapping):
            self._output_tensor(outputs, n, stage)  # a dict without output_key: say so, naming it
        what = "step output"
        if self.uses_fallback(outputs):
            if self.sharded:
                given = self.task_opts.predictor is not None
                raise InputError(
                    f"{self.owner}: the {stage} step returned no predictions"
                    f"{' (predict= is given, and would run on rank 0 alone)' if given else ''}, and under a strategy "
                    "that shards the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on "
                    f"rank 0 alone would wait forever for the other ranks. Return the predictions from the {stage} "
                    f"step, as one of: {_ACCEPTED_OUTPUT.split(', or nothing usable')[0]}."
                )
            if module is not None and n > 0:
                # What logging will run on the chosen rows, tried now on the first rows: a module it cannot
                # read stops the fit at this first batch (the sanity check's, by default), not after training.
                local = list(range(min(n, self.num_samples)))
                outputs, what = self._fallback(stage, module, batch if batch is not None else x, x, local, n)
                x, y, n = take(x, local), (take(y, local) if y is not None else None), len(local)
        raw = self._raw_output(outputs)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        st.task = tasks.guess(self.task_opts, x, y, raw, x_key, _looks_like_images(x))
        if st.task in tasks.ANNOTATED:
            self._check_annotated(stage, x, y, raw, n)
            return
        if st.task == "reconstruction":
            reconstruction.check(x, raw, n, stage, self.owner)
            st.input_kind = "image"
            return
        if st.task == "audio":
            tasks.check_audio(x, self.task_opts, stage)
            st.input_kind = "audio"
        elif st.task == "text":
            tasks.check_text(x, self.task_opts, stage)
            st.input_kind = "text"
        else:
            st.input_kind = _input_kind(x, self.owner)
        if tasks.is_strings(raw):  # generated text: shown as it is
            if len(raw) != n:
                raise InputError(
                    f"{self.owner}: the {stage} step returned {len(raw)} strings for a batch of {n} examples."
                )
            return
        if self.sharded and self._output_tensor(outputs, n, stage) is None:
            raise InputError(
                f"{self.owner}: the {stage} step returned no predictions, and under a strategy that shards "
                "the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on rank 0 alone "
                f"would wait forever for the other ranks. Return the predictions from the {stage} step, as one of: "
                f"{_ACCEPTED_OUTPUT.split(', or nothing usable')[0]}."
            )
        if y is not None and _batch_len(y, self.owner) != n:
            raise InputError(
                f"{self.owner}: the {stage} batch holds {n} inputs ({tasks.describe(x)}) but {_batch_len(y)} "
                f"targets ({tasks.describe(y)}); inputs and targets must have the same first dimension."
            )
        value = self._output_tensor(outputs, n, stage, what)
        if value is None and what != "step output":
            raise InputError(
                f"{self.owner}: the {what} on the chosen {stage} samples is a {tasks.describe(outputs)}; "
                f"expected logits / probabilities (N, C), labels (N,), or a dict holding them. "
                + _HOW_TO_PREDICT.format(stage=stage, owner=self.owner)
            )
        if st.task == "regression":
            tasks.check_regression(value, y, n, stage, self.owner)
            return
        if st.task == "text" and tasks.decode_rows(value, self.task_opts) is not None:
            return  # token ids to decode, not class scores
        if self.class_names is None:
            return
        labels, scores = _labels_and_scores(value) if value is not None else (None, None)
        k = len(self.class_names)
        needed = []
        if scores is not None and scores.ndim == 2 and scores.shape[1] > 1:
            needed.append(("scores", int(scores.shape[1]) - 1))
        targets = [v for v in _int_values(y) if v not in self.ignored]  # ignored labels need no class name
        for kind, vals in (("labels", targets), ("predictions", _int_values(labels))):
            if vals:
                needed.append((kind, max(vals)))
        for what, top in needed:
            if top >= k:
                raise InputError(
                    f"{self.owner}(class_names=<{k} names>): the first {stage} batch holds {what} up to "
                    f"class {top}, which needs at least {top + 1} class names. Pass one name per class in label "
                    "order, or class_names=None to show the numbers."
                )

    def uses_fallback(self, outputs: Any) -> bool:
        """Whether predictions come from ``predict``, the module's ``predict_step`` or ``forward`` (run on the
        chosen rows) instead of the step output: ``predict`` is given, or the output holds no predictions."""
        if self.task_opts.predictor is not None:
            return True
        raw = self._raw_output(outputs)
        if tasks.is_strings(raw) or tasks.is_detections(raw):
            return False
        return not (isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0)

    def has_predictions(self, stage: str, outputs: Any, n: int) -> bool:
        """Whether the step output holds this stage's task predictions (after the first batch's check)."""
        task = self.states[stage].task
        raw = self._raw_output(outputs)
        if task in ("segmentation", "reconstruction"):
            return isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0
        if task == "detection":
            return tasks.is_detections(raw)
        return tasks.is_strings(raw) or self._output_tensor(outputs, n, stage) is not None

    def _check_annotated(self, stage: str, x: Any, y: Any, raw: Any, n: int) -> None:
        """First-batch checks of a segmentation / detection batch."""
        st = self.states[stage]
        task = st.task
        if not _looks_like_images(x):
            raise InputError(
                f"{self.owner}(task={task!r}): the {stage} inputs are a {tasks.describe(x)}, not images; "
                f"{task} needs image inputs (N, C, H, W) / (N, H, W) / (N, H, W, C) or a list of images."
            )
        st.input_kind = "image"
        if y is not None and _batch_len(y, self.owner) != n:
            raise InputError(
                f"{self.owner}: the {stage} batch holds {n} inputs ({tasks.describe(x)}) but {_batch_len(y)} "
                f"targets ({tasks.describe(y)}); inputs and targets must have the same first dimension."
            )
        if task == "segmentation":
            value = raw if isinstance(raw, Tensor) and raw.ndim > 0 else None
            if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
                raise InputError(
                    f"{self.owner}(task='segmentation'): the {stage} step returned a {tasks.describe(raw)}; "
                    "expected masks (N, H, W) of class ids or scores (N, C, H, W), a dict holding them, or nothing "
                    "(the callback then runs the module's forward on the chosen samples)."
                )
            tasks.check_segmentation(
                x, y, value, n, stage, self.class_names, ignored=self.ignored, owner=self.owner
            )
        else:
            value = raw if tasks.is_detections(raw) else None
            if raw is not None and value is None and not (isinstance(raw, Tensor) and raw.ndim == 0):
                raise InputError(
                    f"{self.owner}(task='detection'): the {stage} step returned a {tasks.describe(raw)}; "
                    "expected a list of one dict per image with 'boxes', 'labels' and 'scores' (as torchvision "
                    "detection models return), a dict holding it, or nothing (the callback then runs the module's "
                    "forward)."
                )
            tasks.check_detection(x, y, value, n, stage, self.task_opts, self.class_names)
        if self.sharded and value is None:
            raise InputError(
                f"{self.owner}: the {stage} step returned no predictions, and under a strategy that shards "
                "the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on rank 0 alone "
                f"would wait forever for the other ranks. Return the {task} predictions from the {stage} step."
            )

    def _output_tensor(self, outputs: Any, n: int, stage: str, what: str = "step output") -> Tensor | None:
        """The step output's predictions tensor, layout checked; ``None`` means "run forward"."""
        value = outputs
        if isinstance(outputs, Mapping):
            keys = [self.output_key] if self.output_key else list(_OUTPUT_KEYS)
            found = next((k for k in keys if k in outputs), None)
            if found is None:
                if self.output_key is not None:
                    raise InputError(
                        f"{self.owner}(output_key={self.output_key!r}): the {stage} step returned a dict "
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
        _check_prediction_shape(value, n, stage, what, self.owner)
        return value

    # ------------------------------------------------------------------ choosing samples
    def choose_positions(self, stage: str, loader: Any, num_batches: Any, warn_shuffle: bool) -> None:
        """Fix the stream positions ``stage`` follows: ``num_samples`` spread evenly over this rank's stream
        (read from ``loader`` and its ``num_batches``), or the first ones when its length is unknown.
        ``warn_shuffle``: warn when the loader shuffles (say it on the logging rank)."""
        st = self.states[stage]
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
        if shuffled and warn_shuffle:
            warn(
                f"{self.owner}: the {stage} dataloader shuffles, so the examples at the chosen positions "
                "change every epoch. Use shuffle=False for evaluation loaders to follow the same samples."
            )

    # ------------------------------------------------------------------ collecting (rank 0, chosen rows only)
    def _collect(
        self,
        stage: str,
        module: Any,
        x: Any,
        y: Any,
        outputs: Any,
        local: list[int],
        start: int,
        batch: Any = None,
    ) -> None:
        st = self.states[stage]
        ids = [st.ids.get(start + p, start + p) for p in local]
        out, rows, n_out, what = self._outputs_for(stage, module, batch, x, outputs, local)
        if st.task in tasks.ANNOTATED:
            self._collect_annotated(stage, x, y, out, rows, n_out, what, local, ids, start)
            return
        if st.task == "reconstruction":
            self._collect_reconstruction(stage, x, y, out, rows, n_out, what, local, ids, start)
            return
        raw = self._raw_output(out)
        if tasks.is_strings(raw):
            chosen: Any = [raw[i] for i in rows]
        else:
            value = self._output_tensor(out, n_out, stage, what)
            if value is None:
                raise InputError(
                    f"{self.owner}: the {what} on the chosen {stage} samples is a {tasks.describe(out)}; "
                    "expected logits / probabilities (N, C), labels (N,), or a dict holding them. "
                    + _HOW_TO_PREDICT.format(stage=stage, owner=self.owner)
                )
            chosen = take(value, rows)
        preds, probs = self._predictions(st.task, chosen)
        truths = self._truths(st.task, y, local)
        for j, pos in enumerate(p + start for p in local):
            sid = ids[j]
            if sid not in st.images:  # pixels are copied once, from the batch row straight into the kept form
                st.images[sid] = tasks.off_heap(self._shown(x[local[j]], st.input_kind or "value", sid))
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

    def _outputs_for(
        self, stage: str, module: Any, batch: Any, x: Any, outputs: Any, local: list[int]
    ) -> tuple[Any, list[int], int, str]:
        """Where the chosen rows' predictions are: ``(outputs, rows of it, its length, what it is)``, from the
        step output, or from ``predict`` / ``predict_step`` / ``forward`` run on the chosen rows only."""
        n = _batch_len(x, self.owner)
        if not self.uses_fallback(outputs):
            return outputs, local, n, "step output"
        if module is None:
            raise InputError(
                f"{self.owner}: the {stage} outputs hold no predictions and there is no model to compute them."
            )
        out, what = self._fallback(stage, module, batch if batch is not None else x, x, local, n)
        return out, list(range(len(local))), len(local), what

    def _fallback(self, stage: str, module: Any, batch: Any, x: Any, local: list[int], n: int) -> tuple[Any, str]:
        """Run ``predict(module, batch)``, else the module's own ``predict_step(batch, 0)``, else ``module(x)``,
        on a batch holding only rows ``local`` (under ``torch.no_grad``); returns its output (tensors on the
        CPU) and what ran. A ``predict_step`` that fails on an evaluation batch (it may expect the predict
        loader's batches) gives way to ``module(x)``, said once."""
        predictor = self.task_opts.predictor
        if predictor is not None:
            sub = sub_batch(batch, local, n)
            try:
                with torch.no_grad():
                    out = predictor(module, sub)
            except InputError:
                raise
            except Exception as err:
                raise InputError(
                    f"{self.owner}(predict={_callable_name(self.task_opts.predict)}): it failed on the chosen "
                    f"{stage} samples ({tasks.describe(sub)}): {type(err).__name__}: {err}. It is called as "
                    "predict(module, batch), the batch as the loader gives it but holding only the chosen rows, "
                    "and must return their predictions."
                ) from err
            return _plain_output(out), f"output of predict={_callable_name(self.task_opts.predict)}"
        step = None if self._step_failed else predict_step_of(module)
        step_error: Exception | None = None
        if step is not None:
            sub = sub_batch(batch, local, n)
            try:
                with torch.no_grad():
                    out = module.predict_step(sub, 0)
            except InputError:
                raise
            except Exception as err:
                step_error, self._step_failed = err, True
            else:
                if not self._said_predict_step:
                    self._said_predict_step = True
                    rank_zero_info(
                        f"{self.owner}: the {stage} step returns no predictions; the samples' predictions come from "
                        f"{step} on the chosen rows (pass predict= to choose another way)."
                    )
                return _plain_output(out), f"output of {step}"
        chosen = take(x, local, keep_device=True)
        try:
            with torch.no_grad():
                out = module(chosen)
        except InputError:
            raise
        except Exception as err:
            tried = (
                f"{step} on the chosen samples, which failed ({type(step_error).__name__}: {step_error}), then "
                if step_error is not None
                else ""
            )
            raise InputError(
                f"{self.owner}: the {stage} step returned no predictions, so the callback ran {tried}pl_module(x) on "
                f"the chosen samples ({tasks.describe(chosen)}), which failed: {type(err).__name__}: {err}. "
                + _HOW_TO_PREDICT.format(stage=stage, owner=self.owner)
            ) from err
        if step_error is not None:
            rank_zero_info(
                f"{self.owner}: {step} failed on the chosen {stage} samples ({type(step_error).__name__}: "
                f"{step_error}); the samples' predictions come from pl_module(x) (pass predict= to choose another way)."
            )
        return _plain_output(out), "output of pl_module(x)"

    def _predictions(self, task: str | None, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        """Predictions (and class probabilities) of the chosen rows, read as the task reads them; a row whose
        scores are all NaN or infinite is predicted :data:`NAN`, never a class."""
        if tasks.is_strings(rows):
            return list(rows), None
        if task == "regression":
            return tasks.floats(rows), None
        if task == "text":
            texts = tasks.decode_rows(rows, self.task_opts)
            if texts is not None:
                return texts, None
        labels, scores = _labels_and_scores(rows)
        preds = _label_list(labels)
        for j, bad in enumerate(_no_finite_score(rows)):
            if bad:
                preds[j] = NAN
        return preds, (_probabilities(scores) if scores is not None else None)

    def _truths(self, task: str | None, y: Any, local: list[int]) -> list[Any]:
        if y is None:
            return [None] * len(local)
        rows = take(y, local)
        if task == "regression":
            return tasks.floats(rows)
        if task == "text":
            texts = tasks.decode_rows(rows, self.task_opts)
            if texts is not None:
                return texts
        labels = _label_list(rows)
        ignored = self.ignored
        return [tasks.IGNORED_NAME if isinstance(v, int) and v in ignored else v for v in labels]

    def _shown(self, sample: Any, kind: str, sid: int) -> Any:
        if kind == "audio":
            return tasks.write_wav(sample, sid, self.task_opts)  # the WAV file's path, written once
        if kind == "text" and not isinstance(sample, str):
            return (tasks.decode_rows(sample[None], self.task_opts) or [str(sample)])[0]
        return display(sample, kind)

    def _collect_annotated(
        self,
        stage: str,
        x: Any,
        y: Any,
        out: Any,
        rows: list[int],
        n_out: int,
        what: str,
        local: list[int],
        ids: list[int],
        start: int,
    ) -> None:
        """Segmentation / detection: pixels and ground truth once per sample id, predictions every epoch."""
        st = self.states[stage]
        raw = self._raw_output(out)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        segmentation = st.task == "segmentation"
        ignored = self.ignored
        if segmentation:  # reduced to uint8 class ids now: the scores are not kept
            if not isinstance(raw, Tensor) or raw.ndim not in (3, 4) or raw.shape[0] != n_out:
                raise InputError(
                    f"{self.owner}(task='segmentation'): the {what} on the chosen {stage} samples is a "
                    f"{tasks.describe(raw)}; expected masks (k, H, W) or scores (k, C, H, W)."
                )
            preds: list[Any] = list(tasks.mask_rows(raw, rows))
        else:
            if not tasks.is_detections(raw) or len(raw) != n_out:
                raise InputError(
                    f"{self.owner}(task='detection'): the {what} on the chosen {stage} samples is a "
                    f"{tasks.describe(raw)}; expected a list of dicts with 'boxes', 'labels', 'scores'."
                )
            preds = [
                tasks.read_boxes(raw[r], tasks.image_hw(x[i]), self.task_opts, predicted=True)
                for r, i in zip(rows, local, strict=True)
            ]
        for j, sid in enumerate(ids):
            if sid in st.images:
                continue
            i = local[j]  # read in place: the row's pixels and mask are converted straight into the kept copy
            truth: Any = None
            if y is not None and segmentation:
                truth = tasks.truth_mask(y, i, ignored)
            elif y is not None:
                truth = tasks.read_boxes(y[i], tasks.image_hw(x[i]), self.task_opts, predicted=False)
            st.images[sid] = (tasks.off_heap(display(x[i], "image")), truth)
        for j, pos in enumerate(p + start for p in local):
            shown, truth = st.images[ids[j]]
            metric: float | None = None
            skipped: int | None = None
            if truth is not None:
                if segmentation:
                    metric = tasks.mask_iou(truth, preds[j], ignore=bool(ignored))
                    skipped = tasks.ignored_pixels(truth) if ignored else None
                else:
                    metric = tasks.matches(truth, preds[j])
                    skipped = truth.num_ignored() if ignored else None
            st.collected[pos] = _Sample(
                id=ids[j], display=shown, truth=truth, pred=preds[j], metric=metric, ignored=skipped
            )

    def _collect_reconstruction(
        self,
        stage: str,
        x: Any,
        y: Any,
        out: Any,
        rows: list[int],
        n_out: int,
        what: str,
        local: list[int],
        ids: list[int],
        start: int,
    ) -> None:
        """Reconstruction: the input's pixels once per sample id; each epoch the output as an image drawn on
        the input's scale, and its mean squared error."""
        st = self.states[stage]
        raw = self._raw_output(out)
        if isinstance(raw, np.ndarray):
            raw = torch.from_numpy(raw)
        if not isinstance(raw, Tensor) or raw.shape[0] != n_out:
            raise InputError(
                f"{self.owner}(task='reconstruction'): the {what} on the chosen {stage} samples is a "
                f"{tasks.describe(raw)}; expected one image per example, shaped like the input or flattened."
            )
        image_targets = isinstance(y, (Tensor, np.ndarray)) and reconstruction.looks_like(x, None, y)
        truths = [None] * len(local) if y is None or image_targets else self._truths("classification", y, local)
        for j, pos in enumerate(p + start for p in local):
            sid, i = ids[j], local[j]
            if sid not in st.images:
                row = x[i].detach().cpu().numpy() if isinstance(x[i], Tensor) else np.asarray(x[i])
                scale = _display_range(row)
                st.images[sid] = (_to_uint8(row, scale), scale)
            shown, scale = st.images[sid]
            recon = reconstruction.reshape_like(raw[rows[j]], x[i])
            ref = reconstruction.reference(x[i], y[i] if image_targets else None)
            st.collected[pos] = _Sample(
                id=sid,
                display=shown,
                truth=truths[j],
                pred=_to_uint8(recon, scale),
                metric=reconstruction.mse(recon, ref),
            )

    # ------------------------------------------------------------------ logging (rank 0)
    def log_collected(self, stage: str, get_run: Callable[[], Any], step: int) -> None:
        """Log (rank 0) the samples collected for ``stage`` at ``step``; a failure warns, never raises."""
        st = self.states[stage]
        samples = [st.collected[p] for p in sorted(st.collected)]
        st.collected = {}
        if not samples:
            return
        nan = sum(1 for s in samples if isinstance(s.pred, str) and s.pred == NAN and st.task != "text")
        if nan and not st.nan_warned:
            st.nan_warned = True
            warn(
                f"{self.owner}: {nan} of the {len(samples)} {stage} samples logged at step {step} have no "
                f"finite score (all NaN or infinite); their prediction is shown as {NAN!r}, not as a class. "
                "(Said once per fit / test / predict.)"
            )
        run = get_run()
        if run is None:
            return
        st.logged = True  # a failure below warns on its own
        try:
            self._log(stage, run, samples, step)
        except Exception as err:  # a logging failure never ends training
            warn(
                f"{self.owner}: building the {stage} samples for W&B failed ({type(err).__name__}: {err}); "
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

        st = self.states[stage]
        section = self.section(stage)
        owner = self.owner
        is_image = st.input_kind == "image"
        annotated = st.task in tasks.ANNOTATED
        truth_column = "target" if st.task == "regression" else "ground truth"
        if self.log_table:
            known = _row_index(st.inputs_table)
            if st.inputs_run != getattr(run, "id", None) or any(s.id not in known for s in samples):
                truths = _one_type([self._truth_cell(st, s) for s in samples])
                rows = [[s.id, self._input_cell(st, s), t] for s, t in zip(samples, truths, strict=True)]
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
            elif st.task == "reconstruction":
                columns, rows = self._reconstruction_rows(samples, refs)
            else:
                columns, rows = self._prediction_rows(st, samples, refs)
            _wandb.log(run, {f"{section}/table": wandb.Table(columns=columns, data=rows)}, step, owner)
        if self.log_images:
            if not is_image:
                if st.input_kind not in ("text", "audio"):
                    self._warnings.warn(
                        f"{self.owner}: the {stage} inputs are not images ({st.input_kind}); "
                        "they go into the table only, with no image panel."
                    )
                return
            if annotated:  # masks and boxes change each epoch: a new image with its annotations
                images = [self._annotated_image(st, s, caption=True) for s in samples]
                _wandb.log(run, {f"{section}/images": images}, step, owner)
                return
            if st.task == "reconstruction":  # the input and its reconstruction side by side
                images = [
                    wandb.Image(reconstruction.side_by_side(s.display, s.pred), caption=self._caption(s))
                    for s in samples
                ]
                _wandb.log(run, {f"{section}/images": images}, step, owner)
                return
            images = [_captioned(st.encoded.get(s.id), s.display, self._caption(s)) for s in samples]
            if _wandb.log(run, {f"{section}/images": images}, step, owner):
                st.encoded.update((s.id, image) for s, image in zip(samples, images, strict=True))

    def _input_cell(self, st: StageState, s: _Sample) -> Any:
        import wandb

        if st.task in tasks.ANNOTATED:
            return self._annotated_image(st, s, caption=False)
        if st.input_kind == "image":
            return wandb.Image(s.display)
        if st.input_kind == "audio":
            return wandb.Audio(s.display)
        return _cell(s.display)

    def _truth_cell(self, st: StageState, s: _Sample) -> Any:
        return self._summary(st, s.truth) if st.task in tasks.ANNOTATED else _cell(self._name(s.truth))

    def _prediction_rows(
        self, st: StageState, samples: list[_Sample], refs: list[Any]
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
                f"{self.owner}: {n_classes} classes is more than {_MAX_SCORE_COLUMNS}; the table holds "
                "no per-class score columns."
            )
        if with_scores:
            columns += [f"score_{self._name(c)}" for c in range(n_classes)]
        rows = []
        truths = _one_type([_cell(self._name(s.truth)) for s in samples])
        preds = _one_type([_cell(self._name(s.pred)) for s in samples])
        for s, ref, truth, pred in zip(samples, refs, truths, preds, strict=True):
            row = [s.id, ref, truth, pred]
            if with_scores:
                scores = s.scores or []
                row += [
                    round(float(v), 6) if i < len(scores) and math.isfinite(v) else None
                    for i, v in _pad(scores, n_classes)
                ]
            rows.append(row)
        return columns, rows

    # ------------------------------------------------------------------ segmentation / detection cells
    def _class_name(self, c: int) -> str:
        return str(self._name(int(c)))

    def _class_labels(self, *ids: Any) -> dict[int, str]:
        present: list[int] = []
        ignored: list[int] = []
        for v in ids:
            if isinstance(v, np.ndarray):
                present += np.unique(v).tolist()
                ignored += [tasks.IGNORED] if self.ignored else []
            elif isinstance(v, tasks.Boxes):
                present += v.labels
                ignored += sorted(self.ignored)
        return tasks.class_labels(present, self.class_names, ignored)

    def _summary(self, st: StageState, v: Any) -> str | None:
        """Classes in a mask (``"background, circle"``) or boxes per class (``"2 circle, 1 square"``); ignored
        pixels and boxes are not among them."""
        if v is None:
            return None
        if isinstance(v, tasks.Boxes):
            return tasks.count_text([v.labels[i] for i in v.counted()], self._class_name)
        present = np.unique(v).tolist()
        if self.ignored:
            present = [c for c in present if c != tasks.IGNORED]
        return ", ".join(self._class_name(c) for c in present)

    def _annotated_image(self, st: StageState, s: _Sample, caption: bool) -> Any:
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
            k: {"box_data": tasks.box_data(v, self._class_name), "class_labels": labels} for k, v in layers.items()
        }
        if caption:
            truth = "?" if s.truth is None else len(s.truth.labels)
            text = f"matches@0.5: {s.metric if s.metric is not None else '-'} / {truth}; predicted {len(s.pred.labels)}"
        return wandb.Image(s.display, boxes=boxes or None, caption=text)

    def _annotated_rows(
        self, st: StageState, samples: list[_Sample], refs: list[Any]
    ) -> tuple[list[str | int], list[list[Any]]]:
        import wandb

        rows = []
        counts = bool(self.ignored)  # an "ignored" column: ignored pixels / ground-truth boxes per sample
        if st.task == "segmentation":
            columns: list[str | int] = ["id", "sample", "ground truth", "prediction", "iou"]
            columns += [tasks.IGNORED_NAME] if counts else []
            for s, ref in zip(samples, refs, strict=True):
                metric = None if s.metric is None or math.isnan(s.metric) else s.metric
                pred = wandb.Image(tasks.palette(s.pred, counts), caption=self._summary(st, s.pred))
                rows.append([s.id, ref, self._summary(st, s.truth), pred, metric, *([s.ignored] if counts else [])])
            return columns, rows
        columns = ["id", "sample", "ground truth", "prediction", "predicted boxes", "matches@0.5"]
        columns += [tasks.IGNORED_NAME] if counts else []
        for s, ref in zip(samples, refs, strict=True):
            rows.append(
                [s.id, ref, self._summary(st, s.truth), self._summary(st, s.pred), len(s.pred.labels), s.metric]
                + ([s.ignored] if counts else [])
            )
        return columns, rows

    def _reconstruction_rows(self, samples: list[_Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        import wandb

        columns: list[str | int] = ["id", "sample", "ground truth", "reconstruction", "mse"]
        rows = [
            [s.id, ref, _cell(self._name(s.truth)), wandb.Image(s.pred), s.metric]
            for s, ref in zip(samples, refs, strict=True)
        ]
        return columns, rows

    def _caption(self, s: _Sample) -> str:
        if isinstance(s.pred, np.ndarray):  # reconstruction
            error = "-" if s.metric is None else f"{s.metric:.4g}"
            truth = "" if s.truth is None else f"Ground Truth: {self._name(s.truth)} - "
            return f"{truth}Input | Reconstruction - MSE {error}"
        if s.metric is not None and isinstance(s.pred, float):  # regression
            truth = "?" if s.truth is None else f"{s.truth:.4g}"
            return f"Target: {truth} - Prediction: {s.pred:.4g}"
        truth = "?" if s.truth is None else self._name(s.truth)
        return f"Ground Truth: {truth} - Prediction: {self._name(s.pred)}"



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


def _batch_len(x: Any, owner: str = "LogPredictionSamples") -> int:
    if isinstance(x, (Tensor, np.ndarray)):
        if x.ndim == 0:
            raise InputError(
                f"{owner}: the batch input is a scalar ({tasks.describe(x)}); expected a first (batch) "
                f"dimension. Accepted batches: {_ACCEPTED_BATCH}."
            )
        return int(x.shape[0])
    try:
        return len(x)
    except TypeError:
        raise InputError(
            f"{owner}: cannot tell the batch size of a {type(x).__name__}. Accepted batches: "
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


def _input_kind(x: Any, owner: str = "LogPredictionSamples") -> str:
    if isinstance(x, (Tensor, np.ndarray)):
        shape = tuple(x.shape)
        if len(shape) <= 2:
            return "value"
        if len(shape) in (3, 4) and _image_layout(shape[1:]) is not None:
            return "image"
        raise InputError(
            f"{owner}: the batch input is a {tasks.describe(x)}, which is neither an image batch "
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
    except InputError:
        return False


def sub_batch(batch: Any, local: list[int], n: int) -> Any:
    """A batch of ``batch``'s structure holding only rows ``local`` of its ``n`` examples: each tensor, array,
    list or tuple of length ``n`` (in a tuple / list / named tuple / dict batch, or the bare batch) keeps
    those rows; anything else is passed as it is. Tensors stay on their device."""

    def rows(v: Any) -> Any:
        if isinstance(v, (Tensor, np.ndarray)) and v.ndim > 0 and v.shape[0] == n:
            return take(v, local, keep_device=True)
        if isinstance(v, (list, tuple)) and not hasattr(v, "_fields") and len(v) == n:
            picked = [v[i] for i in local]
            return picked if isinstance(v, list) else tuple(picked)
        return v

    if isinstance(batch, Mapping):
        return {k: rows(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(rows(v) for v in batch))
    if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], str):
        parts = [rows(v) for v in batch]
        return parts if isinstance(batch, list) else tuple(parts)
    return rows(batch)


def predict_step_of(module: Any) -> str | None:
    """``"<Class>.predict_step"`` when the module defines its own ``predict_step`` (not Lightning's default)."""
    for cls in type(module).__mro__:
        if "predict_step" in vars(cls):
            package = (cls.__module__ or "").split(".")[0]
            if package in ("lightning", "pytorch_lightning", "lightning_fabric"):
                return None
            return f"{cls.__name__}.predict_step"
    return None


def _plain_output(out: Any) -> Any:
    """A fallback's output as a step output: the first of ``(predictions, extras)``, tensors on the CPU."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]
    if isinstance(out, Tensor):
        out = out.detach().cpu()
    return out


def _callable_name(fn: Any) -> str:
    if isinstance(fn, str):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{module}.{name}" if module else str(name)


def take(x: Any, local: list[int], keep_device: bool = False) -> Any:
    """Rows ``local`` of a batch element, copied (never a view that keeps the whole batch alive)."""
    if isinstance(x, Tensor):
        idx = torch.as_tensor(local, dtype=torch.long, device=x.device)
        rows = x.detach().index_select(0, idx)
        return rows if keep_device else rows.cpu()
    if isinstance(x, np.ndarray):
        return x[np.asarray(local)].copy()
    return [x[i] for i in local]


def _check_prediction_shape(value: Tensor, n: int, stage: str, what: str, owner: str = "LogPredictionSamples") -> None:
    if value.ndim == 0 or value.ndim > 2 or value.shape[0] != n:
        raise InputError(
            f"{owner}: the {stage} {what} is a {tasks.describe(value)}, but the batch holds {n} examples. "
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
    if value.is_floating_point():  # a NaN score is never the argmax (torch's argmax would pick it)
        return torch.nan_to_num(value, nan=-math.inf).argmax(dim=1), value
    return value.argmax(dim=1), value


def _no_finite_score(value: Any) -> list[bool]:
    """Per row of predictions: whether its scores (or its one value) are all NaN or infinite."""
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim == 0:
        sized = isinstance(value, (list, tuple)) or (isinstance(value, Tensor) and value.ndim > 0)
        return [False] * (len(value) if sized else 0)
    finite = torch.isfinite(value.detach())
    rows = finite.reshape(len(value), -1).any(dim=1)
    return [not bool(v) for v in rows.tolist()]


def _probabilities(scores: Tensor) -> list[list[float]]:
    s = scores.detach().float().cpu()
    if s.ndim != 2:
        return [[float(v)] for v in s.reshape(-1)]
    is_prob = bool(((s >= 0) & (s <= 1)).all()) and bool(torch.allclose(s.sum(dim=1), torch.ones(len(s)), atol=1e-3))
    p = s if is_prob else torch.softmax(torch.nan_to_num(s, nan=-math.inf), dim=1)
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


def display(sample: Any, kind: str) -> Any:
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


def _bands(arr: np.ndarray) -> list[slice]:
    return [slice(r, r + _BAND_ROWS) for r in range(0, arr.shape[0], _BAND_ROWS)] if arr.ndim else [slice(None)]


def _display_range(arr: np.ndarray) -> tuple[float, float]:
    """The values one image's pixels are scaled from: ``(0, 1)`` for floats in [0, 1], ``(0, 255)`` for
    integers in [0, 255], else the finite minimum and maximum."""
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        return 0.0, 255.0
    lo, hi = math.inf, -math.inf
    for band in _bands(arr):
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
    return lo, hi


def _to_uint8(arr: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """Display pixels ``(H, W)`` / ``(H, W, C)`` uint8 of one image, in their own memory mapping
    (:func:`tasks.off_heap`). Floats and wide integers are scaled from ``scale`` (default: the image's
    own :func:`_display_range`) a band of rows at a time, so the float64 working copies stay small
    instead of eight times the image."""
    layout = _image_layout(tuple(arr.shape))
    if layout == "chw":
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    out = tasks.off_heap_empty(arr.shape, np.uint8)
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        out[...] = arr
        if arr.dtype == np.bool_:
            out *= 255
        return out
    bands = _bands(arr)
    lo, hi = scale if scale is not None else _display_range(arr)
    for band in bands:
        a = arr[band].astype(np.float64)
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        scaled = np.where(np.isnan(a), 0.0, scaled)
        scaled = np.where(np.isposinf(a), 1.0, scaled)
        scaled = np.where(np.isneginf(a), 0.0, scaled)
        out[band] = (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def _one_type(cells: list[Any]) -> list[Any]:
    """One W&B column's cells of one type: labels mixed with strings (``"nan"``, ``"ignored"``) as strings."""
    kinds = {type(c) for c in cells if c is not None}
    if str in kinds and len(kinds) > 1:
        return [None if c is None else str(c) for c in cells]
    return cells


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
