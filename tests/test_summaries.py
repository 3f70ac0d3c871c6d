"""MetricSummaries on real offline runs, checked against what the run's own records hold."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from harness import build_with_cli, finish_and_read, fit_digits, isolated_wandb, make_logger, make_trainer, run_ranks
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import RunRecords, find_runs
from lw_callbacks.summaries import MetricSummaries

STEP = "trainer/global_step"
MAPPING = {
    "val_loss": "min,max,mean,first,last",
    "train_*": "min",  # a glob: expanded to train_loss / train_acc by name
    "train_acc": ["first", "last"],  # a name beats the glob
    "epoch": "none",
    "val_typo": "max",  # never logged
}


def _best(series: list[tuple[Any, Any]], direction: str) -> tuple[int, float]:
    """(step, value) of the first best value of a history series."""
    pick = max if direction == "max" else min
    value = pick(v for _, v in series)
    return next(s for s, v in series if v == value), value


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunRecords, list[str]]]:
    """One 3-epoch fit: ModelCheckpoint(val_acc, max) + MetricSummaries(MAPPING, hidden=[train_acc])."""
    root = tmp_path_factory.mktemp("summaries_main")
    with isolated_wandb(root):
        callbacks = [
            ModelCheckpoint(monitor="val_acc", mode="max", dirpath="ckpt"),
            MetricSummaries(MAPPING, hidden=["train_acc"]),
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, records = fit_digits(callbacks, max_epochs=3)
        yield records, [str(w.message) for w in caught if "MetricSummaries" in str(w.message)]


def test_metric_records_carry_summary_and_step_metric(main_run: tuple[RunRecords, list[str]]) -> None:
    records, _ = main_run
    expected = {
        "val_loss": {"min", "max", "mean", "first", "last"},
        "val_acc": {"max"},  # derived from ModelCheckpoint(monitor="val_acc", mode="max") alone
        "train_loss": {"min"},  # expanded from the glob "train_*"
        "train_acc": {"first", "last"},
        "epoch": {"none"},
        "train_*": {"min"},
    }
    for key, summary in expected.items():
        definition = records.metric(key)
        assert definition is not None, f"no metric record for {key}: {[m.key for m in records.metrics]}"
        assert definition.summary == summary, key
        assert definition.step_metric == STEP and definition.step_sync, key
    assert records.metric("train_acc").hidden and not records.metric("val_loss").hidden  # type: ignore[union-attr]
    names = [m.key for m in records.metrics if m.name]
    assert len(names) == len(set(names)), f"duplicate definitions: {names}"


def test_run_summary_equals_aggregates_of_history(main_run: tuple[RunRecords, list[str]]) -> None:
    records, _ = main_run
    val_loss = [v for _, v in records.series("val_loss")]
    assert len(val_loss) == 3
    assert records.summary["val_loss"] == pytest.approx(
        {"min": min(val_loss), "max": max(val_loss), "mean": statistics.fmean(val_loss),
         "first": val_loss[0], "last": val_loss[-1]}
    )
    assert records.summary["val_acc"] == pytest.approx({"max": max(v for _, v in records.series("val_acc"))})
    assert records.summary["train_loss"] == pytest.approx({"min": min(v for _, v in records.series("train_loss"))})
    train_acc = [v for _, v in records.series("train_acc")]
    assert records.summary["train_acc"] == pytest.approx({"first": train_acc[0], "last": train_acc[-1]})
    assert records.series("epoch") and "epoch" not in records.summary  # "none": left out of the summary


def test_history_rows_carry_global_step(main_run: tuple[RunRecords, list[str]]) -> None:
    records, _ = main_run
    for key in ("val_loss", "val_acc", "train_loss", "train_acc"):
        steps = [s for s, _ in records.series(key)]
        assert steps and all(isinstance(s, int) for s in steps), (key, steps)
        assert steps == sorted(steps)
    assert [s for s, _ in records.series("val_acc")] == [5, 11, 17]  # 6 batches per epoch


def test_best_step_is_the_step_of_the_best_history_value(main_run: tuple[RunRecords, list[str]]) -> None:
    records, _ = main_run
    summary = records.summary
    for key, direction, label in [("val_acc", "max", "best"), ("train_loss", "min", "best"),
                                  ("val_loss", "min", "min"), ("val_loss", "max", "max")]:
        step, _ = _best(records.series(key), direction)
        assert summary[f"{key}.{label}_step"] == step, (key, direction, records.series(key))
        row = next(r for r in records.rows(key) if r[STEP] == step)
        assert summary[f"{key}.{label}_epoch"] == row["epoch"]
    assert "train_acc.best_step" not in summary  # first / last: no best


def test_never_logged_metric_warns_once_naming_it(main_run: tuple[RunRecords, list[str]]) -> None:
    _, messages = main_run
    missing = [m for m in messages if "matched no metric logged" in m]
    assert len(missing) == 1, messages
    assert "val_typo" in missing[0] and "'val_loss'" not in missing[0].split("(W&B received")[0]
    assert len(messages) == 1, messages


def test_explicit_entry_wins_and_early_stopping_is_derived() -> None:
    callbacks = [
        ModelCheckpoint(monitor="val_loss", mode="min", dirpath="ckpt"),
        EarlyStopping(monitor="val_acc", mode="max", patience=10),
        MetricSummaries({"val_loss": "mean"}),
    ]
    _, records = fit_digits(callbacks, max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    assert records.metric("val_loss").summary == {"mean"}  # type: ignore[union-attr]
    assert records.metric("val_acc").summary == {"max"}  # type: ignore[union-attr]
    assert [m.key for m in records.metrics].count("val_loss") == 1
    val_loss = [v for _, v in records.series("val_loss")]
    assert records.summary["val_loss"] == pytest.approx({"mean": statistics.fmean(val_loss)})
    assert "val_loss.best_step" not in records.summary
    assert records.summary["val_acc.best_step"] == _best(records.series("val_acc"), "max")[0]


class _LowWhileAccumulating(DigitsClassifier):
    """Logs ``x`` on every batch: 0.0 on the batches that only accumulate gradients (Lightning sends
    those to no logger), 10 - batch_idx on the batches that step."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("x", 0.0 if batch_idx % 2 == 0 else 10.0 - batch_idx)
        return super().training_step(batch, batch_idx)


