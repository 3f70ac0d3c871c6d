"""Both Lightning namespaces: ``lightning.pytorch`` and the standalone ``pytorch_lightning``, and their mixes.

The all-five conformance rows run under each namespace (tests/test_conformance.py, its namespace
axis). Here: the mixes Lightning accepts work (read back from the records), and the ones it refuses
fail with one error before any callback runs; the one type-check module knows both packages.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import modules
import pytest
import wandb
from harness import make_logger

from lw_callbacks import (
    LogPredictionSamples,
    MetricSummaries,
    ShareRunDir,
    UploadCheckpoints,
    WatchModel,
    _compat,
    restore_checkpoint,
)
from lw_callbacks.records import RunRecords, find_runs, read_run

SMALL = {
    "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu", "devices": 1,
    "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False,
    "default_root_dir": "lightning",
}


def all_five() -> list[Any]:
    return [LogPredictionSamples(num_samples=4), MetricSummaries(), WatchModel(log_freq=2), UploadCheckpoints(),
            ShareRunDir()]


def fit(trainer_ns: str, logger_ns: str, checkpoint_ns: str, **options: Any) -> tuple[Any, RunRecords, list[str]]:
    T, C, M = modules.api(trainer_ns), modules.api(checkpoint_ns), modules.of(trainer_ns)
    mc = C.ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max", save_top_k=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = T.Trainer(logger=make_logger(namespace=logger_ns), callbacks=[mc, *all_five()], **SMALL, **options)
        trainer.fit(M.DigitsClassifier(), datamodule=M.DigitsDataModule(batch_size=32))
    wandb.finish()
    (run,) = find_runs("runs")
    ours = [str(w.message) for w in caught if "lw_callbacks" in str(w.filename) or "Upload" in str(w.message)]
    return mc, read_run(run), ours


def check_run(mc: Any, rec: RunRecords) -> None:
    """What a user sees: samples, histograms, the summary and best step, the checkpoints uploaded and
    restorable by ``step-<best_step>``."""
    val_steps = [int(s) for s, _ in rec.series("val_acc")]
    assert val_steps and [int(s) for s, _ in rec.series("predictions/table")] == val_steps
    assert rec.series("gradients/layer_1.weight"), "no gradient histograms"
    assert "max" in rec.metric("val_acc").summary  # type: ignore[union-attr]
    best_step = rec.summary["val_acc.best_step"]
    (collection,) = rec.artifact_names(type="model")
    path = restore_checkpoint(f"{collection}:step-{best_step}", run_dir=rec.run_dir)
    assert Path(path).read_bytes() == Path(mc.best_model_path).read_bytes()


@pytest.mark.parametrize(
    ("trainer_ns", "logger_ns"),
    [("pytorch_lightning", "lightning.pytorch"), ("lightning.pytorch", "pytorch_lightning")],
    ids=["pl_trainer+lightning_logger", "lightning_trainer+pl_logger"],
)
def test_a_wandb_logger_of_the_other_package_works(trainer_ns: str, logger_ns: str) -> None:
    mc, rec, ours = fit(trainer_ns, logger_ns, trainer_ns)
    assert _compat.namespace_of(mc) == trainer_ns
    check_run(mc, rec)
    assert not ours, ours


def test_a_model_checkpoint_of_the_other_package_is_uploaded_and_named_in_one_warning() -> None:
    # Lightning accepts it only without its default ModelCheckpoint, and then does not count it as the
    # Trainer's checkpoint callback: it saves, UploadCheckpoints uploads it and says what Lightning misses.
    mc, rec, ours = fit("pytorch_lightning", "pytorch_lightning", "lightning.pytorch", enable_checkpointing=False)
    check_run(mc, rec)
    named = [m for m in ours if "pytorch_lightning" in m and "lightning.pytorch" in m]
    assert len(named) == 1, ours
    assert "from pytorch_lightning.callbacks import ModelCheckpoint" in named[0]


@pytest.mark.parametrize(
    ("trainer_ns", "other"), [("pytorch_lightning", "lightning.pytorch"), ("lightning.pytorch", "pytorch_lightning")]
)
def test_mixes_lightning_refuses_fail_before_any_callback_runs(trainer_ns: str, other: str) -> None:
    """A LightningModule of the other package: Lightning's own TypeError at `fit`, before `setup` of any
    callback (nothing logged, no run). A ModelCheckpoint of the other package with the default state key
    (no monitor) beside Lightning's default one: Lightning's RuntimeError at `Trainer(...)`. The README
    names both fixes."""
    T = modules.api(trainer_ns)
    callbacks = all_five()
    trainer = T.Trainer(logger=make_logger(namespace=trainer_ns), callbacks=callbacks, **SMALL)
    with pytest.raises(TypeError, match="must be a `LightningModule`"):
        trainer.fit(modules.of(other).DigitsClassifier(), datamodule=modules.of(trainer_ns).DigitsDataModule())
    assert not find_runs("runs") if Path("runs").exists() else True
    # Lightning 2.6: two ModelCheckpoints with one state key; older releases (2.4) check the package first
    # and name both ("You passed a `pytorch_lightning` object ... to a `lightning.pytorch` Trainer").
    refused = r"more than one stateful callback of type `ModelCheckpoint`|You passed a `[\w.]+` object .* Trainer"
    with pytest.raises((RuntimeError, TypeError), match=refused):
        T.Trainer(logger=False, callbacks=[modules.api(other).ModelCheckpoint()], **SMALL)


def test_one_place_knows_both_packages() -> None:
    import pytorch_lightning as pl
    from lightning.pytorch import callbacks as lc
    from lightning.pytorch import loggers as ll

    for cls_l, cls_pl, check in [
        (ll.WandbLogger, pl.loggers.WandbLogger, _compat.is_wandb_logger),
        (lc.ModelCheckpoint, pl.callbacks.ModelCheckpoint, _compat.is_model_checkpoint),
        (lc.EarlyStopping, pl.callbacks.EarlyStopping, _compat.is_early_stopping),
    ]:
        assert check.__module__ == "lw_callbacks._compat"
        for cls in (cls_l, cls_pl):
            obj = cls.__new__(cls)
            assert check(obj), cls
    assert not _compat.is_model_checkpoint(lc.EarlyStopping.__new__(lc.EarlyStopping))
    assert _compat.namespace_of(pl.Trainer.__new__(pl.Trainer)) == "pytorch_lightning"
    assert _compat.has_class_named(pl.strategies.DDPStrategy.__new__(pl.strategies.DDPStrategy), "DDPStrategy")


def test_no_type_check_of_a_lightning_class_outside_the_compat_module() -> None:
    """Every isinstance against a Lightning class goes through lw_callbacks/_compat.py."""
    package = Path(_compat.__file__).parent
    lightning_names = re.compile(
        r"\b(WandbLogger|DummyLogger|ModelCheckpoint|Checkpoint|EarlyStopping|LightningModule|Trainer|Fabric"
        r"|Callback|\w*Strategy|\w*Environment)\b"
    )
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in re.finditer(r"isinstance\(\s*[^,]+,\s*\(?([^)]*)\)", line):
                if lightning_names.search(match.group(1)):
                    offenders.append(f"{path.relative_to(package)}:{number}: {line.strip()}")
    assert not offenders, offenders
