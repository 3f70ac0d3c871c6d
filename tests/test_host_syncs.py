"""No host sync between log steps, proven on the CPU.

A ``TorchFunctionMode`` counts, inside the callbacks' hooks only, every call that makes a GPU wait
for the host or the host for the GPU: reading values (``item``, ``tolist``, ``numpy``, ``bool()``,
``float()``, ``int()``, formatting or printing a tensor), copies to the host (``cpu()``, ``to("cpu")``),
ops whose output size depends on the values (``nonzero``, boolean masks, ``unique``, ``bincount``,
``repeat_interleave`` without ``output_size``), and ``torch.cuda.synchronize``. On the CPU none of
them waits for anything, but each would on a GPU: counting them here proves the claim without one.

The hooks are wrapped so that each call runs inside the mode (measurement only; the callbacks run
unchanged), one fit with all five callbacks, and each callback is checked on the steps where it
logs nothing (zero) and on a log step (counted, and reported).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import make_logger
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.overrides import TorchFunctionMode

from lw_callbacks import LogPredictionSamples, MetricSummaries, ShareRunDir, UploadCheckpoints, WatchModel
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

_READS = {
    Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.cpu, Tensor.__bool__, Tensor.__float__, Tensor.__int__,
    Tensor.__index__, Tensor.__complex__, Tensor.__format__, Tensor.__repr__, Tensor.__array__,
    Tensor.nonzero, torch.nonzero, Tensor.masked_select, torch.masked_select, Tensor.unique, torch.unique,
    torch.bincount, Tensor.bincount,
}
_REPEAT = {torch.repeat_interleave, Tensor.repeat_interleave}
_GETITEM = {Tensor.__getitem__}
_TO = {Tensor.to}


def _is_sync(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func in _READS:
        return True
    if func in _REPEAT:
        return "output_size" not in kwargs
    if func in _GETITEM:  # a boolean mask selects a data-dependent number of elements
        index = args[1] if len(args) > 1 else None
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)
    if func in _TO:  # a copy to another device (the host, here)
        targets = [*args[1:], kwargs.get("device")]
        return any(
            (isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu")
            or (isinstance(t, Tensor) and t.device.type == "cpu")
            for t in targets
        )
    return False


class SyncCounter(TorchFunctionMode):
    """Counts the calls that would synchronise a GPU with the host; ``names`` says which ones."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.names: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.count += 1
            self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


@dataclass
class Call:
    """One hook call: which callback and hook, where in training, and the syncs counted inside it."""

    callback: str
    hook: str
    step: int  # trainer.global_step when the hook ran
    batch_idx: int | None
    lightning_logs: bool  # Lightning sends this training batch's metrics to the loggers
    validating: bool
    sanity: bool
    syncs: int
    names: list[str]


# Every hook a callback can override, so no callback's work goes unmeasured.
_HOOKS = tuple(
    name for name in vars(Callback) if name.startswith("on_") or name in ("setup", "teardown", "state_dict")
)


def _instrument(callback: Callback, calls: list[Call], synchronize_calls: list[int]) -> None:
    """Run each hook ``callback`` overrides inside a fresh :class:`SyncCounter`, and note the call."""
    for hook in _HOOKS:
        if getattr(type(callback), hook, None) is getattr(Callback, hook, None):
            continue
        original = getattr(callback, hook)

        def measured(*args: Any, _original: Callable[..., Any] = original, _hook: str = hook, **kwargs: Any) -> Any:
            trainer = args[0] if args and isinstance(args[0], Trainer) else None
            batch_idx = args[4] if _hook.endswith("batch_end") and len(args) > 4 else None
            before = len(synchronize_calls)
            logs = bool(trainer is not None and trainer._logger_connector.should_update_logs)
            with SyncCounter() as counter:
                result = _original(*args, **kwargs)
            calls.append(
                Call(
                    callback=type(callback).__name__,
                    hook=_hook,
                    step=trainer.global_step if trainer is not None else -1,
                    batch_idx=batch_idx,
                    lightning_logs=logs,
                    validating=bool(trainer is not None and trainer.validating),
                    sanity=bool(trainer is not None and trainer.sanity_checking),
                    syncs=counter.count + len(synchronize_calls) - before,
                    names=counter.names,
                )
            )
            return result

        setattr(callback, hook, measured)


LOG_FREQ = 7
VAL_BATCH = 8


@pytest.fixture(scope="module")
def fit_calls(isolated_dir: Path) -> Iterator[tuple[list[Call], dict[str, Any]]]:
    calls: list[Call] = []
    synchronize_calls: list[int] = []
    original_sync = torch.cuda.synchronize

    def counting_synchronize(*args: Any, **kwargs: Any) -> None:  # counted, never run: no GPU here
        synchronize_calls.append(1)

    callbacks: dict[str, Any] = {
        "ShareRunDir": ShareRunDir(),
        "MetricSummaries": MetricSummaries({"val_loss": "min", "train_loss": "min"}),
        "WatchModel": WatchModel(log="all", log_freq=LOG_FREQ),
        "LogPredictionSamples": LogPredictionSamples(num_samples=4),
        "UploadCheckpoints": UploadCheckpoints(progress_bar=False),
    }
    for cb in callbacks.values():
        _instrument(cb, calls, synchronize_calls)
    torch.cuda.synchronize = counting_synchronize  # measurement: count a call a callback would make
    try:
        trainer = Trainer(
            logger=make_logger(),
            callbacks=[ModelCheckpoint(monitor="val_acc", mode="max"), *callbacks.values()],
            max_epochs=2,
            limit_train_batches=20,
            limit_val_batches=16,
            log_every_n_steps=5,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=2,
            default_root_dir="lightning",
        )
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=VAL_BATCH))
    finally:
        torch.cuda.synchronize = original_sync
    import wandb

    wandb.finish()
    yield calls, callbacks


