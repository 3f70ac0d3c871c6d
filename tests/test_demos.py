"""The modules Lightning ships (``<namespace>.demos``), unchanged, with all five callbacks appended.

``BoringModel``, ``DemoModel``, ``LightningTransformer`` and ``LightningLSTM`` run on small random data
under ``lightning.pytorch`` and ``pytorch_lightning``; the run's records are checked as a user would
look at them: samples where the module has a step that gives predictions (BoringModel's
``validation_step``, DemoModel's ``forward`` in ``trainer.predict``), histograms at the optimizer steps,
summaries of what the module logs, every checkpoint uploaded and ``best`` restorable, all on the one
``trainer/global_step`` axis. The transformer and LSTM demos have no validation step and a
``forward`` that does not take the batch, so no sample is logged for them, and the sample callback says
so once, at setup.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modules
import pytest
import torch
import wandb
from harness import make_logger
from torch.utils.data import DataLoader, Dataset

from lw_callbacks import (
    LogPredictionSamples,
    LWCallbacksWarning,
    MetricSummaries,
    ShareRunDir,
    UploadCheckpoints,
    WatchModel,
    restore_checkpoint,
)
from lw_callbacks.records import RunRecords, find_runs, read_run

LOG_FREQ = 2


class Tokens(Dataset):
    """Random token ids as the language-model demos read them: ``(inputs, targets)`` shifted by one."""

    def __init__(self, vocab: int, n: int = 32, block: int = 12) -> None:
        self.data = torch.randint(0, vocab, (n * block + 1,), generator=torch.Generator().manual_seed(0))
        self.n, self.block = n, block

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block
        return self.data[start:start + self.block], self.data[start + 1:start + self.block + 1]


def write_local_corpus() -> None:
    """The language-model demos' ``prepare_data`` tokenizes ``./data/wikitext-2.txt`` and downloads it only
    when it is missing: a small random text there keeps them offline."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    Path("data").mkdir(exist_ok=True)
    Path("data/wikitext-2.txt").write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(30)) + "\n"
    )


@dataclass
class Demo:
    name: str
    module: str  # where the class lives under <namespace>.demos
    kwargs: dict[str, Any]
    stage: str | None  # the stage whose samples are checked; None: the module gives no predictions
    logs: tuple[str, ...] = ()  # metrics the module logs
    watched: str = ""


DEMOS = [
    Demo("BoringModel", "boring_classes", {}, "validation", watched="layer.weight"),
    Demo("DemoModel", "boring_classes", {}, "predict", watched="l1.weight"),
    Demo("LightningTransformer", "transformer", {"vocab_size": 50}, None, watched="model.decoder.weight"),
    Demo("LightningLSTM", "lstm", {"vocab_size": 50}, None, logs=("train_loss",), watched="model.decoder.weight"),
]


def fit_demo(demo: Demo, namespace: str) -> tuple[Any, Any, list[str], RunRecords, dict[str, list[int]]]:
    L = modules.api(namespace)
    module = importlib.import_module(f"{namespace}.demos.{demo.module}")
    boring = importlib.import_module(f"{namespace}.demos.boring_classes")
    torch.manual_seed(0)
    model = getattr(module, demo.name)(**demo.kwargs)
    seen: dict[str, list[int]] = {"optimizer": [], "validation": []}

    class Probe(L.Callback):  # type: ignore[misc,name-defined]
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if trainer.global_step % LOG_FREQ == 0:
                seen["optimizer"].append(trainer.fit_loop.epoch_loop._batches_that_stepped)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                seen["validation"].append(trainer.fit_loop.epoch_loop._batches_that_stepped)

    summaries = MetricSummaries({name: "min" for name in demo.logs}) if demo.logs else MetricSummaries()
    callbacks = [LogPredictionSamples(num_samples=4, stages=[demo.stage or "validation"]), summaries,
                 WatchModel(log="all", log_freq=LOG_FREQ), UploadCheckpoints(), ShareRunDir(), Probe()]
    trainer = L.Trainer(logger=make_logger(namespace=namespace), callbacks=callbacks, max_epochs=2,
                        limit_train_batches=4, limit_val_batches=2, log_every_n_steps=1, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir="lightning")
    data: dict[str, Any] = {}
    if demo.name == "DemoModel":
        data["train_dataloaders"] = DataLoader(boring.RandomDataset(32, 64), batch_size=4)
    elif demo.module in ("lstm", "transformer"):
        write_local_corpus()
        data["train_dataloaders"] = DataLoader(Tokens(demo.kwargs["vocab_size"]), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, **data)
        if demo.stage == "predict":
            trainer.predict(model, DataLoader(boring.RandomDataset(32, 8), batch_size=4))
    wandb.finish()
    (run,) = find_runs("runs")
    ours = [str(w.message) for w in caught
            if issubclass(w.category, LWCallbacksWarning) or "lw_callbacks" in str(w.filename)]
    return trainer, callbacks, ours, read_run(run), seen


