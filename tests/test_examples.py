"""Every example runs, with fast settings, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lw_callbacks.records import find_runs, read_run

EXAMPLES_DIR = Path(__file__).parent.parent / "examples"
# digits.py, from_the_guide.py and cli.py have tests of their own (below, and in test_all_five.py)
OWN_TESTS = ("digits.py", "from_the_guide.py", "cli.py")
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if p.name not in OWN_TESTS)


def run_example(script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an example as a user would, with fast settings; it must exit 0."""
    env = dict(os.environ, LW_EXAMPLE_FAST="1")
    env.pop("WANDB_SERVICE", None)
    env.pop("WANDB_MODE", None)  # the examples choose offline by themselves when not logged in
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script.name} failed\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path, tmp_path: Path) -> None:
    run_example(example, tmp_path)
    runs = find_runs(tmp_path)
    assert runs, f"{example.name} left no W&B run under its working directory"
    assert all(r.name.startswith("offline-run-") for r in runs)
    assert all(read_run(r).complete for r in runs)


def test_main_example_reports_what_was_logged(tmp_path: Path) -> None:
    proc = run_example(EXAMPLES_DIR / "digits.py", tmp_path)
    (run_dir,) = find_runs(tmp_path / "runs")
    run = read_run(run_dir)
    out = proc.stdout
    assert f"wandb sync {run.run_dir}" in out
    logged = run.keys()
    for key in ("val_acc", "predictions/images", "gradients/layer_1.weight", "parameters/layer_1.weight"):
        assert key in logged and key in out
    (collection,) = run.artifact_names(type="model")
    assert "best" in run.resolve_artifact(collection, "best").aliases
    assert f"{collection}:v0" in out
    assert set(run.summary["val_acc"]) == {"max"}
    # one step axis: the best val_acc's step names the best checkpoint, and its samples sit there
    best_step = run.summary["val_acc.best_step"]
    best = run.resolve_artifact(collection, "best")
    assert f"step-{best_step}" in best.aliases
    assert best_step in [s for s, _ in run.series("predictions/table")]
    assert f"alias step-{best_step}) back as a local file" in out


def test_the_guides_recipe_still_logs_everything_it_did(tmp_path: Path) -> None:
    """The guide's module, unchanged but for two marked edits, with one callback per guide snippet."""
    proc = run_example(EXAMPLES_DIR / "from_the_guide.py", tmp_path)
    (run_dir,) = find_runs(tmp_path / "runs")
    run = read_run(run_dir)
    logged = run.keys()
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):  # the guide's scalars, its names
        assert key in logged, key
    # define_metric("val_accuracy", summary="max"), without W&B code in the module
    assert run.summary["val_accuracy"] == {"max": max(v for _, v in run.series("val_accuracy"))}
    definition = run.metric("val_accuracy")
    assert definition is not None and definition.step_metric == "trainer/global_step"
    # the guide's sample callback: 20 captioned images and a table, after every validation
    val_steps = [s for s, _ in run.series("val_accuracy")]
    assert [s for s, _ in run.series("predictions/images")] == val_steps
    tables = run.tables("predictions/table")
    assert len(tables) == len(val_steps) and all(len(t.rows) == 20 for t in tables)
    # wandb_logger.watch(model): histograms and the graph
    assert {"gradients/layer_1.weight", "parameters/layer_3.bias"} <= logged
    assert run.summary["graph_0"]["_type"] == "graph-file"
    # log_model="all": every checkpoint a version, best and latest
    (collection,) = run.artifact_names(type="model")
    best = run.resolve_artifact(collection, "best")
    assert best.metadata["score"] == max(v.metadata["score"] for v in run.artifacts(collection))
    assert run.resolve_artifact(collection, "latest") is run.artifacts(collection)[-1]
    assert "best checkpoint back as a local file" in proc.stdout