def test_batches_that_only_accumulate_are_not_read_as_logged() -> None:
    """With ``accumulate_grad_batches=2``, W&B receives the stepping batches' values only; the best
    step is the step of the best value W&B holds, never one of a value it never received."""
    _, records = fit_digits([MetricSummaries({"x": "min"}, from_callbacks=False)], max_epochs=1,
                            limit_train_batches=8, limit_val_batches=1, accumulate_grad_batches=2,
                            model=_LowWhileAccumulating())
    series = records.series("x")
    assert [v for _, v in series] == [9.0, 7.0, 5.0, 3.0]  # what W&B received
    assert records.summary["x"] == pytest.approx({"min": 3.0})
    assert records.summary["x.best_step"] == _best(series, "min")[0] == 3


class _TwoValLoaders(DigitsDataModule):
    def val_dataloader(self) -> list[DataLoader]:  # type: ignore[override]
        return [super().val_dataloader(), super().val_dataloader()]


class _PerLoaderModel(DigitsClassifier):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        x, y = batch
        x = x if dataloader_idx == 0 else x.flip(-1)  # a different accuracy per loader
        return super().validation_step((x, y), batch_idx)


def test_dataloader_suffixes_and_second_fit_define_once() -> None:
    summaries = MetricSummaries({"val_acc": "max"}, dataloader_suffixes=True, from_callbacks=False)
    logger = make_logger()
    for epochs in (1, 2):  # a second fit() in the same process, on the same run
        trainer = make_trainer([summaries], logger=logger, max_epochs=epochs, limit_train_batches=3,
                               limit_val_batches=2)
        trainer.fit(_PerLoaderModel(), datamodule=_TwoValLoaders(batch_size=32))
    records = finish_and_read()
    keys = [m.key for m in records.metrics]
    for idx in (0, 1):
        key = f"val_acc/dataloader_idx_{idx}"
        assert keys.count(key) == 1, keys  # no duplicate definition on the second fit
        assert records.metric(key).summary == {"max"}  # type: ignore[union-attr]
        series = records.series(key)
        assert len(series) == 3  # 1 + 2 epochs, both fits in one run
        assert records.summary[key] == pytest.approx({"max": max(v for _, v in series)})
        _, best_value = _best(series, "max")
        assert records.summary[f"{key}.best_step"] in {s for s, v in series if v == best_value}
    assert keys.count("val_acc/dataloader_idx_*") == 1