def steps(rec: RunRecords, key: str) -> list[int]:
    return [int(s) for s, _ in rec.series(key)]


@pytest.mark.parametrize("namespace", modules.NAMESPACES)
@pytest.mark.parametrize(
    "demo", [pytest.param(d, id=d.name, marks=[pytest.mark.slow] if d.stage is None else []) for d in DEMOS]
)
def test_lightning_demo_module_with_all_five(demo: Demo, namespace: str) -> None:
    trainer, callbacks, ours, rec, seen = fit_demo(demo, namespace)
    if demo.stage is None:  # said once: no validation_step, so no sample can be logged, and what to do
        (said,) = ours
        assert said.startswith(f"LogPredictionSamples: `stages` includes 'validation', but {demo.name} has no "
                               "`validation_step`") and "stages=" in said
    else:  # only the documented note: these demos' inputs are feature vectors, shown in the table
        assert all("are not images" in m for m in ours), ours
    # samples: at every validation (the step of its metrics), or once for trainer.predict
    if demo.stage == "validation":
        assert seen["validation"] and steps(rec, "predictions/table") == seen["validation"]
    elif demo.stage == "predict":
        assert steps(rec, "predictions_predict/table") == [trainer.fit_loop.epoch_loop._batches_that_stepped]
    else:
        assert not [k for k in rec.keys() if k.startswith("predictions")]  # noqa: SIM118
    # histograms at every LOG_FREQ-th optimizer step, at the step Lightning logs that batch's metrics at
    for kind in ("gradients", "parameters"):
        assert steps(rec, f"{kind}/{demo.watched}") == seen["optimizer"], kind
    # summaries of what the module logs, on the same axis
    for name in demo.logs:
        series = rec.series(name)
        assert set(seen["optimizer"]) <= {int(s) for s, _ in series}, "histograms off the metrics' step axis"
        assert rec.metric(name).summary == {"min"}  # type: ignore[union-attr]
        assert rec.summary[f"{name}.best_step"] == min(series, key=lambda sv: sv[1])[0]
    # every checkpoint Lightning's default ModelCheckpoint kept is uploaded; `best` is its best_model_path
    (mc,) = [cb for cb in trainer.checkpoint_callbacks]
    (collection,) = rec.artifact_names(type="model")
    digests = {e.digest for v in rec.artifacts(collection) for e in v.entries}
    for path in Path(mc.dirpath).glob("*.ckpt"):
        assert base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode() in digests, path
    restored = restore_checkpoint(f"{collection}:best", run_dir=rec.run_dir)
    assert restored.read_bytes() == Path(mc.best_model_path).read_bytes()
    share = callbacks[4]
    assert isinstance(share, ShareRunDir) and share.run_dir is not None
    assert share.run_dir.resolve() == Path(rec.run_dir).resolve()
