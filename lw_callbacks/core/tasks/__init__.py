"""The prediction tasks of ``LogPredictionSamples``, one module each, and the interface they share.

A task says whether a first batch is one of its own (:meth:`Task.recognises`), checks that batch,
turns the chosen rows into :class:`Sample` objects, and gives the W&B cells, columns, images and
captions of its samples. :data:`TASKS` registers them; the sampling, reading and table-building code
(:mod:`lw_callbacks.core.samples`) asks the stage's task and names none.

Adding a task: a module here with a :class:`Task` subclass, its name in :data:`TASKS`, tests and docs.

Ignored labels (``ignore_index``, as torchmetrics' argument of that name): targets with one of them
count in no metric and no class list, and are shown as the class ``"ignored"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from lw_callbacks.core.batches import InputError, batch_len, describe, is_strings
from lw_callbacks.core.pixels import display

if TYPE_CHECKING:
    from lw_callbacks.core.sample_options import SampleOptions
    from lw_callbacks.core.samples import SampleCore, StageState

__all__ = [
    "IGNORED_NAME", "TASKS", "TASK_NAMES", "Chosen", "FirstBatch", "Sample", "Task", "cell", "class_labels", "guess",
]

IGNORED_NAME = "ignored"


@dataclass
class Sample:
    """One chosen example, already on the CPU: what the table and the captions need."""

    id: int
    display: Any  # uint8 HxW / HxWxC array, a PIL image, a string, a list of values
    truth: Any
    pred: Any = None
    scores: list[float] | None = None
    metric: float | None = None  # the task's per-sample measure (IoU, matches, abs error, MSE)
    ignored: int | None = None  # ignored pixels / ground-truth boxes of the truth


@dataclass
class Chosen:
    """The chosen rows of one batch, and where their predictions are."""

    stage: str
    x: Any  # the batch's inputs
    y: Any  # the batch's targets (or None)
    out: Any  # what holds the predictions: the step output, or what predict / forward gave on the chosen rows
    n_out: int  # the examples ``out`` holds
    rows: list[int]  # the chosen rows' indices in ``out``
    what: str  # where ``out`` came from, for messages
    local: list[int]  # the chosen rows' indices in the batch
    positions: list[int]  # their positions in the stage's stream
    ids: list[int]  # their sample ids (dataset indices)


@dataclass
class FirstBatch:
    """What a task is told from: the first batch's inputs, targets and predictions, as read."""

    x: Any
    y: Any
    out: Any
    x_key: str | None  # the dict key the inputs were under, if any
    image: bool  # the inputs are images
    opts: SampleOptions
    decoder: Callable[..., Any] | None  # ``decode``, resolved


