"""Conformance: each callback alone, and all five together, on the Trainer settings users bring.

Every row is a Trainer setting or a module pattern seen on existing Trainers. Each row is fitted
(or validated, tested, predicted, tuned) in-process with a small model, once per callback alone
and once with all five, and checked from the run's own records against the invariants a user
would check in the W&B UI:

- no exception, and no warning from this package except the ones the row documents;
- nothing logged during the sanity check or a tuner's trial fits;
- samples after every validation run that should log them, at the same W&B step as the metrics
  of that validation;
- histograms exactly at the optimizer steps ``0, f, 2f, ...``, at the step Lightning logs that
  batch's metrics at;
- every checkpoint file the ModelCheckpoints kept uploaded, each (collection, digest) once;
- for the best checkpoint: ``<monitor>.best_step`` = N, samples at N, and
  ``restore_checkpoint("<collection>:step-N")`` gives back that file; without a monitor,
  ``restore_checkpoint("<collection>:best")`` gives back Lightning's ``best_model_path``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modules
import pytest
import torch
import wandb
from harness import make_logger
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.tuner import Tuner

from lw_callbacks import (
    LogPredictionSamples,
    MetricSummaries,
    ShareRunDir,
    UploadCheckpoints,
    WatchModel,
    restore_checkpoint,
)
from lw_callbacks._compat import is_model_checkpoint, namespace_of
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import RunRecords, find_runs, read_run

STEP = "trainer/global_step"
LOG_FREQ = 2
OURS = ("LogPredictionSamples", "MetricSummaries", "WatchModel", "UploadCheckpoints", "ShareRunDir", "lw_callbacks")
ALONE = ("LogPredictionSamples", "MetricSummaries", "WatchModel", "UploadCheckpoints", "ShareRunDir")


def md5_b64(path: str | Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


# ---------------------------------------------------------------------- rows
@dataclass
class Row:
    """A setting. Factories take the namespace's classes (:func:`modules.api`) or its modules
    (:func:`modules.of`), so each row runs with ``lightning.pytorch`` and with ``pytorch_lightning``."""

    id: str
    trainer: dict[str, Any] = field(default_factory=dict)
    model: str = "DigitsClassifier"  # a class of tests/modules.py (or of lw_callbacks.demo)
    datamodule: Callable[[Any], Any] = lambda m: m.DigitsDataModule(batch_size=32)
    checkpoints: Callable[[Any], list[Any]] = lambda L: [
        L.ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_top_k=2, save_last=True)
    ]
    extra: Callable[[Any], list[Any]] = lambda L: []
    action: str = "fit"
    logs: bool = True  # False: nothing may reach W&B (fast_dev_run)
    val_key: str = "val_acc"  # a metric logged once per validation run (the key W&B receives)
    train_key: str = "train_loss"  # a metric logged at every training step (the key W&B receives)
    watched: str = "layer_1.weight"  # a parameter whose histograms are checked
    per_step_monitor: bool = False  # a monitor logged per step: its best checkpoint need not be its history's best
    logger: dict[str, Any] = field(default_factory=dict)  # WandbLogger arguments
    predictions: dict[str, Any] = field(default_factory=dict)
    summaries: dict[str, Any] = field(default_factory=dict)
    loggers: str = "wandb"
    allowed: tuple[str, ...] = ()  # regexes of this package's warnings the row documents
    upload_first: bool = False  # UploadCheckpoints listed before the ModelCheckpoint


def no_checkpoints(L: Any) -> list[Any]:
    return []


ROWS = [
    Row("defaults"),
    Row("fast_dev_run", trainer={"fast_dev_run": True}, logs=False),
    Row("fast_dev_run_3", trainer={"fast_dev_run": 3}, logs=False),
    Row("limit_val_batches_0", trainer={"limit_val_batches": 0},
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="train_loss", save_top_k=2)],
        val_key="", per_step_monitor=True, allowed=(r"^LogPredictionSamples: .*`limit_val_batches=0`",)),
    Row("no_sanity_check", trainer={"num_sanity_val_steps": 0}),
    Row("full_sanity_check", trainer={"num_sanity_val_steps": -1}),
    Row("check_val_every_2_epochs", trainer={"check_val_every_n_epoch": 2, "max_epochs": 4}),
    Row("every_n_epochs_2_like_lightning", trainer={"check_val_every_n_epoch": 2, "max_epochs": 4},
        predictions={"every_n_epochs": 2}),
    Row("val_check_interval_half", trainer={"val_check_interval": 0.5}),
    Row("val_check_interval_int", trainer={"val_check_interval": 2}),
    Row("max_steps_mid_epoch", trainer={"max_steps": 7, "max_epochs": -1}),
    Row("accumulate_grad_batches_3", trainer={"accumulate_grad_batches": 3, "limit_train_batches": 6}),
    Row("gradient_clipping", trainer={"gradient_clip_val": 0.5}),
    Row("manual_optimization_two_optimizers", model="ManualTwoOptimizers"),
    Row("bf16_mixed", trainer={"precision": "bf16-mixed"}),
    Row("deterministic", trainer={"deterministic": True}),
    Row("profiler_simple", trainer={"profiler": "simple"}),
    Row("two_val_dataloaders", model="TwoValModel", datamodule=lambda m: m.TwoValLoaders(batch_size=32),
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="val_acc/dataloader_idx_0", mode="max")],
        val_key="val_acc/dataloader_idx_0", summaries={"dataloader_suffixes": True}),
    Row("dict_batches_and_outputs", model="DictOutputs", datamodule=lambda m: m.DictBatches(batch_size=32)),
    Row("metrics_from_epoch_end_hooks", model="EpochEndMetrics",
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="train_epoch_score", mode="max",
                                                 save_top_k=2)],
        summaries={"summaries": {"val_epoch_score": "max"}}, trainer={"max_epochs": 3}),
    Row("metrics_from_another_callback", extra=lambda L: [L.LearningRateMonitor()],
        summaries={"summaries": {"lr-*": "last"}}),
    Row("fit_twice", action="fit_twice"),
    Row("validate_alone", action="validate", checkpoints=no_checkpoints),
    Row("test_alone", action="test", checkpoints=no_checkpoints, val_key="test_acc",
        predictions={"stages": ["test"]}),
    Row("predict_alone", action="predict", checkpoints=no_checkpoints, val_key="",
        predictions={"stages": ["predict"]}),
    Row("lr_find_before_fit", model="Tunable", action="lr_find"),
    Row("scale_batch_size_before_fit", model="Tunable", action="scale_batch_size"),
    Row("lightning_default_checkpoint", checkpoints=no_checkpoints),
    Row("no_monitor_every_n_train_steps",
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", every_n_train_steps=3)]),
    Row("upload_listed_before_checkpoint", upload_first=True, action="fit_then_test_best"),
    Row("beside_lightning_callbacks", trainer={"enable_progress_bar": True}, extra=lambda L: [
        L.EarlyStopping(monitor="val_loss", patience=5), L.LearningRateMonitor(), L.RichProgressBar(),
        L.StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1)]),
    Row("csv_and_wandb_loggers", loggers="csv+wandb"),
    # Lightning's logging conventions: W&B receives `<name>_epoch`, `p-<name>`, `val/acc`, ...
    Row("on_step_and_on_epoch_metrics", model="OnStepOnEpoch", val_key="val_acc_epoch",
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="val_loss", save_top_k=2, save_last=True)]),
    Row("logger_prefix", logger={"prefix": "p"}, val_key="p-val_acc", train_key="p-train_loss"),
    Row("log_dict_torchmetrics_sync_dist", model="LogDictTorchmetrics"),
    Row("slash_separated_names", model="SlashNames", val_key="val/acc", train_key="train/loss",
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="val/acc", mode="max", save_top_k=2)]),
    Row("per_step_monitor_gan", model="PerStepGAN", val_key="val_class_acc", train_key="g_loss",
        watched="generator.0.weight", per_step_monitor=True, trainer={"max_epochs": 3},
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="g_loss", save_top_k=2)]),
    # an autoencoder shaped like Lightning's example: the step flattens the batch, validation_step returns nothing
    Row("autoencoder_with_predict", model="LitAutoEncoder", predictions={"predict": modules.reconstruct},
        val_key="val_loss",
        checkpoints=lambda L: [L.ModelCheckpoint(dirpath="ckpt", monitor="val_loss", mode="min", save_top_k=2)]),
    # a UNet-like segmenter whose masks carry the void label 250; validation_step returns nothing
    Row("segmentation_ignore_index", model="UNetLike", datamodule=lambda m: m.VoidShapesData(batch_size=16),
        predictions={"ignore_index": 250}),
]


# ---------------------------------------------------------------------- running a row
class Probe(Callback):
    """What Lightning did, recorded from its own counters (not from this package)."""

    def __init__(self) -> None:
        self.optimizer_steps: list[tuple[int, int]] = []  # (global_step, step Lightning logs the batch at)
        self.stepped: list[tuple[int, int]] = []  # (index of the optimizer, step Lightning logs the batch at)
        self.owners: dict[str, int] = {}  # parameter name -> index of the optimizer that owns it

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        wb_step = trainer.fit_loop.epoch_loop._batches_that_stepped
        self.optimizer_steps.append((trainer.global_step, wb_step))
        index = next((i for i, opt in enumerate(trainer.optimizers) if opt is optimizer), -1)
        self.stepped.append((index, wb_step))
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.owners.update((n, index) for n, p in pl_module.named_parameters() if id(p) in owned)


@dataclass
class Outcome:
    row: Row
    variant: str
    trainer: Any  # a Trainer of either namespace
    callbacks: dict[str, Callback]
    checkpoints: list[Any]
    probe: Probe
    ours: list[str]  # this package's warnings
    records: RunRecords | None


def build_callbacks(row: Row, variant: str) -> dict[str, Callback]:
    made: dict[str, Callback] = {
        "LogPredictionSamples": LogPredictionSamples(num_samples=4, **row.predictions),
        "MetricSummaries": MetricSummaries(**row.summaries),
        "WatchModel": WatchModel(log="all", log_freq=LOG_FREQ),
        "UploadCheckpoints": UploadCheckpoints(),
        "ShareRunDir": ShareRunDir(),
    }
    return made if variant == "all" else {variant: made[variant]}


def run_row(row: Row, variant: str, namespace: str = "lightning.pytorch") -> Outcome:
    torch.manual_seed(0)
    L, M = modules.api(namespace), modules.of(namespace)
    ours = build_callbacks(row, variant)
    checkpoints = row.checkpoints(L)
    probe = Probe()
    mine = list(ours.values())
    listed = [*mine, *checkpoints] if row.upload_first else [*checkpoints, *mine]
    logger: Any = make_logger(namespace=namespace, **row.logger)
    if row.loggers == "csv+wandb":
        logger = [L.CSVLogger("csv"), logger]
    options: dict[str, Any] = {
        "max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2,
        "limit_predict_batches": 2, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": "lightning",
    }
    options.update(row.trainer)
    model, dm = getattr(M, row.model)(), row.datamodule(M)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(logger=logger, callbacks=[*listed, *row.extra(L), probe], **options)
        assert namespace_of(trainer) == namespace_of(logger if row.loggers == "wandb" else logger[-1]) == namespace
        act(row, trainer, model, dm, L.Tuner)
    messages = [str(w.message) for w in caught]
    found = [m for m in messages if any(name in m for name in OURS)]
    wandb.finish()
    runs = find_runs("runs") if Path("runs").exists() else []
    assert len(runs) <= 1, runs
    records = read_run(runs[0]) if runs else None
    return Outcome(row, variant, trainer, ours, checkpoints, probe, found, records)


def act(row: Row, trainer: Any, model: Any, dm: Any, tuner: type = Tuner) -> None:
    if row.action == "fit":
        trainer.fit(model, datamodule=dm)
    elif row.action == "fit_twice":
        trainer.fit(model, datamodule=dm)
        trainer.fit_loop.max_epochs = (trainer.max_epochs or 0) + 1
        trainer.fit(model, datamodule=dm)
    elif row.action == "fit_then_test_best":
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, ckpt_path="best")
    elif row.action == "validate":
        trainer.validate(model, datamodule=dm)
    elif row.action == "test":
        trainer.test(model, datamodule=dm)
    elif row.action == "predict":
        trainer.predict(model, datamodule=dm)
    elif row.action == "lr_find":
        tuner(trainer).lr_find(model, datamodule=dm, num_training=6, min_lr=1e-4, max_lr=1e-1)
        trainer.fit(model, datamodule=dm)
    elif row.action == "scale_batch_size":
        tuner(trainer).scale_batch_size(model, datamodule=dm, max_trials=2, steps_per_trial=2, init_val=16)
        trainer.fit(model, datamodule=dm)
    else:  # pragma: no cover - a typo in a row
        raise AssertionError(row.action)


# ---------------------------------------------------------------------- invariants
def steps_of(rec: RunRecords, key: str) -> list[int]:
    return [int(s) for s, _ in rec.series(key)]


def check(out: Outcome) -> None:
    row, rec, present = out.row, out.records, out.callbacks
    unexpected = [m for m in out.ours if not any(re.search(a, m) for a in row.allowed)]
    assert not unexpected, f"warnings from lw_callbacks: {unexpected}"
    if not row.logs:
        keys = rec.keys() if rec is not None else set()
        assert rec is None or not rec.artifact_names(type="model"), "fast_dev_run uploaded a checkpoint"
        assert not [k for k in keys if k.startswith(("predictions", "gradients/", "parameters/"))], keys
        return
    assert rec is not None, "no W&B run was written"
    if "LogPredictionSamples" in present:
        check_samples(out, rec)
    if "WatchModel" in present:
        check_histograms(out, rec)
    if "MetricSummaries" in present:
        check_summaries(out, rec)
    if "UploadCheckpoints" in present:
        check_uploads(out, rec)
    if "ShareRunDir" in present:
        share = present["ShareRunDir"]
        assert isinstance(share, ShareRunDir)
        assert share.run_dir is not None and share.run_dir.resolve() == Path(rec.run_dir).resolve()
    if out.variant == "all":
        check_best(out, rec)


def check_samples(out: Outcome, rec: RunRecords) -> None:
    row = out.row
    stage = (row.predictions.get("stages") or ["validation"])[0]
    section = {"validation": "predictions", "test": "predictions_test", "predict": "predictions_predict"}[stage]
    logged = steps_of(rec, f"{section}/table")
    assert logged == steps_of(rec, f"{section}/images"), "the image panel and the table disagree"
    if stage == "predict":
        assert logged == [out.trainer.fit_loop.epoch_loop._batches_that_stepped]
        return
    if not row.val_key:
        assert logged == [], f"samples logged with no validation: {logged}"
        return
    metric_steps = steps_of(rec, row.val_key)
    every = row.predictions.get("every_n_epochs", 1)
    if every > 1:
        # with check_val_every_n_epoch == every_n_epochs, every validation run counts
        assert metric_steps, "no validation ran"
    assert logged == metric_steps, f"samples at {logged}, {row.val_key} at {metric_steps}"


def check_histograms(out: Outcome, rec: RunRecords) -> None:
    """One optimizer: ``row.watched`` at ``global_step`` 0, f, 2f, ...; several: each optimizer's own
    parameters (``row.watched`` for its owner, the first one for the others) at its own 0th, f-th,
    2f-th, ... step, its steps counted apart."""
    probe, row = out.probe, out.row
    several = len({i for i, _ in probe.stepped}) > 1
    names = {probe.owners.get(row.watched, 0): row.watched}
    if several:
        for name, index in probe.owners.items():
            names.setdefault(index, name)
    for index, name in sorted(names.items()):
        if several:
            mine = [wb for i, wb in probe.stepped if i == index]
            expected = sorted({wb for n, wb in enumerate(mine) if n % LOG_FREQ == 0})
        else:
            expected = sorted({wb for g, wb in probe.optimizer_steps if g % LOG_FREQ == 0})
        for kind in ("gradients", "parameters"):
            logged = sorted(set(steps_of(rec, f"{kind}/{name}")))
            assert logged == expected, f"{kind}/{name} at {logged}, optimizer steps give {expected}"
        if expected:
            train_steps = set(steps_of(rec, row.train_key)) | set(steps_of(rec, row.train_key + "_step"))
            assert set(expected) <= train_steps, "histograms off the metrics' step axis"


def check_summaries(out: Outcome, rec: RunRecords) -> None:
    defined = {m.key for m in rec.metrics}
    junk = [n for n in defined if n.count("dataloader_idx") > 1]
    assert not junk, f"junk definitions {junk}"
    for mc in out.checkpoints:
        if not mc.monitor or out.row.action in ("validate", "test", "predict"):
            continue
        key = received(out, rec, mc.monitor)
        series = rec.series(key)
        assert series, f"{key} was never logged"
        definition = rec.metric(key)
        assert definition is not None and mc.mode in definition.summary and definition.step_metric == STEP
        values = [v for _, v in series]
        best = max(values) if mc.mode == "max" else min(values)
        assert rec.summary[key][mc.mode] == pytest.approx(best)
        first_best_step = next(int(s) for s, v in series if v == best)
        assert rec.summary[f"{key}.best_step"] == first_best_step
        if mc.best_model_path and out.row.action != "fit_twice":
            assert isinstance(rec.summary.get(f"{key}.best_checkpoint_step"), int), sorted(rec.summary)
    for key, kinds in (out.row.summaries.get("summaries") or {}).items():
        if key.endswith("*"):
            logged = rec.keys()
            matched = [k for k in logged if k.startswith(key[:-1])]
            assert matched, f"nothing logged for {key}"
            continue
        definition = rec.metric(key)
        assert definition is not None and set([kinds] if isinstance(kinds, str) else kinds) <= definition.summary


def received(out: Outcome, rec: RunRecords, name: str) -> str:
    """The key W&B holds for a metric the module logs as ``name``: the logger's prefix before it, and
    ``<name>_epoch`` for one logged with ``on_step`` and ``on_epoch``."""
    from lw_callbacks.core.summaries import forked

    prefix = out.row.logger.get("prefix")
    key = f"{prefix}-{name}" if prefix else name
    keys = rec.keys()
    epoch = f"{prefix}-{forked(name, 'epoch')}" if prefix else forked(name, "epoch")
    return epoch if key not in keys and epoch in keys else key


def kept_files(out: Outcome) -> list[Path]:
    mcs = [cb for cb in out.trainer.checkpoint_callbacks if is_model_checkpoint(cb)]
    files: list[Path] = []
    for mc in mcs:
        if mc.dirpath and os.path.isdir(mc.dirpath):
            files += sorted(p for p in Path(mc.dirpath).glob("*.ckpt") if not p.is_symlink())
    return files


def check_uploads(out: Outcome, rec: RunRecords) -> None:
    upload = out.callbacks["UploadCheckpoints"]
    assert isinstance(upload, UploadCheckpoints)
    mcs = [cb for cb in out.trainer.checkpoint_callbacks if is_model_checkpoint(cb)]
    assert mcs, "UploadCheckpoints must not hide Lightning's ModelCheckpoints"
    assert out.trainer.checkpoint_callback is mcs[0]
    pairs = []
    for name in rec.artifact_names(type="model"):
        for version in rec.artifacts(name):
            pairs += [(name, e.digest) for e in version.entries]
    assert len(pairs) == len(set(pairs)), f"a (collection, digest) uploaded twice: {pairs}"
    digests = {d for _, d in pairs}
    for path in kept_files(out):
        assert md5_b64(path) in digests, f"{path.name} was kept by ModelCheckpoint but not uploaded"


def check_best(out: Outcome, rec: RunRecords) -> None:
    upload = out.callbacks["UploadCheckpoints"]
    assert isinstance(upload, UploadCheckpoints)
    mcs = [cb for cb in out.trainer.checkpoint_callbacks if is_model_checkpoint(cb)]
    for mc, collection in zip(mcs, upload.collection_names, strict=False):
        if not mc.best_model_path or out.row.action not in ("fit", "fit_twice", "lr_find", "scale_batch_size",
                                                            "fit_then_test_best"):
            continue
        if not mc.monitor:  # `best` is Lightning's best_model_path, what `ckpt_path="best"` loads: the newest
            path = restore_checkpoint(f"{collection}:best", run_dir=rec.run_dir)
            assert md5_b64(path) == md5_b64(mc.best_model_path), "best is not Lightning's best_model_path"
            continue
        key = received(out, rec, mc.monitor)
        best_step = rec.summary.get(f"{key}.best_step")
        assert isinstance(best_step, int), f"no {key}.best_step in {sorted(rec.summary)}"
        # the best checkpoint's step: the `step-<n>` alias of the version aliased `best`, restorable by it
        ckpt_step = rec.summary.get(f"{key}.best_checkpoint_step")
        assert isinstance(ckpt_step, int), f"no {key}.best_checkpoint_step in {sorted(rec.summary)}"
        assert f"step-{ckpt_step}" in rec.resolve_artifact(collection, "best").aliases
        path = restore_checkpoint(f"{collection}:step-{ckpt_step}", run_dir=rec.run_dir)
        assert md5_b64(path) == md5_b64(mc.best_model_path), "step-N is not the best checkpoint"
        if not out.row.per_step_monitor:  # logged once per check of ModelCheckpoint: one step by construction
            assert best_step == ckpt_step, f"{key}.best_step {best_step}, best checkpoint at step {ckpt_step}"
        if out.row.val_key and mc.monitor.startswith("val"):
            assert best_step in steps_of(rec, "predictions/table"), "no samples at the best step"


# The all-five rows run under both Lightning namespaces; each callback alone under lightning.pytorch.
VARIANTS = [
    *(pytest.param("all", ns, id=f"all-{ns}") for ns in modules.NAMESPACES),
    *(pytest.param(a, "lightning.pytorch", id=a, marks=pytest.mark.alone) for a in ALONE),
]


@pytest.mark.parametrize(("variant", "namespace"), VARIANTS)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_conformance(row: Row, variant: str, namespace: str) -> None:
    check(run_row(row, variant, namespace))


# ------------------------------------------------------------ bad settings: early, clear, never after training
def fit_digits_quietly(callbacks: list[Callback], **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu", "devices": 1,
        "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
        "default_root_dir": "lightning",
    }
    options.update(kwargs)
    trainer = Trainer(logger=make_logger(), callbacks=callbacks, **options)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    return trainer


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: LogPredictionSamples(class_names="cat"), "class_names"),  # type: ignore[arg-type]
        (lambda: LogPredictionSamples(log_images="no"), "log_images"),  # type: ignore[arg-type]
        (lambda: LogPredictionSamples(input_key=3), "input_key"),  # type: ignore[arg-type]
        (lambda: WatchModel(include=5), "include"),  # type: ignore[arg-type]
        (lambda: WatchModel(log_graph="yes"), "log_graph"),  # type: ignore[arg-type]
        (lambda: MetricSummaries(record_best_step="yes"), "record_best_step"),  # type: ignore[arg-type]
        (lambda: MetricSummaries({"val_acc": "best"}), "val_acc"),
    ],
)
def test_bad_arguments_raise_one_error_naming_the_argument(build: Callable[[], Any], argument: str) -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lw_callbacks import ConfigurationError

    with pytest.raises(ConfigurationError, match=re.escape(argument)) as info:
        build()
    assert isinstance(info.value, MisconfigurationException) and isinstance(info.value, ValueError)


def test_data_errors_stop_the_fit_in_the_sanity_check_before_training() -> None:
    from lw_callbacks import ConfigurationError

    probe = Probe()
    with pytest.raises(ConfigurationError, match="class_names"):
        fit_digits_quietly([LogPredictionSamples(num_samples=4, class_names=["zero", "one"]), probe])
    assert probe.optimizer_steps == [], "the error came after training had started"
    with pytest.raises(ConfigurationError, match="input_key"):
        fit_digits_quietly([LogPredictionSamples(input_key="image"), probe])
    assert probe.optimizer_steps == []


def test_data_error_first_seen_after_training_warns_once_and_the_fit_ends_normally() -> None:
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max"),
        LogPredictionSamples(num_samples=4, class_names=["zero", "one"]),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit_digits_quietly(callbacks, num_sanity_val_steps=0)
    assert trainer.current_epoch == 2 and trainer.global_step == 6  # the fit ran to its end
    ours = [str(w.message) for w in caught if "LogPredictionSamples" in str(w.message)]
    assert len(ours) == 1 and "class_names" in ours[0] and "no more validation samples" in ours[0], ours
    wandb.finish()
    rec = read_run(find_runs("runs")[0])
    assert "predictions/table" not in set(rec.keys())
    assert sorted(p.name for p in Path("ckpt").glob("*.ckpt")), "checkpoints were still saved"


def test_two_metric_summaries_are_refused_before_fit() -> None:
    from lw_callbacks import ConfigurationError

    # Lightning itself refuses two stateful callbacks of one type with one state key, at Trainer(...)
    with pytest.raises((ConfigurationError, RuntimeError), match="more than one"):
        fit_digits_quietly([MetricSummaries({"val_loss": "min"}), MetricSummaries({"val_acc": "max"})])


def test_editing_summaries_before_a_resume_keeps_the_best_step() -> None:
    first = MetricSummaries({"val_loss": "min"})
    mc = ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_last=True)
    trainer = fit_digits_quietly([mc, first], max_epochs=2)
    run_id = trainer.logger.experiment.id  # type: ignore[union-attr]
    wandb.finish()
    before = read_run(find_runs("runs")[0])
    edited = MetricSummaries({"val_loss": "min", "train_loss": "last"}, warn_missing=False)
    assert edited.state_key == first.state_key
    resumed = Trainer(
        logger=make_logger(id=run_id, resume="allow"),
        callbacks=[ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_last=True), edited],
        max_epochs=3, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", devices=1,
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, default_root_dir="lightning",
    )
    resumed.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32), ckpt_path="ckpt/last.ckpt")
    wandb.finish()
    segments = [read_run(r) for r in find_runs("runs")]
    after = segments[-1]
    every = before.series("val_acc") + after.series("val_acc")
    best = max(v for _, v in every)
    assert after.summary["val_acc.best_step"] == next(int(s) for s, v in every if v == best)
    assert after.summary["val_loss.best_step"] == min(
        ((v, int(s)) for s, v in before.series("val_loss") + after.series("val_loss"))
    )[1]


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP strategy needs CUDA")
def test_sharded_strategy_without_predictions_fails_fast_on_every_rank(tmp_path: Path) -> None:
    from harness import run_ranks

    with pytest.raises(AssertionError) as info:
        run_ranks("predictions_sharded.py", out_dir=tmp_path / "reports", timeout=150)
    text = str(info.value)
    assert "did not finish" not in text, "the job hung"
    assert "shards the parameters" in text and "Return the predictions" in text, text[-3000:]
