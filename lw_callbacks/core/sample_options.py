"""The options of ``LogPredictionSamples`` and ``FabricPredictionSamples``: one frozen
:class:`SampleOptions`, checked once at construction and shared by the callback and its core, and
the resolution of ``decode`` / ``predict`` paths and ignored labels at ``setup``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lw_callbacks._errors import ConfigurationError, Option, check_bool, check_int, check_names, check_str
from lw_callbacks.core import tasks
from lw_callbacks.core.tasks import IGNORED_NAME

__all__ = [
    "BOX_FORMATS", "STAGES", "SampleOptions", "SampleOptionsView", "arguments", "check_ignore_index", "check_predict",
    "ignore_index_of", "resolve_dotted",
]

STAGES = ("validation", "test", "predict")
BOX_FORMATS = ("xyxy", "cxcywh")


@dataclass(frozen=True)
class SampleOptions:
    """The checked options of one prediction-samples callback (the constructor arguments, as documented
    on ``LogPredictionSamples``); ``class_names`` becomes a list, ``stages`` a tuple of each stage once.

    Raises:
        ConfigurationError: for any value the callback does not accept, naming the argument and the fix.
    """

    num_samples: int = 16
    every_n_epochs: int = 1
    key: str = "predictions"
    class_names: Sequence[str] | None = None
    log_images: bool = True
    log_table: bool = True
    log_scores: bool = True
    stages: Sequence[str] | str = ("validation",)
    log_sanity_check: bool = False
    input_key: str | None = None
    target_key: str | None = None
    output_key: str | None = None
    dataloader_idx: int = 0
    task: str = "auto"
    box_format: str = "xyxy"
    normalized_boxes: bool = False
    score_threshold: float = 0.3
    sample_rate: int | None = None
    decode: Callable[[list[int]], str] | str | None = None
    predict: Callable[[Any, Any], Any] | str | None = None
    ignore_index: int | Sequence[int] | None = None
    owner: str = field(default="LogPredictionSamples", compare=False)  # the class the user built, in messages

    def __post_init__(self) -> None:
        self._check_task_arguments()
        owner = self.owner
        check_int(owner, "num_samples", self.num_samples, minimum=1, example="16")
        check_int(owner, "every_n_epochs", self.every_n_epochs, minimum=1, example="1")
        object.__setattr__(self, "stages", _stages(self.stages, owner))
        check_str(owner, "key", self.key, example="'predictions'")
        if self.class_names is not None:
            names = check_names(owner, "class_names", self.class_names, example="['cat', 'dog']")
            object.__setattr__(self, "class_names", list(names or ()))
        check_int(owner, "dataloader_idx", self.dataloader_idx, minimum=0, example="0")
        for flag in ("log_images", "log_table", "log_scores", "log_sanity_check"):
            check_bool(owner, flag, getattr(self, flag))
        for name in ("input_key", "target_key", "output_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(
                    f"{owner}({name}={value!r}): `{name}` must be a key of your dict batches / step "
                    f"outputs (a non-empty string), or None to use the usual names."
                )

    def _check_task_arguments(self) -> None:
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
        object.__setattr__(self, "score_threshold", float(score))
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
        check_predict(self.predict, owner)
        check_ignore_index(self.ignore_index, owner)
        if self.task in tasks.TASKS:
            tasks.TASKS[self.task].check_options(self)  # what the chosen task itself needs

    def resolve(self, module: nn.Module | None = None) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None,
                                                                 frozenset[int]]:
        """``(decode, predict, ignored labels)`` for a fit: dotted paths imported, and the ignored labels
        ``ignore_index`` as given or (``None``) what ``module`` says plainly (:func:`ignore_index_of`).

        Raises:
            ConfigurationError: for a dotted path that does not import.
        """
        owner = self.owner
        decode = resolve_dotted(self.decode, "decode", _DECODE_HINT, owner) if isinstance(self.decode, str) else (
            self.decode
        )
        predict = resolve_dotted(self.predict, "predict", _PREDICT_HINT, owner) if isinstance(self.predict, str) else (
            self.predict
        )
        if self.ignore_index is not None:
            return decode, predict, frozenset(check_ignore_index(self.ignore_index, owner))
        labels, sources = ignore_index_of(module) if module is not None else ((), [])
        if labels:
            rank_zero_info(
                f"{owner}: targets labelled {sorted(labels)} are ignored (read from {', '.join(sources)}): left out "
                f"of IoU, class lists and matches, and shown as {IGNORED_NAME!r}. Pass ignore_index=<label(s)> to "
                "choose them, or ignore_index=[] to ignore none."
            )
        return decode, predict, frozenset(labels)


def arguments(given: Mapping[str, Any]) -> dict[str, Any]:
    """The options among a constructor's ``locals()`` (its arguments, by name)."""
    names = {f.name for f in fields(SampleOptions)}
    return {k: v for k, v in given.items() if k in names}


def _stages(stages: Any, owner: str) -> tuple[str, ...]:
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
    return tuple(dict.fromkeys(stage_list))


class SampleOptionsView:
    """The options both prediction-samples classes read back, read-only, from their :class:`SampleOptions`."""

    def __init__(self, options: SampleOptions) -> None:
        super().__init__()
        self._options = options

    @property
    def options(self) -> SampleOptions:
        """The checked options (frozen), shared with the core."""
        return self._options

    num_samples = Option[int]("How many examples are logged.", via="options")
    key = Option[str]("The panel section of validation (``key_<stage>`` for the other stages).", via="options")
    class_names = Option["list[str] | None"]("Names for labels ``0 .. C-1`` (a list), or ``None``.", via="options")
    log_images = Option[bool]("Whether the captioned-image panel is logged.", via="options")
    log_table = Option[bool]("Whether the inputs table and the predictions tables are logged.", via="options")
    log_scores = Option[bool]("Whether the table has ``score_<class>`` columns.", via="options")
    input_key = Option["str | None"]("Key of the input in dict batches, or ``None``.", via="options")
    target_key = Option["str | None"]("Key of the target in dict batches, or ``None``.", via="options")
    output_key = Option["str | None"]("Key of the predictions in dict step outputs, or ``None``.", via="options")
    task = Option[str]("The ``task`` argument as given.", via="options")
    box_format = Option[str]("The ``box_format`` argument as given.", via="options")
    normalized_boxes = Option[bool]("The ``normalized_boxes`` argument as given.", via="options")
    score_threshold = Option[float]("Predicted boxes scoring below this are left out.", via="options")
    sample_rate = Option["int | None"]("Samples per second of audio inputs, or ``None``.", via="options")
    decode = Option[Any]("The ``decode`` argument as given (a callable, a dotted path, or ``None``).", via="options")
    predict = Option[Any]("The ``predict`` argument as given (a callable, a dotted path, or ``None``).", via="options")
    ignore_index = Option["int | list[int] | None"](
        "The ``ignore_index`` argument as given (``None``: read from the module).", via="options"
    )


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