class Task:
    """One prediction task, bound to the :class:`~lw_callbacks.core.samples.SampleCore` that uses it.

    Attributes:
        name: the ``task=`` value.
        guess_rank: when ``task="auto"``, tasks are asked in increasing rank; classification (the
            fallback) comes last.
        input_keys: dict-batch keys that hold this task's inputs.
        output_keys: dict step-output keys that hold this task's predictions.
        truth_column: the inputs table's column of the targets.
        warns_nan: a prediction shown as ``"nan"`` (no finite score) is warned about.
    """

    name: ClassVar[str]
    guess_rank: ClassVar[int] = 50
    input_keys: ClassVar[tuple[str, ...]] = ()
    output_keys: ClassVar[tuple[str, ...]] = ()
    truth_column: ClassVar[str] = "ground truth"
    warns_nan: ClassVar[bool] = True

    def __init__(self, core: SampleCore) -> None:
        self.core = core

    @property
    def owner(self) -> str:
        return self.core.owner

    @classmethod
    def recognises(cls, first: FirstBatch) -> bool:
        """Whether ``task="auto"`` makes this first batch one of this task's."""
        return False

    @classmethod
    def check_options(cls, opts: SampleOptions) -> None:
        """What ``task=<this task>`` needs of the other arguments, at construction."""

    @classmethod
    def reads_output(cls, raw: Any) -> bool:
        """Whether ``raw``, a step output that is not a tensor, holds this task's predictions."""
        return False

    def check(self, stage: str, x: Any, y: Any, outputs: Any, raw: Any, n: int, what: str) -> str:
        """Check the stage's first batch (``raw``: the predictions in ``outputs``, ``what``: where they came
        from); returns the input kind: ``"image"``, ``"value"``, ``"text"`` or ``"audio"``."""
        raise NotImplementedError

    def has_predictions(self, outputs: Any, n: int, stage: str) -> bool:
        """Whether a step output holds this task's predictions (after the first batch's check)."""
        raise NotImplementedError

    def collect(self, st: StageState, c: Chosen) -> None:
        """Put into ``st.collected`` a :class:`Sample` per chosen row, by stream position."""
        raise NotImplementedError

    def table(self, st: StageState, samples: list[Sample], refs: list[Any]) -> tuple[list[str | int], list[list[Any]]]:
        """Columns and rows of each logged epoch's table (``refs``: each sample's row of the inputs table)."""
        raise NotImplementedError

    def images(self, st: StageState, samples: list[Sample]) -> list[Any] | None:
        """The image panel's images, or ``None`` for the inputs captioned (:meth:`caption`), encoded once."""
        return None

    def caption(self, s: Sample) -> str:
        truth = "?" if s.truth is None else self.core.label_name(s.truth)
        return f"Ground Truth: {truth} - Prediction: {self.core.label_name(s.pred)}"

    def input_cell(self, st: StageState, s: Sample) -> Any:
        """The inputs table's cell of a sample's input."""
        import wandb

        return wandb.Image(s.display) if st.input_kind == "image" else cell(s.display)

    def truth_cell(self, st: StageState, s: Sample) -> Any:
        return cell(self.core.label_name(s.truth))

    def shown(self, sample: Any, kind: str, sid: int) -> Any:
        """What is kept of one input for display (``kind``: the stage's input kind)."""
        return display(sample, kind)

    # ------------------------------------------------------------------ shared checks
    def check_lengths(self, stage: str, x: Any, y: Any, n: int) -> None:
        if y is not None and batch_len(y, self.owner) != n:
            raise InputError(
                f"{self.owner}: the {stage} batch holds {n} inputs ({describe(x)}) but {batch_len(y)} "
                f"targets ({describe(y)}); inputs and targets must have the same first dimension."
            )


def cell(v: Any) -> Any:
    """A W&B table cell: plain values as they are, anything else as text."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def one_type(cells: list[Any]) -> list[Any]:
    """One W&B column's cells of one type: labels mixed with strings (``"nan"``, ``"ignored"``) as strings."""
    kinds = {type(c) for c in cells if c is not None}
    if str in kinds and len(kinds) > 1:
        return [None if c is None else str(c) for c in cells]
    return cells


def class_labels(ids: Sequence[int], class_names: Sequence[str] | None, ignored: Sequence[int] = ()) -> dict[int, str]:
    """W&B class labels of masks / boxes: ``class_names`` (or the ids present), and each id of
    ``ignored`` as ``"ignored"``."""
    if class_names is not None:
        labels = dict(enumerate(class_names))
    else:
        labels = {int(i): str(int(i)) for i in sorted(set(ids))}
    labels.update((int(i), IGNORED_NAME) for i in ignored)
    return labels


def is_float(v: Tensor | np.ndarray) -> bool:
    return bool(v.is_floating_point()) if isinstance(v, Tensor) else v.dtype.kind == "f"


def as_tensor(raw: Any) -> Any:
    """An array output as a tensor; anything else as it is."""
    return torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw


from lw_callbacks.core.tasks.audio import Audio  # noqa: E402
from lw_callbacks.core.tasks.classification import Classification  # noqa: E402
from lw_callbacks.core.tasks.detection import Detection  # noqa: E402
from lw_callbacks.core.tasks.reconstruction import Reconstruction  # noqa: E402
from lw_callbacks.core.tasks.regression import Regression  # noqa: E402
from lw_callbacks.core.tasks.segmentation import Segmentation  # noqa: E402
from lw_callbacks.core.tasks.text import Text  # noqa: E402

#: The registry: ``task=`` name -> its :class:`Task`.
TASKS: dict[str, type[Task]] = {
    t.name: t for t in (Classification, Segmentation, Detection, Text, Audio, Regression, Reconstruction)
}
TASK_NAMES = ("auto", *TASKS)


def guess(first: FirstBatch) -> str:
    """The task of a first batch: ``task=`` unless it is ``"auto"``, else the first task (by rank) that
    recognises it."""
    if first.opts.task != "auto":
        return first.opts.task
    for task in sorted(TASKS.values(), key=lambda t: t.guess_rank):
        if task.recognises(first):
            return task.name
    return Classification.name


def reads_output(raw: Any) -> bool:
    """Whether a non-tensor step output holds predictions of some task (strings, detection dicts)."""
    return is_strings(raw) or any(t.reads_output(raw) for t in TASKS.values())
