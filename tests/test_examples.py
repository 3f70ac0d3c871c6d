"""Every example runs, with fast settings, so none can rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_run_dir import recorded_writes, write_sweep_params

from lw_callbacks.records import find_runs, read_run

EXAMPLES_DIR = Path(__file__).parent.parent / "examples"
# digits.py, from_the_guide.py, sweep_ddp.py and cli.py have tests of their own (below, and in test_all_five.py)
OWN_TESTS = ("digits.py", "from_the_guide.py", "sweep_ddp.py", "cli.py")
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
    best_step = run.summary["val_acc.best_checkpoint_step"]
    assert best_step == run.summary["val_acc.best_step"]  # logged once per validation: one step
    best = run.resolve_artifact(collection, "best")
    assert f"step-{best_step}" in best.aliases
    assert best_step in [s for s, _ in run.series("predictions/table")]
    assert f"alias step-{best_step}) back as a local file" in out
    # the samples offline as a DataFrame: one row per (validation step, sample), as the tables logged them
    from lw_callbacks.records import samples_frame

    frame = samples_frame(run)
    tables = run.tables("predictions/table")
    steps = [s for s, _ in run.series("predictions/table")]
    assert len(frame) == sum(len(t.rows) for t in tables) and list(dict.fromkeys(frame["step"])) == steps
    by_step = [group for _, group in frame.groupby("step", sort=False)]
    assert all(list(g["id"]) == list(by_step[0]["id"]) for g in by_step)  # the same samples at every step
    assert all(list(g["prediction"]) == [r["prediction"] for r in t.rows] for g, t in zip(by_step, tables, strict=True))


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


RANK_LINE = re.compile(r"rank (\d+): lr=([0-9.e-]+) hidden=(\d+) parameters=(\d+)")


@pytest.mark.parametrize(
    ("launcher", "args", "swept"),
    [
        pytest.param("ddp", [], True, marks=pytest.mark.slow, id="ddp"),
        pytest.param("ddp", [], False, marks=pytest.mark.slow, id="ddp-no-sweep"),
        pytest.param("ddp_spawn", ["--strategy=ddp_spawn"], True, marks=pytest.mark.slow, id="ddp_spawn"),
        pytest.param("torchrun", [], True, marks=pytest.mark.slow, id="torchrun"),
        pytest.param("torchrun", ["--config-before-trainer"], True, marks=pytest.mark.slow, id="torchrun-before"),
        pytest.param("ddp", ["--config-before-trainer"], True, marks=pytest.mark.slow, id="ddp-before"),
    ],
)
def test_sweep_example_every_rank_trains_with_the_sweep(
    tmp_path: Path, launcher: str, args: list[str], swept: bool
) -> None:
    """One simulated sweep run of examples/sweep.yaml, offline, 2 CPU processes: the values the agent
    would hand to rank 0 are the ones every rank trains with, and the ones the run records."""
    sweep = yaml.safe_load((EXAMPLES_DIR / "sweep.yaml").read_text())["parameters"]
    chosen = {name: spec["values"][-1] for name, spec in sweep.items()}  # not the script's defaults
    assert chosen == {"lr": 0.03, "hidden": 128}
    env = dict(os.environ, LW_EXAMPLE_FAST="1")
    env.pop("WANDB_SERVICE", None)
    env.pop("WANDB_MODE", None)
    if swept:
        env["WANDB_SWEEP_PARAM_PATH"] = str(write_sweep_params(tmp_path / "params.yaml", chosen))
    script = str(EXAMPLES_DIR / "sweep_ddp.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, script, *args] if launcher == "torchrun" else [sys.executable, script, *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    ranks = {int(r): (float(lr), int(hidden), int(params)) for r, lr, hidden, params in RANK_LINE.findall(proc.stdout)}
    assert sorted(ranks) == [0, 1], output
    expected = (chosen["lr"], chosen["hidden"]) if swept else (0.01, 64)
    for lr, hidden, _ in ranks.values():
        assert (lr, hidden) == expected, output
    assert ranks[0][2] == ranks[1][2]  # the same model on every rank
    (run_dir,) = find_runs(tmp_path / "runs")
    config = read_run(run_dir).config
    assert (config["lr"], config["hidden"]) == expected
    for key, value in zip(("lr", "hidden"), expected, strict=True):
        assert set(recorded_writes(run_dir, key)) == {value}, (key, recorded_writes(run_dir, key))
    assert f"recorded config: lr={expected[0]} hidden={expected[1]}" in proc.stdout
