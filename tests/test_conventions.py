"""Lightning's logging conventions: summaries, best steps and checkpoints follow the keys W&B receives.

``self.log(name, on_step=True, on_epoch=True)`` reaches W&B as ``name_step`` / ``name_epoch``;
``WandbLogger(prefix="p")`` sends ``p-name``; a metric logged per step has a history best that need
not be its best checkpoint. Each test fits a module of tests/modules.py and reads the run's records.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import modules
import pytest
import wandb
from harness import make_logger, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lw_callbacks import MetricSummaries, UploadCheckpoints, restore_checkpoint
from lw_callbacks.records import RunRecords, find_runs, read_run

STEP = "trainer/global_step"


def fit(
    model: Any, callbacks: list[Any], logger: Any = None, datamodule: Any = None, **options: Any
) -> tuple[list[str], RunRecords]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(callbacks, logger=logger, max_epochs=3, limit_train_batches=4, limit_val_batches=2,
                               **options)
        trainer.fit(model, datamodule=datamodule or modules.DigitsDataModule(batch_size=32))
    wandb.finish()
    (run,) = find_runs("runs")
    return [str(w.message) for w in caught if "MetricSummaries" in str(w.message)], read_run(run)


def best_alias_step(rec: RunRecords) -> int:
    (collection,) = rec.artifact_names(type="model")
    (alias,) = [a for a in rec.resolve_artifact(collection, "best").aliases if a.startswith("step-")]
    return int(alias.removeprefix("step-"))


def test_on_step_and_on_epoch_monitor_is_summarised_under_its_epoch_key() -> None:
    mc = ModelCheckpoint(dirpath="ckpt", monitor="val_loss", save_top_k=1)
    ours, rec = fit(modules.OnStepOnEpoch(), [mc, MetricSummaries({"train_loss": "min"}), UploadCheckpoints()])
    assert not ours, ours
    definition = rec.metric("val_loss_epoch")
    assert definition is not None and definition.summary == {"min"} and definition.step_metric == STEP
    series = rec.series("val_loss_epoch")
    assert rec.summary["val_loss_epoch"] == {"min": pytest.approx(min(v for _, v in series))}
    best_step = rec.summary["val_loss_epoch.best_step"]
    assert best_step in [int(s) for s, _ in series]
    assert best_step == min(series, key=lambda sv: sv[1])[0]
    # logged once per validation: the history's best is the best checkpoint, by construction
    assert rec.summary["val_loss_epoch.best_checkpoint_step"] == best_step == best_alias_step(rec)
    assert "val_loss.best_step" not in rec.summary and "val_loss_step.best_step" not in rec.summary
    # an explicit entry: the epoch values of train_loss, defined before the first one was logged
    train = rec.series("train_loss_epoch")
    assert rec.summary["train_loss_epoch"] == {"min": pytest.approx(min(v for _, v in train))}
    # the per-step values keep W&B's default: no definition of ours (older wandb, 0.21 here, writes the
    # logger's "*" rule out for each key it matches: no summary, the trainer's step)
    per_step = rec.metric("train_loss_step")
    assert per_step is None or (not per_step.summary and per_step.step_metric == "trainer/global_step")


def test_on_step_and_on_epoch_with_two_validation_dataloaders() -> None:
    mc = ModelCheckpoint(dirpath="ckpt", monitor="val_loss/dataloader_idx_1", save_top_k=1)
    ours, rec = fit(modules.TwoValOnStepOnEpoch(), [mc, MetricSummaries(), UploadCheckpoints()],
                    datamodule=modules.TwoValLoaders(batch_size=32))
    assert not ours, ours
    key = "val_loss_epoch/dataloader_idx_1"
    definition = rec.metric(key)
    assert definition is not None and definition.summary == {"min"} and definition.step_metric == STEP
    series = rec.series(key)
    assert rec.summary[f"{key}.best_step"] == min(series, key=lambda sv: sv[1])[0]
    assert rec.summary[f"{key}.best_checkpoint_step"] == rec.summary[f"{key}.best_step"] == best_alias_step(rec)


def test_logger_prefix_is_part_of_every_key() -> None:
    mc = ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_top_k=1)
    ours, rec = fit(modules.DigitsClassifier(), [mc, MetricSummaries(), UploadCheckpoints()],
                    logger=make_logger(prefix="p"))
    assert not ours, ours
    definition = rec.metric("p-val_acc")
    assert definition is not None and definition.summary == {"max"} and definition.step_metric == STEP
    assert rec.metric("val_acc") is None, "defined a key W&B never receives"
    series = rec.series("p-val_acc")
    best_step = rec.summary["p-val_acc.best_step"]
    assert best_step == max(series, key=lambda sv: sv[1])[0]
    assert rec.summary["p-val_acc.best_checkpoint_step"] == best_step == best_alias_step(rec)
    assert isinstance(rec.summary["p-val_acc.best_epoch"], int)


def test_an_entry_matching_nothing_warns_once_naming_the_keys_wandb_received() -> None:
    ours, _ = fit(modules.DigitsClassifier(), [MetricSummaries({"val_accuracy": "max"}, from_callbacks=False)],
                    logger=make_logger(prefix="p"))
    assert len(ours) == 1, ours
    assert "'val_accuracy'" in ours[0] and "p-val_acc" in ours[0] and "p-train_loss" in ours[0], ours[0]


def test_per_step_monitor_records_the_step_of_its_best_checkpoint() -> None:
    """A GAN's g_loss, logged every step, checked by ModelCheckpoint at each validation: `best_step` is
    the history's best, `best_checkpoint_step` the step of the file ModelCheckpoint kept as best; the
    latter is the best version's `step-<n>` alias and restores that file."""
    mc = ModelCheckpoint(dirpath="ckpt", monitor="g_loss", save_top_k=1)
    ours, rec = fit(modules.PerStepGAN(), [mc, MetricSummaries(), UploadCheckpoints()])
    assert not ours, ours
    series = rec.series("g_loss")
    assert rec.summary["g_loss.best_step"] == min(series, key=lambda sv: sv[1])[0]
    ckpt_step = rec.summary["g_loss.best_checkpoint_step"]
    assert ckpt_step == best_alias_step(rec)
    (collection,) = rec.artifact_names(type="model")
    path = restore_checkpoint(f"{collection}:step-{ckpt_step}", run_dir=rec.run_dir)
    assert path.read_bytes() == Path(mc.best_model_path).read_bytes()
    # the value ModelCheckpoint scored is the one logged at that step
    logged = dict((int(s), v) for s, v in series)
    assert logged[ckpt_step] == pytest.approx(float(mc.best_model_score))

