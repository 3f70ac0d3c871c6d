"""Every example runs, with fast settings, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lw_callbacks.records import find_runs, read_run

EXAMPLES_DIR = Path(__file__).parent.parent / "examples"
# digits.py and cli.py have tests of their own (below, and in test_all_five.py)
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if p.name not in ("digits.py", "cli.py"))


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