_PER_STEP = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
             "on_before_optimizer_step", "on_before_zero_grad")


def _training(calls: list[Call], name: str) -> list[Call]:
    """The calls of ``name``'s hooks that run on every training step."""
    return [c for c in calls if c.callback == name and c.hook in _PER_STEP]


def _report(name: str, quiet: list[Call], loud: list[Call]) -> None:
    per_log = sorted({c.syncs for c in loud})
    print(f"\n{name}: {len(quiet)} hook calls on steps that log nothing, "
          f"{sum(c.syncs for c in quiet)} syncs; on a log step: {per_log} "
          f"({sorted(set(n for c in loud for n in c.names))})")


def test_the_counter_sees_each_kind_of_sync() -> None:
    t, v = torch.tensor(1.5), torch.arange(4.0)
    ops: list[Callable[[], Any]] = [
        t.item, v.cpu, v.tolist, v.numpy, lambda: v.to("cpu"), lambda: bool(t), lambda: float(t),
        lambda: int(t), lambda: f"{t}", lambda: v[v > 1], v.nonzero, lambda: torch.bincount(v.long()),
        lambda: torch.repeat_interleave(v, v.long()),
    ]
    for op in ops:
        with SyncCounter() as counter:
            op()
        assert counter.count == 1, op
    with SyncCounter() as counter:  # what stays on the device is not counted
        (v * 2).sum().add_(1)
        torch.repeat_interleave(v, v.long(), output_size=6)
        v.to(torch.float64)
    assert counter.count == 0


def test_watch_model(fit_calls: tuple[list[Call], dict[str, Any]]) -> None:
    calls, _ = fit_calls
    mine = _training(calls, "WatchModel")
    quiet = [c for c in mine if not (c.hook == "on_before_optimizer_step" and c.step % LOG_FREQ == 0)]
    loud = [c for c in mine if c.hook == "on_before_optimizer_step" and c.step % LOG_FREQ == 0]
    _report("WatchModel", quiet, loud)
    assert len(quiet) > 50 and len(loud) >= 5
    assert [c for c in quiet if c.syncs] == []
    assert all(c.syncs > 0 for c in loud)  # the histograms come back to the host, counted: the counter works


def test_metric_summaries(fit_calls: tuple[list[Call], dict[str, Any]]) -> None:
    calls, _ = fit_calls
    mine = [c for c in calls if c.callback == "MetricSummaries" and c.hook == "on_train_batch_end"]
    quiet = [c for c in mine if not c.lightning_logs]
    loud = [c for c in mine if c.lightning_logs]
    _report("MetricSummaries", quiet, loud)
    assert len(quiet) > 20 and len(loud) >= 5
    assert [c for c in quiet if c.syncs] == []
    assert any(c.syncs > 0 for c in loud)  # the best value of `train_loss` is read when Lightning logs it


def test_log_prediction_samples(fit_calls: tuple[list[Call], dict[str, Any]]) -> None:
    calls, callbacks = fit_calls
    positions = callbacks["LogPredictionSamples"]._core.states["validation"].positions
    holding = {p // VAL_BATCH for p in positions}
    mine = [c for c in calls if c.callback == "LogPredictionSamples" and not c.sanity]
    batches = [c for c in mine if c.hook == "on_validation_batch_end"]
    quiet = [c for c in batches if c.batch_idx not in holding] + [c for c in mine if c.hook.startswith("on_train")]
    loud = [c for c in batches if c.batch_idx in holding] + [c for c in mine if c.hook == "on_validation_epoch_end"]
    _report("LogPredictionSamples", quiet, loud)
    assert len([c for c in batches if c.batch_idx not in holding]) >= 20 and loud
    assert [c for c in quiet if c.syncs] == []
    assert any(c.syncs > 0 for c in loud)  # the chosen rows come to the host


def test_upload_checkpoints(fit_calls: tuple[list[Call], dict[str, Any]]) -> None:
    calls, _ = fit_calls
    quiet = _training(calls, "UploadCheckpoints")
    _report("UploadCheckpoints", quiet, [])
    assert len(quiet) > 20  # it has per-batch hooks, and they were measured
    assert [c for c in quiet if c.syncs] == []


def test_share_run_dir(fit_calls: tuple[list[Call], dict[str, Any]]) -> None:
    """ShareRunDir works at setup only: its hooks were measured (setup), none runs per step, so none
    syncs between log steps."""
    calls, _ = fit_calls
    mine = [c for c in calls if c.callback == "ShareRunDir"]
    assert "setup" in {c.hook for c in mine}  # measured: the instrumentation reaches it
    per_step = _training(calls, "ShareRunDir")
    _report("ShareRunDir", per_step, [])
    assert [c for c in per_step if c.syncs] == []
    assert per_step == [], f"ShareRunDir now has per-step hooks: {sorted({c.hook for c in per_step})}"
