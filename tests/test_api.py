"""The public API keeps its word: one error type for bad arguments, read-only options.

* **Bad values**: every public constructor and function, called with each bad value of each argument,
  raises :class:`~lw_callbacks.ConfigurationError` right there (nothing is accepted, nothing is left to
  fail later), never a bare ``TypeError`` / ``AttributeError``, and the message names the argument and
  the class or function called. The table is per kind of argument (``BOOL``, ``SECONDS``, ...); a new
  constructor argument must be added to :data:`ARGUMENTS` (``test_every_argument_is_in_the_table``
  fails until it is), with its bad values, or to :data:`ANY_VALUE` with the reason no value is bad.
* **Options**: every constructor argument is a read-only attribute; setting it after construction
  raises ``AttributeError`` naming the argument and leaves the value as built.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

import lw_callbacks
from lw_callbacks import (
    ConfigurationError,
    LogPredictionSamples,
    MetricSummaries,
    ShareRunDir,
    UploadCheckpoints,
    WatchModel,
    restore_checkpoint,
)
from lw_callbacks.fabric import (
    FabricMetricSummaries,
    FabricPredictionSamples,
    FabricShareRunDir,
    FabricUploadCheckpoints,
    FabricWatchModel,
)
from lw_callbacks.run_dir import shared_run_config

NAN, INF = math.nan, math.inf

# ---------------------------------------------------------------------- bad values, by kind of argument
BOOL = [0, 1, "no", "True", None, 1.0]
INT_GE1 = [0, -1, True, 1.5, "3", None]
INT_GE0 = [-1, True, 1.5, "0", None]
INT_GE0_OR_NONE = [-1, True, 1.5, "3"]
SECONDS = [0, -1, True, "30", NAN, INF, None]  # > 0, finite
SECONDS_GE0 = [-1, True, "30", NAN, INF, None]
PATH_OR_NONE = [3, "", 1.5, ["a"], b"x"]
STR_OR_NONE = [3, "", ["a"], 1.5]
NAMES = ["cat", 3, [3], ["a", 3], [""], {"a": 1}]  # a list of names, not a bare string
PATTERNS = [3, [3], [""], [None], 1.5]  # a pattern or a list of them
STAGES = [None, 3, "train", [], ["validation", "x"], [3], {"validation": 1}]
TASK = ["detect", 3, None, "", ["auto"]]
BOX_FORMAT = ["xywh", 3, None, "", ["xyxy"]]
SCORE = [-0.1, 1.5, "0.3", True, NAN, None]
SAMPLE_RATE = [0, -1, 1.5, "16000", True]
DECODE = [3, "", ["a.b"], 1.5]
PREDICT = [3, "", "reconstruct", ["a.b"], 1.5]
IGNORE_INDEX = ["250", 1.5, True, [250, "255"], [1.5], {250: 1}]
WATCH_LOG = ["none", 3, None, "", True, ["all"]]
BINS = [0, 513, True, 1.5, "64", None, -1]
SUMMARIES = [3, "val_acc", {}, {"val_acc": "best"}, {"": "max"}, {3: "max"}, {"val_acc": 3}, {"_step": "max"},
             {"*": "max"}, {"val_acc": ""}, {"val_acc": "none,max"}, ["val_acc"], {"trainer/global_step": "min"}]
HIDDEN = [3, "val_acc", [3], [""], None, 1.5]
TEMPLATE = [3, "", "a/b", "{nope}", ["x"], "a b"]
ALIASES = [3, None, ["latest"], ["a b"], [3], "best", "v1", {"a": 1}, ["x" * 129], ["step-3"]]
CHECKPOINTS = ["mc", [1], [], 3, ["mc"], [ModelCheckpoint(), "x"], {"a": 1}]
MODE = ["best", 3, None, "MIN", ["min"]]
REF = [3, "", None, "a/b/c/d:x", "name:", ["x"], "a//b:c"]
LOGGER = [None, 3, "wandb", object()]
METADATA = [3, "x", [1]]


@dataclass(frozen=True)
class Call:
    """How to call one public constructor or function with one argument replaced."""

    name: str  # what the message must name: the class or function called
    make: Callable[..., Any]

    def __call__(self, argument: str, value: Any) -> Any:
        return self.make(**{argument: value})


def _upload_checkpoint(**kwargs: Any) -> Any:
    call = {"fabric": None, "path": "model.ckpt", **kwargs}
    return FabricUploadCheckpoints().upload_checkpoint(**call)


CALLS: dict[str, Call] = {
    "LogPredictionSamples": Call("LogPredictionSamples", LogPredictionSamples),
    "MetricSummaries": Call("MetricSummaries", MetricSummaries),
    "WatchModel": Call("WatchModel", WatchModel),
    "UploadCheckpoints": Call("UploadCheckpoints", UploadCheckpoints),
    "ShareRunDir": Call("ShareRunDir", ShareRunDir),
    "FabricPredictionSamples": Call("FabricPredictionSamples", FabricPredictionSamples),
    "FabricMetricSummaries": Call(
        "FabricMetricSummaries", lambda **kw: FabricMetricSummaries(**{"summaries": {"val_acc": "max"}, **kw})
    ),
    "FabricWatchModel": Call("FabricWatchModel", FabricWatchModel),
    "FabricUploadCheckpoints": Call("FabricUploadCheckpoints", FabricUploadCheckpoints),
    "FabricShareRunDir": Call("FabricShareRunDir", FabricShareRunDir),
    "restore_checkpoint": Call("restore_checkpoint", lambda **kw: restore_checkpoint(**{"ref": "m:best", **kw})),
    "shared_run_config": Call("shared_run_config", lambda **kw: shared_run_config(**{"logger": None, **kw})),
    "FabricUploadCheckpoints.upload_checkpoint": Call(
        "FabricUploadCheckpoints.upload_checkpoint", _upload_checkpoint
    ),
}

_SAMPLES = {
    "num_samples": INT_GE1, "key": [*STR_OR_NONE[:2], None, ["a"]], "class_names": NAMES, "log_images": BOOL,
    "log_table": BOOL, "log_scores": BOOL, "input_key": STR_OR_NONE, "target_key": STR_OR_NONE,
    "output_key": STR_OR_NONE, "task": TASK, "box_format": BOX_FORMAT, "normalized_boxes": BOOL,
    "score_threshold": SCORE, "sample_rate": SAMPLE_RATE, "decode": DECODE, "predict": PREDICT,
    "ignore_index": IGNORE_INDEX,
}
_WATCH = {"log": WATCH_LOG, "log_freq": INT_GE1, "log_graph": BOOL, "include": PATTERNS, "exclude": PATTERNS,
          "bins": BINS}
_UPLOAD = {"name": TEMPLATE, "aliases": ALIASES, "flush_timeout": SECONDS, "staging_dir": PATH_OR_NONE,
           "progress_bar": BOOL}

#: callable -> argument -> bad values. Add a new argument here (with its bad values).
ARGUMENTS: dict[str, dict[str, list[Any]]] = {
    "LogPredictionSamples": {
        **_SAMPLES, "every_n_epochs": INT_GE1, "stages": STAGES, "log_sanity_check": BOOL,
        "dataloader_idx": INT_GE0,
    },
    "FabricPredictionSamples": _SAMPLES,
    "MetricSummaries": {
        "summaries": SUMMARIES, "from_callbacks": BOOL, "hidden": HIDDEN, "dataloader_suffixes": BOOL,
        "record_best_step": BOOL, "warn_missing": BOOL,
    },
    "FabricMetricSummaries": {
        "summaries": [*SUMMARIES, None], "hidden": HIDDEN, "record_best_step": BOOL, "warn_missing": BOOL,
    },
    "WatchModel": _WATCH,
    "FabricWatchModel": _WATCH,
    "UploadCheckpoints": {**_UPLOAD, "checkpoints": CHECKPOINTS},
    "FabricUploadCheckpoints": {**_UPLOAD, "monitor": STR_OR_NONE, "mode": MODE},
    "ShareRunDir": {"checkpoints_in_run_dir": BOOL, "set_env": BOOL, "apply_config_to_hparams": BOOL},
    "FabricShareRunDir": {"set_env": BOOL},
    "restore_checkpoint": {"ref": REF, "run_dir": PATH_OR_NONE, "root": PATH_OR_NONE, "timeout": SECONDS_GE0},
    "shared_run_config": {"logger": LOGGER, "timeout": SECONDS},
    "FabricUploadCheckpoints.upload_checkpoint": {
        "path": [3, "", None, 1.5], "step": INT_GE0_OR_NONE, "epoch": INT_GE0_OR_NONE, "aliases": ALIASES,
        "metadata": METADATA,
    },
}

#: Arguments for which no value is refused at the call, with the reason.
ANY_VALUE: dict[tuple[str, str], str] = {
    ("FabricUploadCheckpoints.upload_checkpoint", "fabric"): "a Fabric; checked by the call's W&B logger lookup",
    ("FabricUploadCheckpoints.upload_checkpoint", "score"): "any number or one-element tensor; others mean no score",
}

CASES = [
    pytest.param(name, argument, value, id=f"{name}-{argument}-{value!r}"[:90])
    for name, arguments in ARGUMENTS.items()
    for argument, values in arguments.items()
    for value in values
]


def test_the_matrix_has_at_least_150_bad_values() -> None:
    assert len(CASES) >= 150, len(CASES)


def _signature(name: str) -> inspect.Signature:
    if name == "FabricUploadCheckpoints.upload_checkpoint":
        return inspect.signature(FabricUploadCheckpoints.upload_checkpoint)
    obj = {**vars(lw_callbacks.fabric), "shared_run_config": shared_run_config}.get(name) or getattr(lw_callbacks, name)
    return inspect.signature(obj)


def test_every_public_callable_is_in_the_table() -> None:
    public = {n for n in lw_callbacks.__all__ if n not in ("ConfigurationError", "LWCallbacksWarning", "__version__")}
    public |= set(lw_callbacks.fabric.__all__) | {"shared_run_config"}
    assert public <= set(ARGUMENTS), sorted(public - set(ARGUMENTS))


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_every_argument_is_in_the_table(name: str) -> None:
    """A new argument fails here until its bad values are listed (or ANY_VALUE says why there are none)."""
    parameters = [p for p in _signature(name).parameters if p != "self"]
    missing = [p for p in parameters if p not in ARGUMENTS[name] and (name, p) not in ANY_VALUE]
    assert not missing, f"{name}: add the bad values of {missing} to ARGUMENTS in tests/test_api.py"


def _problem(call: Call, argument: str, value: Any) -> str | None:
    """What is wrong with how ``call`` treats ``argument=value``; ``None`` when it is refused as it should be."""
    try:
        call(argument, value)
    except ConfigurationError as err:
        message = str(err)
        if argument not in message:
            return f"the message does not name {argument!r}: {message}"
        if call.name not in message:
            return f"the message does not name {call.name!r}: {message}"
        return None
    except (TypeError, AttributeError) as err:
        return f"a bare {type(err).__name__}: {err}"
    except Exception as err:  # any other type is a problem too
        return f"{type(err).__name__}, not ConfigurationError: {err}"
    return "accepted"


@pytest.mark.parametrize(("name", "argument", "value"), CASES)
def test_a_bad_value_is_refused_at_the_call_naming_the_argument_and_the_callable(
    name: str, argument: str, value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written, but if it were, it lands here
    problem = _problem(CALLS[name], argument, value)
    assert problem is None, f"{name}({argument}={value!r}): {problem}"
    assert list(cwd.iterdir()) == []  # refused before any I/O


def test_the_matrix_sees_each_kind_of_problem() -> None:
    """Each outcome the matrix refuses is reported (so an all-pass result means something)."""
    assert _problem(CALLS["WatchModel"], "log_freq", 5) == "accepted"

    def bare(**kwargs: Any) -> None:
        raise TypeError("'NoneType' object is not iterable")

    def unnamed(**kwargs: Any) -> None:
        raise ConfigurationError("bad value")

    assert (_problem(Call("f", bare), "x", None) or "").startswith("a bare TypeError")
    assert (_problem(Call("f", unnamed), "x", None) or "").startswith("the message does not name 'x'")


def test_a_single_model_checkpoint_is_a_list_of_one() -> None:
    mc = ModelCheckpoint(monitor="val_loss")
    assert UploadCheckpoints(checkpoints=mc).checkpoints == [mc]


# ---------------------------------------------------------------------- options are read-only
#: callable -> constructor argument -> the attribute that reads it back (when not the same name)
RENAMED = {("WatchModel", "log"): "log_mode", ("FabricWatchModel", "log"): "log_mode"}
CLASSES = [n for n in ARGUMENTS if n[0].isupper() and "." not in n]


def _built(name: str) -> Any:
    return CALLS[name].make()


@pytest.mark.parametrize("name", CLASSES)
def test_every_option_is_read_only_after_construction(name: str) -> None:
    obj = _built(name)
    for argument in ARGUMENTS[name]:
        attribute = RENAMED.get((name, argument), argument)
        before = getattr(obj, attribute)
        for value in [*ARGUMENTS[name][argument][:2], before]:  # invalid ones, and even the same value
            with pytest.raises(AttributeError, match=rf"{name}\.{attribute} is read-only.*{attribute}="):
                setattr(obj, attribute, value)
        assert getattr(obj, attribute) == before or (before != before)  # unchanged (NaN aside)
        with pytest.raises(AttributeError, match="read-only"):
            delattr(obj, attribute)


def test_share_run_dir_results_stay_assignable() -> None:
    """What ``ShareRunDir`` found (the run folder, id, name, config) is a result, not an option."""
    share = ShareRunDir()
    share.run_id = "abc"
    share.config = {"lr": 0.1}
    assert (share.run_id, share.config) == ("abc", {"lr": 0.1})


def test_the_read_only_check_sees_a_settable_option() -> None:
    """A plain attribute passes ``setattr``: the check above would report it."""

    class Plain:
        log_freq = 1

    obj = Plain()
    with pytest.raises(pytest.fail.Exception), pytest.raises(AttributeError):
        obj.log_freq = 0


# ---------------------------------------------------------------------- saved state survives versions
DATA = Path(__file__).parent / "data"
STATEFUL: dict[str, Callable[[], Any]] = {
    "UploadCheckpoints": UploadCheckpoints,
    "MetricSummaries": lambda: MetricSummaries({"val_loss": "min"}),
    "FabricUploadCheckpoints": FabricUploadCheckpoints,
    "FabricMetricSummaries": lambda: FabricMetricSummaries({"val_loss": "min"}),
}


def _saved(version: int, name: str) -> dict[str, Any]:
    """The state of ``name`` in the saved file of that format version (written by a real fit)."""
    import torch

    states = torch.load(DATA / f"callback_states_v{version}.pt", weights_only=True)
    trainer_name = name.removeprefix("Fabric")
    return next(v for k, v in states.items() if k.startswith(trainer_name))


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_saved_state_without_version_or_of_this_release_loads(name: str, version: int) -> None:
    from lw_callbacks._state import FORMAT_KEY, FORMAT_VERSION

    saved = _saved(version, name)
    assert (FORMAT_KEY in saved) == (version > 0)
    callback = STATEFUL[name]()
    callback.load_state_dict(saved)
    again = callback.state_dict()
    assert again[FORMAT_KEY] == FORMAT_VERSION  # what is saved next carries the version
    assert {k: again[k] for k in saved if k != FORMAT_KEY} == {k: v for k, v in saved.items() if k != FORMAT_KEY}
    # a field added since the file was written loads at its default, as in a fresh callback
    fresh = STATEFUL[name]().state_dict()
    assert {k: v for k, v in again.items() if k not in saved} == {k: fresh[k] for k in again if k not in saved}
    assert again != STATEFUL[name]().state_dict()  # the file's content was loaded, not left empty


@pytest.mark.parametrize("name", sorted(STATEFUL))
@pytest.mark.parametrize("version", [2, 99, "1", None, True])
def test_a_state_of_an_unknown_future_version_is_refused_clearly(name: str, version: Any) -> None:
    from lw_callbacks._state import FORMAT_KEY

    saved = {**_saved(1, name), FORMAT_KEY: version}
    callback = STATEFUL[name]()
    with pytest.raises(ConfigurationError, match=rf"^{name}\.load_state_dict: .*format version {version!r}.*Upgrade"):
        callback.load_state_dict(saved)
    with pytest.raises(ConfigurationError, match=rf"^{name}\.load_state_dict: the saved state is a list"):
        callback.load_state_dict([1])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the shared cores name the class built
def test_fabric_classes_name_themselves_in_core_errors_and_warnings() -> None:
    """The cores are shared, so their messages come from one place: each names the class the user built."""
    import torch
    from torch import nn

    from lw_callbacks import LWCallbacksWarning
    from lw_callbacks.core.tasks.audio import check_audio

    watch = FabricWatchModel(include=["nothing.*"])
    with pytest.warns(LWCallbacksWarning, match=r"^FabricWatchModel: these patterns match no trainable parameter"):
        watch.core.select(nn.Linear(2, 2))
    trainer_watch = WatchModel(include=["nothing.*"])
    with pytest.warns(LWCallbacksWarning, match=r"^WatchModel: these patterns"):
        trainer_watch.core.select(nn.Linear(2, 2))

    samples = FabricPredictionSamples()
    with pytest.raises(ConfigurationError, match=r"^FabricPredictionSamples: cannot read a batch of type int"):
        samples.core.read_batch("validation", 3, None)
    with pytest.raises(ConfigurationError, match=r"^LogPredictionSamples: cannot read a batch of type int"):
        LogPredictionSamples()._core.read_batch("validation", 3, None)
    audio = FabricPredictionSamples(task="audio", sample_rate=16000)
    with pytest.raises(ConfigurationError, match=r"^FabricPredictionSamples\(task='audio'\): sample 0"):
        check_audio(torch.zeros(2, 3, 4), audio.options, "validation")
