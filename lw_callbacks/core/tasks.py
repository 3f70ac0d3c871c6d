"""What ``LogPredictionSamples`` knows about each kind of task: which one a batch is, how to check its
first batch, and what goes into the W&B tables and images for it.

Tasks: ``classification`` (labels, logits, probabilities), ``segmentation`` (class-id masks or
per-pixel scores over an image), ``detection`` (torchvision-style lists of ``boxes`` / ``labels`` /
``scores`` dicts), ``text`` (strings, or token ids with a ``decode`` callable), ``audio`` (waveforms
with a ``sample_rate``), ``regression`` (float targets and predictions) and ``reconstruction``
(an output shaped like the input image; its own module, :mod:`lw_callbacks.core.reconstruction`).
:data:`TASKS` is the one list of them. Only the chosen rows of a batch are ever copied; everything
kept is O(num_samples).

Ignored labels (``ignore_index``, as torchmetrics' argument of that name): targets with one of them
count in no metric and no class list; in masks they are stored as :data:`IGNORED` and drawn as the
class ``"ignored"``.
"""

from __future__ import annotations

import importlib
import math
import mmap
import os
import tempfile
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor

from lw_callbacks._errors import ConfigurationError

__all__ = ["TASKS", "TaskOptions"]

TASKS = ("auto", "classification", "segmentation", "detection", "text", "audio", "regression", "reconstruction")
BOX_FORMATS = ("xyxy", "cxcywh")
AUDIO_KEYS = ("audio", "audios", "waveform", "waveforms", "wav", "speech")
ANNOTATED = ("segmentation", "detection")  # tasks whose samples carry masks / boxes on the image
_MAX_MASK_CLASSES = 256  # W&B stores masks as 8-bit PNGs
IGNORED = 255  # the mask id of ignored pixels (any ignore_index is stored as this id)
IGNORED_NAME = "ignored"
_IGNORED_COLOUR = np.array([128, 128, 128], dtype=np.uint8)  # neutral grey in the colour masks
_BOX_TOLERANCE = 1.0  # pixels a ground-truth box may stick out of its image (rounding)
_PALETTE = np.array(
    [
        [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
        [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0],
        [255, 215, 180], [0, 0, 128],
    ],
    dtype=np.uint8,
)


class InputError(ConfigurationError):
    """A batch or step output ``LogPredictionSamples`` cannot read: a configuration error, raised at the
    first batch (or, first seen after training began, warned about once)."""


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
    _audio_dir: Any = field(default=None, repr=False)
    ignored: frozenset[int] = field(default=frozenset(), repr=False)  # resolved: given, or read from the module

    def __post_init__(self) -> None:
        owner = self.owner
        if self.task not in TASKS:
            raise ConfigurationError(
                f"{owner}(task={self.task!r}): task must be one of {list(TASKS)}; 'auto' tells it from the first "
                "batch and step output."
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
        if self.task == "audio" and rate is None:
            raise ConfigurationError(
                f"{owner}(task='audio'): the sample rate is missing; pass sample_rate=<samples per second>, e.g. "
                "sample_rate=16000."
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

    def resolve(self, module: Any = None) -> None:
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

    def audio_dir(self) -> str:
        if self._audio_dir is None:
            self._audio_dir = tempfile.TemporaryDirectory(prefix="lw-audio-")
        return str(self._audio_dir.name)


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


def ignore_index_of(module: Any) -> tuple[tuple[int, ...], list[str]]:
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


# ---------------------------------------------------------------------- telling the task
def is_detections(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(d, Mapping) and "boxes" in d for d in v)


def is_strings(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(s, str) for s in v)


def _is_waveforms(x: Any) -> bool:
    if isinstance(x, (Tensor, np.ndarray)):
        return x.dtype.kind == "f" if isinstance(x, np.ndarray) else bool(x.is_floating_point())
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(a, (Tensor, np.ndarray)) for a in x)


def guess(opts: TaskOptions, x: Any, y: Any, out: Any, x_key: str | None, image: bool) -> str:
    """The task of a first batch: ``opts.task`` unless it is ``"auto"``."""
    if opts.task != "auto":
        return opts.task
    if is_detections(y) or is_detections(out):
        return "detection"
    if x_key in AUDIO_KEYS or (opts.sample_rate is not None and _is_waveforms(x) and not image):
        return "audio"
    if is_strings(x) or (opts.decoder is not None and isinstance(x, Tensor) and not x.is_floating_point()):
        return "text"
    from lw_callbacks.core import reconstruction  # its own module; it reads tasks' names

    if image and reconstruction.looks_like(x, y, out):
        return "reconstruction"
    if image and any(isinstance(v, Tensor) and v.ndim >= 3 for v in (y, out)):
        return "segmentation"
    if isinstance(y, Tensor) and y.is_floating_point() and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        finite = y[torch.isfinite(y)]
        if finite.numel() and bool((finite != finite.round()).any()):
            return "regression"
    return "classification"


def check_audio(x: Any, opts: TaskOptions, stage: str) -> None:
    if opts.sample_rate is None:
        raise InputError(
            f"{opts.owner}: the {stage} inputs are audio ({describe(x)}) but the sample rate is missing; "
            f"pass {opts.owner}(sample_rate=<samples per second>), e.g. sample_rate=16000."
        )
    rows = x if isinstance(x, (list, tuple)) else [x[i] for i in range(len(x))]
    for i, a in enumerate(rows):
        shape = tuple(a.shape) if isinstance(a, (Tensor, np.ndarray)) else None
        if shape is None or not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) or shape[-1] < 1:
            raise InputError(
                f"{opts.owner}(task='audio'): sample {i} of the first {stage} batch is a waveform of shape "
                f"{shape} (batch {describe(x)}); expected one channel, 1-D (T,) or (1, T): a batch (N, T) or "
                "(N, 1, T), or a list of such waveforms."
            )


def check_text(x: Any, opts: TaskOptions, stage: str) -> None:
    if is_strings(x):
        return
    if isinstance(x, Tensor) and not x.is_floating_point() and x.ndim == 2:
        if opts.decoder is None:
            raise InputError(
                f"{opts.owner}(task='text'): the {stage} inputs are token ids ({describe(x)}) and no "
                "decode is given; pass decode=<tokenizer.decode> (or its dotted import path) to show them as text."
            )
        return
    raise InputError(
        f"{opts.owner}(task='text'): the {stage} inputs are a {describe(x)}; expected a list of strings, "
        "or token ids (N, L) with decode=."
    )


# ---------------------------------------------------------------------- text and audio cells
def decode_rows(rows: Any, opts: TaskOptions) -> list[str] | None:
    """Strings for a few rows: given as strings, or integer token ids decoded with ``decode``."""
    if is_strings(rows):
        return list(rows)
    dec = opts.decoder
    if dec is not None and isinstance(rows, Tensor) and not rows.is_floating_point() and rows.ndim == 2:
        return [str(dec(r)) for r in rows.detach().cpu().tolist()]
    return None


def waveform(sample: Any) -> np.ndarray:
    arr = sample.detach().float().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample, np.float32)
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.float32)


