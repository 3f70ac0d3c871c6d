"""All five callbacks on one Trainer: every launcher, crash and resume, repeated fits, LightningCLI."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from harness import REPO, finish_and_read, make_trainer, run_ranks
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from lw_callbacks import LogPredictionSamples, MetricSummaries, ShareRunDir, UploadCheckpoints, WatchModel
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import RunRecords, find_runs, iter_records, read_resumed, read_run

STEPS_PER_EPOCH, EPOCHS, LOG_FREQ = 6, 3, 2
OURS = ("LogPredictionSamples", "MetricSummaries", "ShareRunDir", "UploadCheckpoints", "WatchModel", "lw_callbacks")


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def model_artifact_records(run_root: Path) -> list[tuple[str, str]]:
    """(collection, digest) of every model artifact record, in every segment of the run."""
    found = []
    for folder in find_runs(run_root):
        for record in iter_records(next(folder.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "model":
                found.append((record.artifact.name, record.artifact.digest))
    return found


def check_everything_logged(run: RunRecords, kept: list[Path]) -> None:
    """What a user checks in the W&B UI after the all-five fit of ``scripts/all_five.py``."""
    last = STEPS_PER_EPOCH * EPOCHS - 1
    # WatchModel: every parameter's histograms at optimizer steps 0, 2, 4, ...
    for kind in ("gradients", "parameters"):
        for param in ("layer_1.weight", "layer_3.bias"):
            steps = {s for s, _ in run.series(f"{kind}/{param}")}
            assert steps == set(range(0, last + 1, LOG_FREQ)), (kind, param, sorted(steps))
    # LogPredictionSamples: captioned images and a table after every validation epoch
    sample_steps = sorted(s for s, _ in run.series("predictions/images"))
    assert sample_steps == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)], sample_steps
    assert sample_steps == sorted(s for s, _ in run.series("val_acc"))  # one step axis with the metrics
    assert len(run.rows("predictions/table")) == EPOCHS
    # MetricSummaries: explicit and derived summaries, keeping the x-axis
    val_loss, val_acc = run.metric("val_loss"), run.metric("val_acc")
    assert val_loss is not None and val_loss.summary == {"min"} and val_loss.step_metric == "trainer/global_step"
    assert val_acc is not None and val_acc.summary == {"max"}
    assert run.summary["val_loss"] == {"min": min(v for _, v in run.series("val_loss"))}
    assert run.summary["val_acc"] == {"max": max(v for _, v in run.series("val_acc"))}
    # UploadCheckpoints: one collection; best on the max val_acc; every kept file uploaded intact
    (collection,) = run.artifact_names(type="model")
    versions = run.artifacts(collection)
    best = run.resolve_artifact(collection, "best")
    scored = [v for v in versions if v.metadata.get("score") is not None]
    assert best.metadata["score"] == max(v.metadata["score"] for v in scored)
    assert run.resolve_artifact(collection, "latest") is versions[-1]
    check_kept_uploaded(run, kept)
    # LearningRateMonitor still logs beside us
    logged = run.keys()
    assert "lr-Adam" in logged


def check_kept_uploaded(run: RunRecords, kept: list[Path]) -> None:
    """Every checkpoint file ModelCheckpoint kept is in a version, byte for byte."""
    (collection,) = run.artifact_names(type="model")
    versions = run.artifacts(collection)
    digests = {e.digest for v in versions for e in v.entries}
    steps = {v.metadata.get("global_step") for v in versions}
    for path in kept:
        if path.name == "last.ckpt" and md5_b64(path) not in digests:
            # a last.ckpt saved at the step of an uploaded top-k file holds the same weights: skipped
            step = torch.load(path, map_location="cpu", weights_only=True)["global_step"]
            assert step in steps, f"last.ckpt at step {step} has no uploaded version at that step"
            continue
        assert md5_b64(path) in digests, f"{path.name} was kept by ModelCheckpoint but never uploaded"


@pytest.mark.parametrize(
    "launch",
    [
        "single",
        "ddp",
        pytest.param("ddp_spawn", marks=pytest.mark.slow),
        pytest.param("torchrun", marks=pytest.mark.slow),
    ],
)
def test_all_five_under_every_launcher(tmp_path: Path, launch: str) -> None:
    reports = run_ranks(
        "all_five.py", launch, "full",
        out_dir=tmp_path / "reports", launcher="torchrun" if launch == "torchrun" else "python", timeout=300,
    )
    assert [r["rank"] for r in reports] == ([0] if launch == "single" else [0, 1])
    assert all(r["outcome"] == "finished" for r in reports)
    runs = find_runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # exactly one run for the whole job
    run = read_run(runs[0])
    # ShareRunDir: every rank knows rank 0's run folder, id and WANDB_DIR, whatever the launcher
    for r in reports:
        assert (r["run_id"], r["run_dir"]) == (run.run_id, str(runs[0].resolve()))
        assert r["wandb_dir_env"] == str((tmp_path / "runs").resolve())
    check_everything_logged(run, [tmp_path / "ckpt" / name for name in reports[0]["kept"]])
    # one upload per file: no (collection, digest) logged twice, whatever the number of ranks
    records = model_artifact_records(tmp_path / "runs")
    assert len(records) == len(set(records)), records
    for r in reports:
        assert r["ours"] == [], f"rank {r['rank']}: {r['ours']}"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "interrupt"])
def test_preempted_then_resumed(tmp_path: Path, fault: str) -> None:
    (crashed,) = run_ranks("all_five.py", "single", fault, out_dir=tmp_path / "r1", returncode=1, timeout=300)
    assert crashed["outcome"] == ("RuntimeError" if fault == "crash" else "KeyboardInterrupt")
    assert crashed["kept"], "the crashed run saved no checkpoint"
    # everything saved before the crash reached the records, though training died
    first = read_run(find_runs(tmp_path / "runs")[0])
    check_kept_uploaded(first, [tmp_path / "ckpt" / name for name in crashed["kept"]])

    (resumed,) = run_ranks("all_five.py", "single", "resume", out_dir=tmp_path / "r2", timeout=300)
    assert resumed["outcome"] == "finished"
    segments = find_runs(tmp_path / "runs")
    assert len(segments) == 2 and {read_run(s).run_id for s in segments} == {"allfive01"}
    run = read_resumed(tmp_path / "runs", "allfive01")
    check_everything_logged(run, [tmp_path / "ckpt" / name for name in resumed["kept"]])
    records = model_artifact_records(tmp_path / "runs")
    assert len(records) == len(set(records)), f"a checkpoint was uploaded twice across the resume: {records}"
    # summaries are defined again in the resumed segment
    second = read_run(segments[1])
    assert second.metric("val_loss") is not None and second.metric("val_loss").summary == {"min"}  # type: ignore[union-attr]
    assert resumed["ours"] == [] and crashed["ours"] == []


def test_fit_validate_test_with_lightning_callbacks_bf16_and_accumulation() -> None:
    callbacks = [
        ShareRunDir(),
        ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=1),
        UploadCheckpoints(),
        MetricSummaries({"val_loss": "min"}),
        WatchModel(log="all", log_freq=1),
        LogPredictionSamples(num_samples=4, stages=["validation", "test"]),
        EarlyStopping(monitor="val_loss", patience=5),
        LearningRateMonitor(),
        RichProgressBar(),
    ]
    trainer = make_trainer(
        callbacks, precision="bf16-mixed", accumulate_grad_batches=2, enable_progress_bar=True, max_epochs=2
    )
    model, dm = DigitsClassifier(), DigitsDataModule(batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
        trainer.validate(model, datamodule=dm)
        trainer.test(model, datamodule=dm)
    ours = [str(w.message) for w in caught if any(name in str(w.message) for name in OURS)]
    assert ours == []
    run = finish_and_read()
    # 6 batches, accumulate 2 -> 3 optimizer steps per epoch: histograms at steps 0..5
    assert {s for s, _ in run.series("gradients/layer_1.weight")} == set(range(6))
    defined = [m.key for m in run.metrics if m.name]
    assert len(defined) == len(set(defined)), f"duplicate definitions: {defined}"
    assert run.metric("val_loss").summary == {"min"}  # type: ignore[union-attr]
    assert len(run.rows("predictions/table")) == 2 + 1  # two fit epochs and the validate() call
    assert len(run.rows("predictions_test/table")) == 1
    assert run.artifact_names(type="model")


def test_lightning_cli_config(tmp_path: Path) -> None:
    """examples/config.yaml wires all five through class_path / init_args; one short epoch."""
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)
    cmd = [
        sys.executable, str(REPO / "examples" / "cli.py"), "fit", "--config", str(REPO / "examples" / "config.yaml"),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    (folder,) = find_runs(tmp_path / "runs")
    run = read_run(folder)
    assert {"predictions/images", "gradients/layer_1.weight", "parameters/layer_3.bias"} <= run.keys()
    assert run.metric("val_loss").summary == {"min"} and run.metric("val_acc").summary == {"max"}  # type: ignore[union-attr]
    (collection,) = run.artifact_names(type="model")
    assert "cli" in {a for v in run.artifacts(collection) for a in v.aliases}
    assert (folder / "checkpoints").is_dir()  # ShareRunDir(checkpoints_in_run_dir=true)
