"""The prediction-samples engine shared by ``LogPredictionSamples`` and ``FabricPredictionSamples``.

:class:`SampleCore` chooses which examples of an evaluation stream to follow, reads batches and step
outputs (checking a stage's first batch), copies the chosen rows to the CPU, and builds the captioned
images and W&B Tables it logs through ``_wandb.py``. It knows nothing of the Trainer: the callback
tells it which stage runs, hands it the loader to choose positions from, and says whether this rank
logs. It knows no task either: each stage's task (:mod:`lw_callbacks.core.tasks`, one module per task)
checks the first batch, turns the chosen rows into samples and gives their cells, columns, images and
captions. Everything kept between batches and epochs is O(num_samples).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from lw_callbacks import _wandb
from lw_callbacks._errors import WarnOnce, warn
from lw_callbacks.core import tasks
from lw_callbacks.core.batches import (
    ACCEPTED_BATCH,
    HOW_TO_PREDICT,
    InputError,
    batch_len,
    callable_name,
    dataset_index,
    describe,
    plain_output,
    predict_step_of,
    stream_length,
    sub_batch,
    take,
)
from lw_callbacks.core.pixels import looks_like_images
from lw_callbacks.core.sample_options import STAGES, SampleOptions, check_ignore_index
from lw_callbacks.core.tasks import Chosen, FirstBatch, Sample, Task, one_type
from lw_callbacks.core.tasks.classification import NAN

if TYPE_CHECKING:
    from wandb import Run, Table

__all__ = ["NAN", "STAGES", "SampleCore", "StageState", "take"]

_INPUT_KEYS = (
    "image", "images", "img", "x", "input", "inputs", "input_ids", "text", "features", "pixel_values",
    *(key for task in tasks.TASKS.values() for key in task.input_keys),
)
_TARGET_KEYS = ("label", "labels", "y", "target", "targets", "class", "classes", "mask", "masks")
_OUTPUT_KEYS = tuple(key for task in tasks.TASKS.values() for key in task.output_keys)
_ACCEPTED_OUTPUT = (
    "a tensor of labels `(N,)`, a tensor of logits or probabilities `(N, C)`, a dict holding one of those under "
    f"{list(_OUTPUT_KEYS)} (or `output_key`), or nothing usable (None, a scalar loss, a dict without "
    "predictions), in which case the callback runs `predict=`, else the module's own `predict_step`, else "
    "`pl_module(x)`, on the chosen samples"
)


@dataclass
class StageState:
    """What one stage (validation, test or predict) keeps between batches and epochs: O(num_samples)."""

    positions: list[int] | None = None  # stream positions chosen on this rank, sorted, fixed once chosen
    ids: dict[int, int] = field(default_factory=dict)  # stream position -> dataset index (the sample id)
    seen: int = 0  # examples of the stream passed so far in this epoch
    checked: bool = False  # the first batch's layout and output have been validated
    ran: bool = False  # at least one batch reached the callback during this fit / test / predict
    logged: bool = False  # rank 0 handed samples to the run during this fit / test / predict
    collected: dict[int, Sample] = field(default_factory=dict)  # this epoch's samples, by stream position
    images: dict[int, Any] = field(default_factory=dict)  # display form of each id, computed once
    encoded: dict[int, Any] = field(default_factory=dict)  # id -> last logged wandb.Image: its PNG, encoded once
    input_kind: str | None = None  # "image", "value", "text" or "audio"
    task: str | None = None  # told from the first batch (or the task= argument)
    inputs_table: Any = None  # the wandb.Table holding the inputs, logged once per run
    inputs_run: str | None = None  # id of the run that holds inputs_table
    disabled: bool = False  # unreadable input first seen after training began: logging stopped for this fit
    nan_rows: int = 0  # collected rows this epoch whose scores are all NaN / infinite
    nan_warned: bool = False  # said once per fit / test / predict


class SampleCore:
    """Choose, read, collect and log prediction samples, per stage; no Trainer.

    Built from its checked :class:`~lw_callbacks.core.sample_options.SampleOptions`.
    Per stage: :meth:`reset` when new data may come, :meth:`start_epoch`, then for each batch
    :meth:`read_batch` (every rank: the first batch is checked), :meth:`choose_positions` once,
    :meth:`collect_chosen` (or :meth:`collect_or_warn` on rows of the caller's choosing) on the
    logging rank, and :meth:`log_collected` at the end of the epoch.

    Attributes:
        states: stage name -> its :class:`StageState`.
        sharded: the parameters are sharded across ranks: a step that returns no predictions is refused
            at the first batch (running ``forward`` on one rank alone would hang).
        options: the checked options, shared with the callback.
        decoder, predictor, ignored: ``decode``, ``predict`` and the ignored labels, resolved (:meth:`resolve`).
        owner: the class named in the warnings of failed W&B writes.
    """

    def __init__(self, options: SampleOptions) -> None:
        self.options = options  # checked once, read-only: the one copy the engine reads
        self.owner = options.owner  # the class the user built, named in errors and warnings
        self.states: dict[str, StageState] = {s: StageState() for s in options.stages}
        self.sharded = False
        # resolved at setup (:meth:`resolve`): the decode / predict callables, and the labels ignored now
        self.decoder: Callable[..., Any] | None = options.decode if callable(options.decode) else None
        self.predictor: Callable[..., Any] | None = options.predict if callable(options.predict) else None
        self.ignored = frozenset(check_ignore_index(options.ignore_index, options.owner))
        self._warnings = WarnOnce()
        self._tasks: dict[str, Task] = {}  # the stages' tasks, bound to this core
        self._said_predict_step = False
        self._step_failed = False  # the module's predict_step failed on an evaluation batch: forward is used

    def section(self, stage: str) -> str:
        """The panel section a stage logs under: ``key`` for validation, ``key_<stage>`` otherwise."""
        return self.options.key if stage == "validation" else f"{self.options.key}_{stage}"

    def resolve(self, module: nn.Module | None = None) -> None:
        """Import dotted ``decode`` / ``predict`` paths and settle the ignored labels (``ignore_index``, or
        read from ``module``): a bad path fails here, before any batch."""
        self.decoder, self.predictor, self.ignored = self.options.resolve(module)

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
        self, stage: str, module: nn.Module | None, x: Any, y: Any, outputs: Any, n: int, batch: Any = None
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

    def read_batch(self, stage: str, batch: Any, outputs: Any, module: nn.Module | None = None) -> tuple[Any, Any, int]:
        """Split ``batch`` into inputs, targets and their count; the stage's first batch is checked
        (on every rank, so a bad layout fails everywhere alike). When the predictions do not come from
        ``outputs`` (``predict``, the module's ``predict_step`` or ``forward``), that is run on the first
        batch's first rows here too, so a module it cannot read fails at this first batch."""
        st = self.states[stage]
        st.ran = True
        x, y = self._split_batch(batch)
        n = batch_len(x, self.owner)
        if not st.checked:
            self._check_first(stage, x, y, outputs, n, self._input_key_of(batch), batch, module)
            st.checked = True
        return x, y, n

    def collect_or_warn(
        self,
        stage: str,
        module: nn.Module | None,
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
        st = self.states[stage]
        try:
            ids = [st.ids.get(start + p, start + p) for p in local]
            out, rows, n_out, what = self._outputs_for(stage, module, batch, x, outputs, local)
            positions = [p + start for p in local]
            self.task_of(stage).collect(st, Chosen(stage, x, y, out, n_out, rows, what, local, positions, ids))
        except InputError:
            raise
        except Exception as err:  # a logging problem never ends training
            self._warnings.warn(
                f"{self.owner}: could not read the {stage} samples of this batch "
                f"({type(err).__name__}: {err}); they are left out of the log."
            )

    def _split_batch(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            x_key = self.options.input_key or next((k for k in _INPUT_KEYS if k in batch), None)
            y_key = self.options.target_key or next((k for k in _TARGET_KEYS if k in batch), None)
            if x_key is None or x_key not in batch:
                raise InputError(
                    f"{self.owner}: the batch is a dict with keys {sorted(map(str, batch))} and no input under "
                    f"{[self.options.input_key] if self.options.input_key else list(_INPUT_KEYS)}. Pass "
                    f"{self.owner}(input_key=..., target_key=...) naming your keys. Accepted batches: "
                    f"{ACCEPTED_BATCH}."
                )
            if self.options.target_key is not None and self.options.target_key not in batch:
                raise InputError(
                    f"{self.owner}(target_key={self.options.target_key!r}): the batch dict has keys "
                    f"{sorted(map(str, batch))}; pass the key that holds the targets (or target_key=None)."
                )
            return batch[x_key], (batch[y_key] if y_key is not None else None)
        keys = (("input_key", self.options.input_key), ("target_key", self.options.target_key))
        given = [f"{n}={v!r}" for n, v in keys if v]
        if given:
            raise InputError(
                f"{self.owner}({', '.join(given)}): the batch is a {type(batch).__name__}, not a dict, so "
                f"there is no key to look up ({describe(batch)}). Remove {' and '.join(given)} (a tuple batch is "
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
            f"{describe(batch)}. Accepted batches: {ACCEPTED_BATCH}."
        )

    def _input_key_of(self, batch: Any) -> str | None:
        if not isinstance(batch, Mapping):
            return None
        return self.options.input_key or next((k for k in _INPUT_KEYS if k in batch), None)

    def raw_output(self, outputs: Any) -> Any:
        """The step output's predictions as they came (under ``output_key`` / a usual key for dicts)."""
        if isinstance(outputs, Mapping):
            keys = [self.options.output_key] if self.options.output_key else list(_OUTPUT_KEYS)
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
        module: nn.Module | None = None,
    ) -> None:
        st = self.states[stage]
        if self.predictor is None and self.options.output_key is not None and isinstance(outputs, Mapping):
            self.output_tensor(outputs, n, stage)  # a dict without output_key: say so, naming it
        what = "step output"
        if self.uses_fallback(outputs):
            if self.sharded:
                raise self.sharded_error(stage, given=self.predictor is not None)
            if module is not None and n > 0:
                # What logging will run on the chosen rows, tried now on the first rows: a module it cannot
                # read stops the fit at this first batch (the sanity check's, by default), not after training.
                local = list(range(min(n, self.options.num_samples)))
                outputs, what = self._fallback(stage, module, batch if batch is not None else x, x, local, n)
                x, y, n = take(x, local), (take(y, local) if y is not None else None), len(local)
        raw = tasks.as_tensor(self.raw_output(outputs))
        st.task = tasks.guess(FirstBatch(x, y, raw, x_key, looks_like_images(x), self.options, self.decoder))
        st.input_kind = self.task_of(stage).check(stage, x, y, outputs, raw, n, what)

    def task_of(self, stage: str) -> Task:
        """The task of ``stage``, told at its first batch."""
        name = self.states[stage].task
        assert name is not None, "told at the stage's first batch"
        if name not in self._tasks:
            self._tasks[name] = tasks.TASKS[name](self)
        return self._tasks[name]

    def sharded_error(self, stage: str, ask: str | None = None, given: bool = False) -> InputError:
        """The error of a step that returns no predictions under a strategy that shards the parameters."""
        accepted = _ACCEPTED_OUTPUT.split(", or nothing usable")[0]
        ask = ask or f"the predictions from the {stage} step, as one of: {accepted}"
        return InputError(
            f"{self.owner}: the {stage} step returned no predictions"
            f"{' (predict= is given, and would run on rank 0 alone)' if given else ''}, and under a strategy "
            "that shards the parameters (FSDP, DeepSpeed, model parallel) running the module's forward on "
            f"rank 0 alone would wait forever for the other ranks. Return {ask}."
        )

    def uses_fallback(self, outputs: Any) -> bool:
        """Whether predictions come from ``predict``, the module's ``predict_step`` or ``forward`` (run on the
        chosen rows) instead of the step output: ``predict`` is given, or the output holds no predictions."""
        if self.predictor is not None:
            return True
        raw = self.raw_output(outputs)
        if tasks.reads_output(raw):
            return False
        return not (isinstance(raw, (Tensor, np.ndarray)) and raw.ndim > 0)

    def has_predictions(self, stage: str, outputs: Any, n: int) -> bool:
        """Whether the step output holds this stage's task predictions (after the first batch's check)."""
        return self.task_of(stage).has_predictions(outputs, n, stage)

    def output_tensor(self, outputs: Any, n: int, stage: str, what: str = "step output") -> Tensor | None:
        """The step output's predictions tensor, layout checked; ``None`` means "run forward"."""
        value = outputs
        if isinstance(outputs, Mapping):
            keys = [self.options.output_key] if self.options.output_key else list(_OUTPUT_KEYS)
            found = next((k for k in keys if k in outputs), None)
            if found is None:
                if self.options.output_key is not None:
                    raise InputError(
                        f"{self.owner}(output_key={self.options.output_key!r}): the {stage} step returned a dict "
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
    def choose_positions(
        self, stage: str, loader: DataLoader[Any] | None, num_batches: int | float | None, warn_shuffle: bool
    ) -> None:
        """Fix the stream positions ``stage`` follows: ``num_samples`` spread evenly over this rank's stream
        (read from ``loader`` and its ``num_batches``), or the first ones when its length is unknown.
        ``warn_shuffle``: warn when the loader shuffles (say it on the logging rank)."""
        st = self.states[stage]
        length = stream_length(loader, num_batches)
        k = self.options.num_samples
        if length is None or length <= k:
            positions = list(range(k))
        else:
            positions = sorted({round(i * (length - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
        st.positions = positions
        st.ids = {p: dataset_index(loader, p) for p in positions}
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
    def _outputs_for(
        self, stage: str, module: nn.Module | None, batch: Any, x: Any, outputs: Any, local: list[int]
    ) -> tuple[Any, list[int], int, str]:
        """Where the chosen rows' predictions are: ``(outputs, rows of it, its length, what it is)``, from the
        step output, or from ``predict`` / ``predict_step`` / ``forward`` run on the chosen rows only."""
        n = batch_len(x, self.owner)
        if not self.uses_fallback(outputs):
            return outputs, local, n, "step output"
        if module is None:
            raise InputError(
                f"{self.owner}: the {stage} outputs hold no predictions and there is no model to compute them."
            )
        out, what = self._fallback(stage, module, batch if batch is not None else x, x, local, n)
        return out, list(range(len(local))), len(local), what

    def _fallback(self, stage: str, module: nn.Module, batch: Any, x: Any, local: list[int], n: int) -> tuple[Any, str]:
        """Run ``predict(module, batch)``, else the module's own ``predict_step(batch, 0)``, else ``module(x)``,
        on a batch holding only rows ``local`` (under ``torch.no_grad``); returns its output (tensors on the
        CPU) and what ran. A ``predict_step`` that fails on an evaluation batch (it may expect the predict
        loader's batches) gives way to ``module(x)``, said once."""
        predictor = self.predictor
        if predictor is not None:
            sub = sub_batch(batch, local, n)
            try:
                with torch.no_grad():
                    out = predictor(module, sub)
            except InputError:
                raise
            except Exception as err:
                raise InputError(
                    f"{self.owner}(predict={callable_name(self.options.predict)}): it failed on the chosen "
                    f"{stage} samples ({describe(sub)}): {type(err).__name__}: {err}. It is called as "
                    "predict(module, batch), the batch as the loader gives it but holding only the chosen rows, "
                    "and must return their predictions."
                ) from err
            return plain_output(out), f"output of predict={callable_name(self.options.predict)}"
        step = None if self._step_failed else predict_step_of(module)
        step_error: Exception | None = None
        if step is not None:
            sub = sub_batch(batch, local, n)
            try:
                with torch.no_grad():
                    out = cast("Callable[..., Any]", module.predict_step)(sub, 0)  # the module's own
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
                return plain_output(out), f"output of {step}"
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
                f"the chosen samples ({describe(chosen)}), which failed: {type(err).__name__}: {err}. "
                + HOW_TO_PREDICT.format(stage=stage, owner=self.owner)
            ) from err
        if step_error is not None:
            rank_zero_info(
                f"{self.owner}: {step} failed on the chosen {stage} samples ({type(step_error).__name__}: "
                f"{step_error}); the samples' predictions come from pl_module(x) (pass predict= to choose another way)."
            )
        return plain_output(out), "output of pl_module(x)"

    # ------------------------------------------------------------------ logging (rank 0)
    def log_collected(self, stage: str, get_run: Callable[[], Run | None], step: int) -> None:
        """Log (rank 0) the samples collected for ``stage`` at ``step``; a failure warns, never raises."""
        st = self.states[stage]
        samples = [st.collected[p] for p in sorted(st.collected)]
        st.collected = {}
        if not samples:
            return
        counted = self.task_of(stage).warns_nan
        nan = sum(1 for s in samples if isinstance(s.pred, str) and s.pred == NAN) if counted else 0
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

    def label_name(self, label: Any) -> Any:
        if label is None:
            return None
        if self.options.class_names is not None and isinstance(label, int):
            if 0 <= label < len(self.options.class_names):
                return self.options.class_names[label]
            return str(label)
        return label

    def _log(self, stage: str, run: Run, samples: list[Sample], step: int) -> None:
        import wandb

        st = self.states[stage]
        task = self.task_of(stage)
        section = self.section(stage)
        owner = self.owner
        if self.options.log_table:
            known = _row_index(st.inputs_table)
            if st.inputs_run != getattr(run, "id", None) or any(s.id not in known for s in samples):
                truths = one_type([task.truth_cell(st, s) for s in samples])
                rows = [[s.id, task.input_cell(st, s), t] for s, t in zip(samples, truths, strict=True)]
                kind = st.input_kind or "value"
                columns: list[str | int] = ["id", "input" if kind == "value" else kind, task.truth_column]
                inputs = wandb.Table(columns=columns, data=rows)
                # Logged on its own first: its artifact must exist before a later table can reference its rows.
                if _wandb.log(run, {f"{section}/inputs": inputs}, step, owner):
                    st.inputs_table, st.inputs_run = inputs, getattr(run, "id", None)
            row_of = _row_index(st.inputs_table)
            refs = [st.inputs_table.index_ref(row_of[s.id]) if s.id in row_of else None for s in samples]
            columns, rows = task.table(st, samples, refs)
            _wandb.log(run, {f"{section}/table": wandb.Table(columns=columns, data=rows)}, step, owner)
        if not self.options.log_images:
            return
        if st.input_kind != "image":
            if st.input_kind == "value":
                self.warn_once(
                    f"{self.owner}: the {stage} inputs are not images ({st.input_kind}); "
                    "they go into the table only, with no image panel."
                )
            return
        images = task.images(st, samples)  # the task's own (annotations, side by side), drawn each epoch
        if images is not None:
            _wandb.log(run, {f"{section}/images": images}, step, owner)
            return
        images = [_captioned(st.encoded.get(s.id), s.display, task.caption(s)) for s in samples]
        if _wandb.log(run, {f"{section}/images": images}, step, owner):
            st.encoded.update((s.id, image) for s, image in zip(samples, images, strict=True))

    def warn_once(self, message: str) -> None:
        """Warn ``message`` once per core."""
        self._warnings.warn(message)


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


def _check_prediction_shape(value: Tensor, n: int, stage: str, what: str, owner: str = "LogPredictionSamples") -> None:
    if value.ndim == 0 or value.ndim > 2 or value.shape[0] != n:
        raise InputError(
            f"{owner}: the {stage} {what} is a {describe(value)}, but the batch holds {n} examples. "
            f"Accepted: {_ACCEPTED_OUTPUT}."
        )


def _row_index(table: Table | None) -> dict[int, int]:
    if table is None:
        return {}
    return {row[0]: i for i, row in enumerate(table.data)}


