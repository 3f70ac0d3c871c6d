"""The task arguments of ``LogPredictionSamples`` (boxes, audio, ``decode``, ``predict``, ``ignore_index``),
checked at construction and resolved at ``setup``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lw_callbacks._errors import ConfigurationError
from lw_callbacks.core import tasks
from lw_callbacks.core.tasks import IGNORED_NAME

__all__ = ["BOX_FORMATS", "TaskOptions", "check_ignore_index", "check_predict", "ignore_index_of", "resolve_dotted"]

BOX_FORMATS = ("xyxy", "cxcywh")


@dataclass
class TaskOptions:
    """The task arguments of ``LogPredictionSamples``, checked at construction."""

    task: str = "auto"
    box_format: str = "xyxy"
    normalized_boxes: bool = False
    score_threshold: float = 0.3
    sample_rate: int | None = None
    decode: Callable[..., Any] | str | None = None
    predict: Callable[..., Any] | str | None = None
    ignore_index: int | Sequence[int] | None = None
    owner: str = "LogPredictionSamples"  # the class the user built, named in messages
    _decode: Callable[..., Any] | None = field(default=None, repr=False)
    _predict: Callable[..., Any] | None = field(default=None, repr=False)
    ignored: frozenset[int] = field(default=frozenset(), repr=False)  # resolved: given, or read from the module

    def __post_init__(self) -> None:
        owner = self.owner
        if self.task not in tasks.TASK_NAMES:
            raise ConfigurationError(
                f"{owner}(task={self.task!r}): task must be one of {list(tasks.TASK_NAMES)}; 'auto' tells it from "
                "the first batch and step output."
            )
        if self.box_format not in BOX_FORMATS:
            raise ConfigurationError(
                f"{owner}(box_format={self.box_format!r}): box_format must be 'xyxy' (x0, y0, x1, y1, as "
                "torchvision) or 'cxcywh' (centre x, centre y, width, height)."
            )
        if not isinstance(self.normalized_boxes, bool):
            raise ConfigurationError(
                f"{owner}(normalized_boxes={self.normalized_boxes!r}): must be True (box coordinates in [0, 1]) or "
                "False (pixels)."
            )
        score = self.score_threshold
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
            raise ConfigurationError(
                f"{owner}(score_threshold={score!r}): must be a number in [0, 1]; predicted boxes scoring below it "
                "are left out, e.g. score_threshold=0.3."
            )
        self.score_threshold = float(score)
        rate = self.sample_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0):
            raise ConfigurationError(
                f"{owner}(sample_rate={rate!r}): sample_rate must be a positive integer (samples per second of "
                "the waveforms), e.g. sample_rate=16000."
            )
        if self.decode is not None and not (callable(self.decode) or (isinstance(self.decode, str) and self.decode)):
            raise ConfigurationError(
                f"{owner}(decode={self.decode!r}): decode must be a callable turning one sample's token ids "
                "into a string, or the dotted import path of one (e.g. 'my_project.data.tokenizer.decode')."
            )
        self._decode = self.decode if callable(self.decode) else None
        check_predict(self.predict, owner)
        self._predict = self.predict if callable(self.predict) else None
        self.ignored = frozenset(check_ignore_index(self.ignore_index, owner))
        if self.task in tasks.TASKS:
            tasks.TASKS[self.task].check_options(self)  # what the chosen task itself needs

    def resolve(self, module: nn.Module | None = None) -> None:
        """Import ``decode`` / ``predict`` given as dotted paths, and settle the ignored labels: ``ignore_index``
        as given, or (``None``) what ``module`` says plainly (:func:`ignore_index_of`). At ``setup``."""
        owner = self.owner
        if isinstance(self.decode, str) and self._decode is None:
            self._decode = resolve_dotted(self.decode, "decode", _DECODE_HINT, self.owner)
        check_predict(self.predict, owner)
        if isinstance(self.predict, str):  # imported at every setup: the option may have been edited
            self._predict = resolve_dotted(self.predict, "predict", _PREDICT_HINT, owner)
        else:
            self._predict = self.predict
        if self.ignore_index is not None:
            self.ignored = frozenset(check_ignore_index(self.ignore_index, owner))
            return
        labels, sources = ignore_index_of(module) if module is not None else ((), [])
        self.ignored = frozenset(labels)
        if labels:
            rank_zero_info(
                f"{owner}: targets labelled {sorted(labels)} are ignored (read from {', '.join(sources)}): left out "
                f"of IoU, class lists and matches, and shown as {IGNORED_NAME!r}. Pass ignore_index=<label(s)> to "
                "choose them, or ignore_index=[] to ignore none."
            )

    @property
    def decoder(self) -> Callable[..., Any] | None:
        return self._decode

    @property
    def predictor(self) -> Callable[..., Any] | None:
        """The ``predict`` callable (imported), or ``None``."""
        return self._predict


_DECODE_HINT = (
    "a callable that turns one sample's token ids into a string, e.g. 'my_project.data.tokenizer.decode'"
)


_PREDICT_HINT = (
    "a callable(module, batch) -> predictions, e.g. 'my_project.samples.predict' for "
    "`def predict(module, batch): x, _ = batch; return module(x.flatten(1))`"
)


def resolve_dotted(
    path: str, argument: str = "decode", hint: str = _DECODE_HINT, owner: str = "LogPredictionSamples"
) -> Callable[..., Any]:
    """The object at ``package.module.attr.attr``: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    err: Exception | None = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError as e:
            err = err or e
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError as e:
            err = e
            break
        if callable(obj):
            return obj
        err = TypeError(f"{path} is a {type(obj).__name__}, not callable")
        break
    raise ConfigurationError(
        f"{owner}({argument}={path!r}): cannot import it ({type(err).__name__}: {err}). Pass the dotted "
        f"path of {hint}, importable where training runs."
    )


