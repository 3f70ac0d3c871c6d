"""The first media log of a process: no pandas import, and the same answers from W&B's DataFrame check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb

from lw_callbacks._wandb import skip_pandas_import

SCRIPT = """
import json, sys
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from lw_callbacks import LogPredictionSamples, WatchModel
from lw_callbacks.demo import DigitsClassifier
from lw_callbacks.records import find_runs, read_run
import torch, wandb
from torch.utils.data import DataLoader, TensorDataset

def loader():  # not the digits: scikit-learn, which loads them, imports pandas itself
    return DataLoader(TensorDataset(torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))), batch_size=16)

trainer = Trainer(
    logger=WandbLogger(save_dir=sys.argv[1], project="first-log"),
    callbacks=[WatchModel(log="all", log_freq=2), LogPredictionSamples(num_samples=4)],
    max_epochs=2, limit_train_batches=4, limit_val_batches=2, log_every_n_steps=1, accelerator="cpu",
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    default_root_dir=sys.argv[1],
)
trainer.fit(DigitsClassifier(), train_dataloaders=loader(), val_dataloaders=loader())
wandb.finish()
imported = "pandas" in sys.modules
run = read_run(find_runs(sys.argv[1])[0])
print("RESULT " + json.dumps({
    "pandas": imported,
    "histograms": [s for s, _ in run.series("gradients/layer_1.weight")],
    "images": [s for s, _ in run.series("predictions/images")],
    "tables": [s for s, _ in run.series("predictions/table")],
}))
"""


def test_a_fit_logging_histograms_images_and_tables_imports_no_pandas(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")])
    env.pop("WANDB_SERVICE", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["histograms"] == [0, 2, 4, 6]
    assert len(result["images"]) == 2 and result["tables"] == result["images"]
    assert result["pandas"] is False


def test_the_dataframe_check_answers_as_before() -> None:
    pd = pytest.importorskip("pandas", reason="pandas is not a dependency; the check matters where it is installed")

    skip_pandas_import()
    skip_pandas_import()  # once is enough; a second call wraps nothing again
    check = wandb.util.is_pandas_data_frame
    assert getattr(check, "_lw_no_import", False)
    assert check(pd.DataFrame({"a": [1]}))
    assert not check(pd.Series([1])) and not check([1, 2]) and not check(wandb.Histogram([1.0, 2.0]))
    table = wandb.Table(dataframe=pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert table.columns == ["a", "b"] and len(table.data) == 2