def write_wav(sample: Any, sid: int, opts: TaskOptions) -> str:
    """A 16-bit PCM WAV of one waveform, written once per sample id (W&B reads it from the path)."""
    assert opts.sample_rate is not None
    a = waveform(sample)
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak > 1.0:
        a = a / peak  # out-of-range floats are scaled, as a player would clip them otherwise
    path = os.path.join(opts.audio_dir(), f"sample-{sid}.wav")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(opts.sample_rate)
        w.writeframes((np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
    return path


# ---------------------------------------------------------------------- regression
def check_regression(value: Tensor | None, y: Any, n: int, stage: str, owner: str = "LogPredictionSamples") -> None:
    for what, v in (("step output", value), ("target", y)):
        if v is None:
            continue
        if not isinstance(v, Tensor) or not (v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1)) or v.shape[0] != n:
            raise InputError(
                f"{owner}(task='regression'): the {stage} {what} is a {describe(v)} for a batch of {n}; "
                "expected one number per example, (N,) or (N, 1)."
            )


def floats(v: Any) -> list[float]:
    t = v.detach().float().cpu().reshape(-1) if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v)).reshape(-1)
    return [float(a) for a in t.tolist()]


# ---------------------------------------------------------------------- segmentation
def image_hw(sample: Any) -> tuple[int, int]:
    """Height and width of one image (tensor / array in any accepted layout, or PIL)."""
    if type(sample).__module__.startswith("PIL."):
        w, h = sample.size
        return int(h), int(w)
    shape = tuple(sample.shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return shape[1], shape[2]
    if shape[-1] in (1, 3, 4):
        return shape[0], shape[1]
    return shape[1], shape[2]


def _mask_hw(v: Tensor) -> tuple[int, int]:
    return int(v.shape[-2]), int(v.shape[-1])


def check_segmentation(
    x: Any,
    y: Any,
    value: Tensor | None,
    n: int,
    stage: str,
    class_names: list[str] | None,
    ignored: frozenset[int] = frozenset(),
    owner: str = "LogPredictionSamples",
) -> None:
    for i in range(n):
        hw = image_hw(x[i])
        for what, v in (("target mask", y), ("predicted mask", value)):
            if v is None:
                continue
            if not isinstance(v, Tensor) or v.ndim not in (3, 4) or v.shape[0] != n:
                raise InputError(
                    f"{owner}(task='segmentation'): the {stage} {what}s are a {describe(v)} for a batch "
                    f"of {n} images; expected class ids (N, H, W) or scores (N, C, H, W)."
                )
            if _mask_hw(v) != hw:
                raise InputError(
                    f"{owner}(task='segmentation'): sample {i} of the first {stage} batch: the {what} is "
                    f"{_mask_hw(v)[0]}x{_mask_hw(v)[1]} but the image is {hw[0]}x{hw[1]} (inputs {describe(x)}, "
                    f"{what}s {describe(v)}); a mask must have its image's height and width."
                )
        if y is None and value is None:
            break
    tops = []
    if isinstance(value, Tensor) and value.ndim == 4 and value.shape[1] > 1:
        tops.append(("scores", int(value.shape[1]) - 1))
    for what, v in (("target", y), ("prediction", value)):
        if isinstance(v, Tensor):
            ids = class_ids(v)
            if ignored and what == "target":
                ids = ids[~torch.isin(ids, torch.tensor(sorted(ignored), dtype=ids.dtype, device=ids.device))]
            top = int(ids.max()) if ids.numel() else 0
            tops.append((what, top))
            if ignored and top >= IGNORED:
                raise InputError(
                    f"{owner}(ignore_index={sorted(ignored)}): the first {stage} batch holds {what} class "
                    f"{top}; with ignored labels, masks hold classes 0..{IGNORED - 1} ({IGNORED} stands for the "
                    "ignored pixels)."
                )
    for what, top in tops:
        if top >= _MAX_MASK_CLASSES:
            raise InputError(
                f"{owner}(task='segmentation'): the first {stage} batch holds {what} class {top}; W&B "
                f"masks hold at most {_MAX_MASK_CLASSES} classes (ids 0..255)."
            )
        if class_names is not None and top >= len(class_names):
            raise InputError(
                f"{owner}(class_names=<{len(class_names)} names>): the first {stage} batch holds "
                f"{what} masks up to class {top}, which needs at least {top + 1} class names. Pass one name per "
                "class in id order, or class_names=None to show the numbers."
            )


def class_ids(v: Tensor) -> Tensor:
    """Class-id masks ``(k, H, W)`` of a few rows: ids as given, or the argmax / threshold of scores."""
    v = v.detach()
    if v.ndim == 4:
        if v.shape[1] == 1:
            v = v[:, 0]
        else:
            return v.argmax(dim=1)
    if v.is_floating_point():
        finite = torch.isfinite(v)
        if bool(finite.all()) and bool((v == v.round()).all()) and bool((v >= 0).all()):
            return v.long()
        p = v if bool(((v >= 0) & (v <= 1)).all()) else torch.sigmoid(v)
        return (p > 0.5).long()
    if v.dtype == torch.bool:
        return v.long()
    return v


def mask_array(v: Tensor) -> np.ndarray:
    return class_ids(v).cpu().numpy().astype(np.uint8)  # ids < 256: checked at the first batch


def mask_rows(v: Tensor, rows: Sequence[int]) -> np.ndarray:
    """``mask_array(v[rows])`` in its own memory mapping (:func:`off_heap`), made without copying the
    rows first: scores ``(N, C, H, W)`` are reduced one row at a time (``argmax`` on the CPU written to
    a mapping too) and integer / boolean ids are converted as they are copied, so capturing a sample
    puts nothing of a row's size on the ``malloc`` heap among the batches'."""
    v = v.detach()
    rows = list(rows)
    h, w = _mask_hw(v)
    out = off_heap_empty((len(rows), h, w), np.uint8)
    dst = torch.from_numpy(out)
    if v.ndim == 4 and v.shape[1] > 1:
        scratch = torch.from_numpy(off_heap_empty((h, w), np.int64)) if v.device.type == "cpu" else None
        for j, i in enumerate(rows):
            if scratch is not None:
                dst[j].copy_(torch.argmax(v[i], dim=0, out=scratch))
            else:
                dst[j].copy_(v[i].argmax(dim=0))
        return out
    ids = v[:, 0] if v.ndim == 4 else v
    if ids.is_floating_point():  # whole numbers, probabilities or logits: told from these rows together
        index = torch.as_tensor(rows, dtype=torch.long, device=ids.device)
        out[...] = mask_array(ids.index_select(0, index))
        return out
    for j, i in enumerate(rows):
        dst[j].copy_(ids[i])  # as ``.long()`` then ``astype(uint8)``: booleans 0 / 1, ids as given
    return out


def truth_mask(y: Tensor, i: int, ignored: frozenset[int]) -> np.ndarray:
    """Row ``i`` of the target masks as uint8 class ids in its own mapping, ignored labels as :data:`IGNORED`."""
    if not ignored:
        return mask_rows(y, [i])[0]
    ids = class_ids(y[i : i + 1])[0]
    out = off_heap_empty(tuple(ids.shape), np.uint8)
    skip = torch.isin(ids, torch.tensor(sorted(ignored), dtype=ids.dtype, device=ids.device))
    out[...] = torch.where(skip, torch.full_like(ids, IGNORED), ids).cpu().numpy().astype(np.uint8)
    return out


def ignored_pixels(truth: np.ndarray) -> int:
    return int(np.count_nonzero(truth == IGNORED))


def mask_iou(truth: np.ndarray, pred: np.ndarray, ignore: bool = False) -> float:
    """Mean IoU over the classes present in the truth or the prediction; with ``ignore``, over the pixels
    whose truth is not :data:`IGNORED` (torchmetrics' ``ignore_index`` convention)."""
    if ignore:
        valid = truth != IGNORED
        truth, pred = truth[valid], pred[valid]
    classes = np.union1d(np.unique(truth), np.unique(pred))
    ious = []
    for c in classes.tolist():
        t, p = truth == c, pred == c
        union = int(np.count_nonzero(t | p))
        if union:
            ious.append(np.count_nonzero(t & p) / union)
    return round(float(np.mean(ious)), 6) if ious else math.nan


def palette(mask: np.ndarray, ignore: bool = False) -> np.ndarray:
    """A colour image of a class-id mask; with ``ignore``, :data:`IGNORED` pixels in neutral grey."""
    ids = mask % len(_PALETTE) if mask.dtype == np.uint8 else mask.astype(np.int64) % len(_PALETTE)
    out = _PALETTE[ids]  # uint8 ids index as they are: no int64 copy of the mask
    if ignore:
        out[mask == IGNORED] = _IGNORED_COLOUR
    return out


# ---------------------------------------------------------------------- detection
@dataclass
class Boxes:
    """One image's boxes in pixels, ``xyxy``."""

    xyxy: np.ndarray  # (K, 4) float
    labels: list[int]
    scores: list[float] | None = None
    ignored: list[bool] | None = None  # ground truth: boxes whose label is ignored (drawn, never matched or counted)

    def counted(self) -> list[int]:
        """Indices of the boxes that count (not ignored)."""
        return [i for i in range(len(self.labels)) if not (self.ignored and self.ignored[i])]

    def num_ignored(self) -> int:
        return sum(self.ignored or [])


def check_detection(
    x: Any, y: Any, out: Any, n: int, stage: str, opts: TaskOptions, class_names: list[str] | None
) -> None:
    """First-batch checks of detection targets and outputs (labels in ``opts.ignored`` need no class name)."""
    for what, v in (("targets", y), ("step output", out)):
        if v is None:
            continue
        if not is_detections(v) or len(v) != n:
            raise InputError(
                f"{opts.owner}(task='detection'): the {stage} {what} is a {describe(v)} for a batch of {n} "
                "images; expected a list of one dict per image with 'boxes' (K, 4) and 'labels' (K,) (and "
                "'scores' (K,) for predictions), as torchvision detection models use."
            )
        for i, d in enumerate(v):
            boxes, labels = d.get("boxes"), d.get("labels")
            k = len(boxes) if boxes is not None else 0
            shape = tuple(boxes.shape) if isinstance(boxes, (Tensor, np.ndarray)) else None
            if shape is None or len(shape) != 2 or shape[1] != 4 or labels is None or len(labels) != k:
                raise InputError(
                    f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: {what} boxes "
                    f"{describe(boxes)} and labels {describe(labels)}; expected 'boxes' (K, 4) and 'labels' (K,)."
                )
            scores = d.get("scores")
            if scores is not None and len(scores) != k:
                raise InputError(
                    f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: {k} boxes but "
                    f"scores {describe(scores)}."
                )
            ids = [int(a) for a in _numbers(labels) if int(a) not in opts.ignored]
            if class_names is not None and ids and max(ids) >= len(class_names):
                raise InputError(
                    f"{opts.owner}(class_names=<{len(class_names)} names>): sample {i} of the first {stage} "
                    f"batch has {what} label {max(ids)}, which needs at least {max(ids) + 1} class names."
                )
            if what == "targets" and k:
                h, w = image_hw(x[i])
                px = to_pixels(boxes, (h, w), opts)
                for j, (x0, y0, x1, y1) in enumerate(px.tolist()):
                    t = _BOX_TOLERANCE
                    if not (-t <= x0 <= x1 <= w + t and -t <= y0 <= y1 <= h + t):
                        given = [round(float(c), 4) for c in _numbers(boxes[j])]
                        fmt = f"box_format={opts.box_format!r}, normalized_boxes={opts.normalized_boxes}"
                        raise InputError(
                            f"{opts.owner}(task='detection'): sample {i} of the first {stage} batch: "
                            f"ground-truth box {j} {given} is ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}) in pixels "
                            f"under {fmt}, outside the {w}x{h} (width x height) image. Pass the box_format / "
                            "normalized_boxes your boxes use."
                        )


def _numbers(v: Any) -> list[float]:
    if isinstance(v, Tensor):
        return [float(a) for a in v.detach().cpu().reshape(-1).tolist()]
    return [float(a) for a in np.asarray(v, dtype=np.float64).reshape(-1).tolist()]


def to_pixels(boxes: Any, hw: tuple[int, int], opts: TaskOptions) -> np.ndarray:
    b = np.asarray(_numbers(boxes), dtype=np.float64).reshape(-1, 4)
    if opts.box_format == "cxcywh":
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if opts.normalized_boxes:
        b = b * np.array([hw[1], hw[0], hw[1], hw[0]], dtype=np.float64)
    return b


def read_boxes(d: Mapping[str, Any], hw: tuple[int, int], opts: TaskOptions, predicted: bool) -> Boxes:
    """One image's boxes in pixels; predictions below ``score_threshold`` left out and clipped to the image."""
    px = to_pixels(d["boxes"], hw, opts)
    labels = [int(a) for a in _numbers(d["labels"])]
    scores = _numbers(d["scores"]) if d.get("scores") is not None else None
    if not predicted and opts.ignored:
        return Boxes(px.reshape(-1, 4), labels, scores, [label in opts.ignored for label in labels])
    if predicted:
        keep = [i for i in range(len(labels)) if scores is None or scores[i] >= opts.score_threshold]
        px = px[keep]
        labels = [labels[i] for i in keep]
        scores = [scores[i] for i in keep] if scores is not None else None
        if len(px):
            px = np.clip(px, 0.0, np.array([hw[1], hw[0], hw[1], hw[0]], dtype=np.float64))
    return Boxes(px.reshape(-1, 4), labels, scores)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def matches(truth: Boxes, pred: Boxes, threshold: float = 0.5) -> int:
    """Predictions matched one-to-one to a ground-truth box of the same class at IoU >= ``threshold``,
    greedily by score (the usual detection-metric matching)."""
    order = sorted(range(len(pred.labels)), key=lambda i: -(pred.scores[i] if pred.scores else 0.0))
    used: set[int] = set()
    found = 0
    counted = truth.counted()  # boxes with an ignored label match nothing
    for i in order:
        best, best_j = threshold, -1
        for j in counted:
            if j in used or truth.labels[j] != pred.labels[i]:
                continue
            iou = box_iou(pred.xyxy[i], truth.xyxy[j])
            if iou >= best:
                best, best_j = iou, j
        if best_j >= 0:
            used.add(best_j)
            found += 1
    return found


def box_data(b: Boxes, name: Callable[[int], str]) -> list[dict[str, Any]]:
    out = []
    for i, (x0, y0, x1, y1) in enumerate(b.xyxy.tolist()):
        ignored = bool(b.ignored and b.ignored[i])
        entry: dict[str, Any] = {
            "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
            "domain": "pixel",
            "class_id": b.labels[i],
            "box_caption": IGNORED_NAME if ignored else name(b.labels[i]),
        }
        if b.scores is not None:
            entry["scores"] = {"score": round(b.scores[i], 4)}
            entry["box_caption"] = f"{name(b.labels[i])} {b.scores[i]:.2f}"
        out.append(entry)
    return out


def count_text(labels: Sequence[int], name: Callable[[int], str]) -> str:
    """``"2 circle, 1 square"``: boxes per class (pass only the boxes that count)."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{c} {name(k)}" for k, c in sorted(counts.items())) or "none"


def class_labels(ids: Sequence[int], class_names: list[str] | None, ignored: Sequence[int] = ()) -> dict[int, str]:
    """W&B class labels of masks / boxes: ``class_names`` (or the ids present), and each id of
    ``ignored`` as ``"ignored"``."""
    if class_names is not None:
        labels = dict(enumerate(class_names))
    else:
        labels = {int(i): str(int(i)) for i in sorted(set(ids))}
    labels.update((int(i), IGNORED_NAME) for i in ignored)
    return labels


# ---------------------------------------------------------------------- shared
def off_heap(arr: Any) -> Any:
    """A copy of ``arr`` in its own anonymous memory mapping (any other value, or an array already in one,
    as it is).

    The kept samples live for the whole run and are made while the evaluation loop allocates and
    frees batch-sized tensors. On the ``malloc`` heap, a few small long-lived arrays among those
    batches keep freed batch memory from going back to the system (glibc raises its mmap threshold
    after large frees, so batches land on the heap too): measured, 92 MiB kept after ``validate`` on
    8,000 256x256 masks, against 5 MiB with the samples in their own mappings.
    """
    if not isinstance(arr, np.ndarray) or arr.nbytes == 0 or arr.dtype.hasobject or is_off_heap(arr):
        return arr
    out = off_heap_empty(arr.shape, arr.dtype)
    out[...] = arr
    return out


def off_heap_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """An uninitialised array in its own anonymous memory mapping (see :func:`off_heap`)."""
    count = math.prod(shape)
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(tuple(shape), dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).reshape(tuple(shape))


def is_off_heap(arr: np.ndarray) -> bool:
    """Whether ``arr`` views an anonymous mapping made by :func:`off_heap_empty`."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def describe(obj: Any) -> str:
    if isinstance(obj, (Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple)):
        inner = f" of {type(obj[0]).__name__}" if obj else ""
        return f"{type(obj).__name__} of {len(obj)}{inner}"
    return type(obj).__name__