def test_resumed_run_keeps_its_summaries(tmp_path: Path) -> None:
    def fit(epochs: int, save_dir: str, **logger_kwargs: Any) -> RunRecords:
        ckpt = ModelCheckpoint(monitor="val_acc", mode="max", dirpath=tmp_path / "ckpt", save_last=True)
        trainer = make_trainer([ckpt, MetricSummaries()], logger=make_logger(save_dir, id="resumed1", **logger_kwargs),
                               max_epochs=epochs, limit_train_batches=3, limit_val_batches=2)
        last = tmp_path / "ckpt" / "last.ckpt"
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32),
                    ckpt_path=str(last) if last.exists() else None)
        return finish_and_read(save_dir=save_dir)

    first = fit(2, "runs1")
    resumed_at = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    second = fit(4, "runs2", resume="allow")
    assert second.run_id == first.run_id == "resumed1"
    definition = second.metric("val_acc")
    assert definition is not None and definition.summary == {"max"} and definition.step_metric == STEP
    # the resumed segment validates at the end of every epoch after the checkpoint's step (5, 8, 11)
    assert resumed_at in (3, 6)
    assert [s for s, _ in second.series("val_acc")] == [s for s in (2, 5, 8, 11) if s >= resumed_at]
    assert second.summary["val_acc"] == pytest.approx({"max": max(v for _, v in second.series("val_acc"))})
    # The best step spans the whole run (restored from the checkpoint), not only this segment.
    whole = first.series("val_acc") + second.series("val_acc")
    assert second.summary["val_acc.best_step"] == _best(whole, "max")[0]


@pytest.mark.slow
def test_ddp_two_processes(tmp_path: Path) -> None:
    rank0, rank1 = run_ranks("summaries_ddp.py", out_dir=tmp_path / "reports", timeout=180)
    assert rank0["finished"] and rank1["finished"]
    assert rank1["best"] == {}  # rank 1 observes nothing and talks to no run
    metrics = rank0["metrics"]
    assert metrics["val_acc"] == [["max"], STEP, True]
    assert metrics["val_loss"] == [["min"], STEP, True]
    assert metrics["train_loss"] == [["min"], STEP, True]
    summary, series = rank0["summary"], rank0["series"]
    assert summary["val_acc"] == pytest.approx({"max": max(v for _, v in series["val_acc"])})
    assert summary["val_acc.best_step"] == _best(series["val_acc"], "max")[0]
    assert summary["train_loss.best_step"] == _best(series["train_loss"], "min")[0]


def test_lightning_cli_builds_it(tmp_path: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lw_callbacks.summaries.MetricSummaries
  init_args:
    summaries: {val_acc: max, "train/*": [mean, last], val_loss: "min,max"}
    hidden: [train_loss]
    dataloader_suffixes: true
""",
        tmp_path,
    )
    built = [cb for cb in cli.trainer.callbacks if isinstance(cb, MetricSummaries)]
    assert len(built) == 1
    assert built[0].summaries == {"val_acc": ("max",), "train/*": ("mean", "last"), "val_loss": ("min", "max")}
    assert built[0].hidden == ("train_loss",) and built[0].dataloader_suffixes


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"summaries": {}}, ["empty mapping", "summaries=None"]),
        ({"summaries": {"val_acc": "best"}}, ["'best'", "val_acc", "'min'", "'max'"]),
        ({"summaries": {"val_acc": "maximum"}}, ["'maximum'", "val_acc", "Accepted"]),
        ({"summaries": {"val_acc": "none,max"}}, ["'none'", "val_acc"]),
        ({"summaries": {"val_acc": ""}}, ["empty", "val_acc"]),
        ({"summaries": {"*/acc": "max"}}, ["suffix glob", "*/acc"]),
        ({"summaries": {"*": "max"}}, ["suffix glob", "WandbLogger"]),
        ({"summaries": {3: "max"}}, ["non-empty metric name", "3"]),
        ({"summaries": {"trainer/global_step": "max"}}, ["x-axis"]),
        ({"summaries": None, "from_callbacks": False}, ["nothing to define"]),
        ({"hidden": "train_loss"}, ["hidden", "['train_loss']"]),
    ],
)
def test_bad_input_raises_at_construction(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        MetricSummaries(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_needs_a_wandb_logger() -> None:
    trainer = Trainer(logger=False, callbacks=[MetricSummaries({"val_acc": "max"})], max_epochs=1,
                      limit_train_batches=1, limit_val_batches=0, enable_progress_bar=False, accelerator="cpu",
                      enable_checkpointing=False)
    with pytest.raises(MisconfigurationException, match=r"MetricSummaries.*WandbLogger"):
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert wandb.run is None
    assert not find_runs(".")
