"""lw_callbacks.fabric: every feature from a Fabric loop, read back from the offline run's records.

One loop (tests/scripts/fabric_all.py) uses every entry point; it runs in-process with one device
(with wandb's Fabric logger and with Lightning's WandbLogger) and as a 2-process ddp job.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import wandb
from harness import SCRIPTS, run_ranks
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lw_callbacks.checkpoints import UploadCheckpoints
from lw_callbacks.fabric import (
    FabricMetricSummaries,
    FabricPredictionSamples,
    FabricShareRunDir,
    FabricUploadCheckpoints,
    FabricWatchModel,
)
from lw_callbacks.records import RunRecords, find_runs, read_run
from lw_callbacks.watch import GRAPH_KEY

STEP = "trainer/global_step"


def _loop() -> Any:
    spec = importlib.util.spec_from_file_location("fabric_all", SCRIPTS / "fabric_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(records: RunRecords, reports: list[dict[str, Any]]) -> None:
    first = reports[0]
    run_dir = records.run_dir.resolve()
    # ShareRunDir: every rank got rank 0's folder through fabric.broadcast
    assert {r["run_dir"] for r in reports} == {str(run_dir)}
    assert {r["run_id"] for r in reports} == {records.run_id}
    assert {r["wandb_dir_env"] for r in reports} == {str(run_dir.parent.parent)}
    # MetricSummaries: definitions with the x-axis, summaries computed by W&B, best step observed
    val = records.metric("val_acc")
    assert val is not None and val.summary == {"max"} and val.step_metric == STEP
    series = records.series("val_acc")
    assert [round(v, 6) for _, v in series] == [round(v, 6) for v in first["scores"]]
    assert records.summary["val_acc"] == pytest.approx({"max": max(first["scores"])})
    best_step = max(series, key=lambda sv: sv[1])[0]
    assert records.summary["val_acc.best_step"] == best_step
    assert records.summary["val_acc.best_epoch"] == first["scores"].index(max(first["scores"]))
    assert set(records.summary["train/loss"]) == {"mean", "last"}
    # LogPredictionSamples: images, the inputs table once, a predictions table per epoch
    assert [s for s, _ in records.series("predictions/images")] == [s for s, _ in series]
    assert len(records.series("predictions/inputs")) == 1
    tables = records.tables("predictions/table")
    assert len(tables) == 3 and all(len(t.rows) == 6 for t in tables)
    assert tables[0].columns[:4] == ["id", "sample", "ground truth", "prediction"]
    assert "score_9" in tables[0].columns
    # WatchModel: histograms of every watched parameter at every 2nd optimizer step, a graph, hooks removed
    assert first["watched"] == ["layer_1.weight", "layer_1.bias", "layer_2.weight", "layer_2.bias",
                                "layer_3.weight", "layer_3.bias"]
    grad_steps = [s for s, _ in records.series("gradients/layer_1.weight")]
    assert grad_steps and all(s % 2 == 0 for s in grad_steps)
    assert [s for s, _ in records.series("parameters/layer_3.bias")] == grad_steps
    assert GRAPH_KEY in records.summary
    assert all(r["hooks_left"] == 0 for r in reports)
    # UploadCheckpoints: one version per fabric.save, metadata, aliases, best by score
    collection = first["collection"]
    assert {r["collection"] for r in reports} == {collection} and collection == f"model-{records.run_id}-val_acc"
    versions = records.artifacts(collection)
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 2]
    assert [v.metadata["score"] for v in versions] == pytest.approx(first["scores"])
    assert all(v.metadata["lr"] == 0.01 and v.metadata["monitor"] == "val_acc" for v in versions)
    best = records.resolve_artifact(collection, "best")
    assert best.metadata["score"] == pytest.approx(max(first["scores"]))
    assert {"fabric", "latest"} <= set(records.resolve_artifact(collection, "latest").aliases)
    assert f"epoch-{best.metadata['epoch']}" in best.aliases
    # restore_checkpoint: every rank got the best version back and fabric.load read it
    assert {r["restored_epoch"] for r in reports} == {best.metadata["epoch"]}
    assert len({r["restored"] for r in reports}) == 1


@pytest.mark.parametrize("kind", ["fabric", "lightning", "pytorch_lightning"])
def test_every_feature_in_one_process(kind: str) -> None:
    report = _loop().train(1, kind, "runs")
    wandb.finish()
    (run,) = find_runs("runs")
    _check(read_run(run), [report])


@pytest.mark.slow
def test_every_feature_under_ddp(tmp_path: Path) -> None:
    # a simulated sweep run: the agent's values reach wandb.init on rank 0 only
    (tmp_path / "params.yaml").write_text("lr:\n  value: 0.02\nhidden:\n  value: 32\n")
    reports = run_ranks("fabric_all.py", "2", "fabric", "runs", out_dir=tmp_path / "reports", timeout=180,
                        env={"WANDB_SWEEP_PARAM_PATH": str(tmp_path / "params.yaml")})
    assert [r["rank"] for r in reports] == [0, 1] and {r["world_size"] for r in reports} == {2}
    (run,) = find_runs("runs")  # one run: rank 1 never started one
    records = read_run(run)
    _check(records, reports)
    # FabricShareRunDir: every rank got the run's config and built the same model from the sweep's values
    assert [r["config"] for r in reports] == [{"lr": 0.02, "hidden": 32}] * 2
    assert [r["trains_with"] for r in reports] == [{"lr": 0.02, "hidden": 32, "parameters": 3466}] * 2
    assert (records.config["lr"], records.config["hidden"]) == (0.02, 32)
    assert reports[1]["watched"] == []  # only rank 0 watches


def _fabric(with_logger: bool = True) -> L.Fabric:
    from lightning.pytorch.loggers import CSVLogger

    logger: Any
    if with_logger:
        from wandb.integration.lightning.fabric import WandbLogger

        logger = WandbLogger(project="lw-tests", save_dir=os.path.abspath("runs"))
    else:
        logger = CSVLogger(os.path.abspath("csv"))
    return L.Fabric(accelerator="cpu", devices=1, loggers=[logger])


def test_bad_input_is_named_early() -> None:
    with pytest.raises(MisconfigurationException, match="W&B logger among the Fabric's loggers"):
        FabricShareRunDir().share_run_dir(_fabric(with_logger=False))
    with pytest.raises(TypeError, match=r"must be the `lightning\.Fabric` object"):
        FabricMetricSummaries({"val_acc": "max"}).define_summaries(object())
    with pytest.raises(MisconfigurationException, match="mode must be 'min' or 'max'"):
        FabricUploadCheckpoints(mode="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_freq"):
        FabricWatchModel(log_freq=0)
    fabric = _fabric()
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="`outputs` holds no predictions"):
        FabricPredictionSamples().log_prediction_samples(fabric, (x, torch.zeros(4, dtype=torch.long)), step=0)
    with pytest.raises(ValueError, match="stage must be one of"):
        FabricPredictionSamples().log_prediction_samples(fabric, x, torch.zeros(4), step=0, stage="train")
    with pytest.raises(FileNotFoundError, match=r"path='missing\.ckpt'"):
        FabricUploadCheckpoints().upload_checkpoint(fabric, "missing.ckpt", step=0)
    # the checks shared with UploadCheckpoints name the class or call the user wrote
    with pytest.raises(MisconfigurationException, match=r"^FabricUploadCheckpoints\(aliases=\.\.\.\) got 'latest'"):
        FabricUploadCheckpoints(aliases=["latest"])
    with pytest.raises(MisconfigurationException, match=r"^FabricUploadCheckpoints\(flush_timeout=0\)"):
        FabricUploadCheckpoints(flush_timeout=0)
    with pytest.raises(MisconfigurationException, match=r"^FabricUploadCheckpoints\(name='a/b'\)"):
        FabricUploadCheckpoints(name="a/b")
    with pytest.raises(MisconfigurationException, match=r"^FabricUploadCheckpoints\.upload_checkpoint\(aliases="):
        FabricUploadCheckpoints().upload_checkpoint(fabric, "missing.ckpt", step=0, aliases=["a b"])
    with pytest.raises(MisconfigurationException, match=r"^UploadCheckpoints\(aliases=\.\.\.\) got 'best'"):
        UploadCheckpoints(aliases=["best"])
    with pytest.raises(ValueError, match="not a torch optimizer"):
        FabricWatchModel().watch(fabric, torch.nn.Linear(2, 2), object())


def test_new_inputs_log_a_new_inputs_table_and_a_logging_failure_only_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    fabric = _fabric()
    preds = FabricPredictionSamples(num_samples=3)
    a, b = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    labels = torch.arange(4)
    preds.log_prediction_samples(fabric, (a, labels), labels, step=0)
    preds.log_prediction_samples(fabric, (a, labels), labels, step=1)  # same inputs: no new inputs table
    preds.log_prediction_samples(fabric, (b, labels), labels, step=2)  # other inputs: a new one
    run = fabric.logger.experiment
    monkeypatch.setattr(run, "log", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.warns(UserWarning, match="disk full"):
        preds.log_prediction_samples(fabric, (b, labels), labels, step=3)
    monkeypatch.undo()
    wandb.finish()
    (path,) = find_runs("runs")
    records = read_run(path)
    assert [s for s, _ in records.series("predictions/inputs")] == [0, 2]
    assert [s for s, _ in records.series("predictions/table")] == [0, 1, 2]


def test_segmentation_samples_from_a_fabric_loop() -> None:
    from torch.utils.data import DataLoader

    from lw_callbacks.demo_tasks import SHAPE_NAMES, Shapes, ShapesSegmenter

    fabric = _fabric()
    preds = FabricPredictionSamples(num_samples=3, class_names=SHAPE_NAMES, key="seg")
    data = Shapes(8, mode="segmentation")
    batch = next(iter(DataLoader(data, batch_size=4)))
    model = ShapesSegmenter()
    with torch.no_grad():
        preds.log_prediction_samples(fabric, batch, model(batch[0]), step=0)
        preds.log_prediction_samples(fabric, batch, step=1, model=model)  # no outputs: the model runs
    wandb.finish()
    (path,) = find_runs("runs")
    records = read_run(path)
    (inputs,) = records.tables("seg/inputs")
    assert len([e for e in inputs.entries if e.path.startswith("media/images/mask/")]) == 3  # once
    tables = records.tables("seg/table")
    assert [t.columns[-1] for t in tables] == ["iou", "iou"]
    first, second = ([r["iou"] for r in t.rows] for t in tables)
    assert first == second and all(0 <= v <= 1 for v in first)  # the same weights, step output or forward
    panels = records.series("seg/images")
    assert [s for s, _ in panels] == [0, 1]
    assert all(set(m) == {"ground_truth", "predictions"} for _, p in panels for m in p["all_masks"])