def check_predict(predict: Any, owner: str) -> None:
    """``predict`` is ``None``, a callable or a non-empty dotted path."""
    if predict is None or callable(predict) or (isinstance(predict, str) and "." in predict.strip(".")):
        return
    raise ConfigurationError(
        f"{owner}(predict={predict!r}): predict must be {_PREDICT_HINT} (a callable, or its dotted import path "
        "from LightningCLI YAML), or None to read the step output (then the module's predict_step, then forward)."
    )


def check_ignore_index(value: Any, owner: str) -> tuple[int, ...]:
    """``ignore_index`` as a tuple of labels (``None``: none given)."""
    if value is None:
        return ()
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ConfigurationError(
            f"{owner}(ignore_index={value!r}): ignore_index must be an integer label or a list of them (targets "
            "with that label count in no metric, as torchmetrics' ignore_index), e.g. ignore_index=255; [] ignores "
            "none; None reads it from the module (see the docs)."
        )
    return tuple(int(v) for v in values)


def _labels_of(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (int(value),)
    ints = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ints and value:
        return tuple(int(v) for v in value)
    return None


def ignore_index_of(module: nn.Module) -> tuple[tuple[int, ...], list[str]]:
    """The labels a module says plainly that it ignores, and where each was read:

    * its own ``ignore_index`` attribute (an int or a list of ints);
    * ``hparams["ignore_index"]`` (from ``save_hyperparameters``);
    * the ``ignore_index`` attribute (an int) of each of its direct submodules, such as a loss
      ``torch.nn.CrossEntropyLoss(ignore_index=250)`` / ``NLLLoss`` or a torchmetrics metric built with
      ``ignore_index=``; ``-100``, the default of torch's losses, is not read from a submodule.
    """
    found: dict[int, None] = {}
    sources: list[str] = []
    name = type(module).__name__
    own = _labels_of(getattr(module, "ignore_index", None))
    if own:
        found.update(dict.fromkeys(own))
        sources.append(f"{name}.ignore_index")
    hparams = getattr(module, "hparams", None)
    try:
        from_hparams = _labels_of(hparams.get("ignore_index")) if isinstance(hparams, Mapping) else None
    except Exception:
        from_hparams = None
    if from_hparams:
        found.update(dict.fromkeys(from_hparams))
        sources.append(f"{name}.hparams['ignore_index']")
    children = getattr(module, "named_children", None)
    for child_name, child in children() if callable(children) else ():
        label = getattr(child, "ignore_index", None)
        if isinstance(label, int) and not isinstance(label, bool) and label != -100:
            found[int(label)] = None
            sources.append(f"{name}.{child_name}.ignore_index ({type(child).__name__})")
    return tuple(found), sources
