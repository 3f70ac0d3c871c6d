"""LogPredictionSamples on real offline runs, checked from the run's own records."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import wandb
from harness import build_with_cli, fit_digits, isolated_wandb, make_trainer, run_ranks
from lightning.pytorch import Callback, LightningModule
from PIL import Image
from torch.nn import CrossEntropyLoss, Linear
from torch.nn import functional as F
from torch.optim import Adam
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.functional import accuracy

from lw_callbacks.demo import CLASS_NAMES, DigitsClassifier, DigitsDataModule
from lw_callbacks.predictions import LogPredictionSamples
from lw_callbacks.records import RunRecords, find_runs, read_run

STEP = "trainer/global_step"


# ---------------------------------------------------------------- the W&B guide's module, unchanged
# but for the input size (8x8 digits instead of 28x28 MNIST) and torchmetrics' current `accuracy`
# signature (task / num_classes are required since torchmetrics 0.11).
class My_LitModule(LightningModule):
    def __init__(self, n_classes=10, n_layer_1=128, n_layer_2=256, lr=1e-3):
        """method used to define the model parameters"""
        super().__init__()

        # digits images are (1, 8, 8) (channels, width, height)
        self.layer_1 = Linear(8 * 8, n_layer_1)
        self.layer_2 = Linear(n_layer_1, n_layer_2)
        self.layer_3 = Linear(n_layer_2, n_classes)

        self.loss = CrossEntropyLoss()
        self.lr = lr

        # save hyper-parameters to self.hparams (auto-logged by W&B)
        self.save_hyperparameters()

    def forward(self, x):
        """method used for inference input -> output"""

        # (b, 1, 8, 8) -> (b, 1*8*8)
        batch_size, channels, width, height = x.size()  # noqa: RUF059 - the guide's line
        x = x.view(batch_size, -1)

        # let's do 3 x (linear + relu)
        x = F.relu(self.layer_1(x))
        x = F.relu(self.layer_2(x))
        x = self.layer_3(x)
        return x

    def training_step(self, batch, batch_idx):
        """needs to return a loss from a single batch"""
        _, loss, acc = self._get_preds_loss_accuracy(batch)

        # Log loss and metric
        self.log("train_loss", loss)
        self.log("train_accuracy", acc)
        return loss

    def validation_step(self, batch, batch_idx):
        """used for logging metrics"""
        preds, loss, acc = self._get_preds_loss_accuracy(batch)

        # Log loss and metric
        self.log("val_loss", loss)
        self.log("val_accuracy", acc)
        return preds

    def configure_optimizers(self):
        """defines model optimizer"""
        return Adam(self.parameters(), lr=self.lr)

    def _get_preds_loss_accuracy(self, batch):
        """convenience function since train/valid/test steps are similar"""
        x, y = batch
        logits = self(x)
        preds = torch.argmax(logits, dim=1)
        loss = self.loss(logits, y)
        acc = accuracy(preds, y, task="multiclass", num_classes=self.hparams.n_classes)
        return preds, loss, acc


# ---------------------------------------------------------------- helpers
class Snapshots(Callback):
    """Keeps a copy of the weights and the global step at the end of every validation epoch."""

    def __init__(self) -> None:
        self.taken: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            # the step Lightning logs this validation's metrics at: one below global_step at epoch end
            self.taken.append((trainer.global_step - 1, copy.deepcopy(pl_module.state_dict())))


def predict_ids(model: LightningModule, state: dict[str, torch.Tensor], x: torch.Tensor) -> list[int]:
    """The model's own predictions for inputs ``x`` with weights ``state``, computed here, not by the callback."""
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(x).argmax(dim=1).tolist()


def parse_caption(caption: str) -> tuple[str, str]:
    assert caption.startswith("Ground Truth: ") and " - Prediction: " in caption, caption
    truth, pred = caption[len("Ground Truth: ") :].split(" - Prediction: ")
    return truth, pred


@dataclass
class Fitted:
    records: RunRecords
    snapshots: list[tuple[int, dict[str, torch.Tensor]]]
    model: LightningModule
    datamodule: Any
    callback: LogPredictionSamples
    warnings: list[str] = field(default_factory=list)


def isolated_fit(root: Path, callbacks: list[Callback], model: LightningModule, dm: Any, **kwargs: Any) -> Fitted:
    """Fit in a W&B-isolated folder of its own (for module-scoped fixtures) and read the run back."""
    import warnings

    snaps = Snapshots()
    with isolated_wandb(root):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = make_trainer([*callbacks, snaps], **kwargs)
            trainer.fit(model, datamodule=dm)
            wandb.finish()
        runs = find_runs(root / "runs")
        assert len(runs) == 1, runs
        records = read_run(runs[0])
    callback = next(c for c in callbacks if isinstance(c, LogPredictionSamples))
    return Fitted(records, snaps.taken, model, dm, callback, [str(w.message) for w in caught])


def staged_png(records: RunRecords, key: str, cell: dict[str, Any]) -> Image.Image:
    """The PNG an image cell of the inputs table points at, from the artifact's staged copy."""
    (inputs,) = records.tables(key)
    entry = inputs.entry(cell["path"])
    assert entry.local_path and os.path.exists(entry.local_path)
    return Image.open(entry.local_path)


# ---------------------------------------------------------------- the guide's module, unchanged
@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    torch.manual_seed(0)
    callback = LogPredictionSamples(num_samples=10, class_names=CLASS_NAMES)
    return isolated_fit(
        tmp_path_factory.mktemp("guide"), [callback], My_LitModule(), DigitsDataModule(batch_size=32), max_epochs=3
    )


def test_same_ids_every_epoch_at_the_trainer_step(guide: Fitted) -> None:
    rec = guide.records
    steps = [step for step, _ in guide.snapshots]
    assert steps == [5, 11, 17]  # 6 training batches per epoch; Lightning logs validation at global_step - 1
    assert [s for s, _ in rec.series("val_accuracy")] == steps  # the samples sit at their validation's metrics
    assert [s for s, _ in rec.series("predictions/images")] == steps
    assert [s for s, _ in rec.series("predictions/table")] == steps
    tables = rec.tables("predictions/table")
    assert len(tables) == 3
    ids = [[row["id"] for row in t.rows] for t in tables]
    assert ids[0] == ids[1] == ids[2]
    assert len(ids[0]) == 10 and len(set(ids[0])) == 10
    # spread over the 3 validation batches of 32 actually run, from the first example to the last
    assert ids[0][0] == 0 and ids[0][-1] == 95
    # the inputs (with the pixels) are logged once, at the first logged epoch
    assert [s for s, _ in rec.series("predictions/inputs")] == [5]
    (inputs,) = rec.tables("predictions/inputs")
    assert [row["id"] for row in inputs.rows] == ids[0]


def test_captions_are_the_models_own_predictions(guide: Fitted) -> None:
    rec = guide.records
    val_set = guide.datamodule.val_set
    ids = [row["id"] for row in rec.tables("predictions/table")[0].rows]
    x = torch.stack([val_set[i][0] for i in ids])
    truth = [int(val_set[i][1]) for i in ids]
    images = rec.series("predictions/images")
    tables = rec.tables("predictions/table")
    changed = False
    for (step, state), (img_step, panel), table in zip(guide.snapshots, images, tables, strict=True):
        assert img_step == step
        expected = predict_ids(guide.model, state, x)
        captions = [parse_caption(c) for c in panel["captions"]]
        assert captions == [(CLASS_NAMES[t], CLASS_NAMES[p]) for t, p in zip(truth, expected, strict=True)]
        assert [(r["ground truth"], r["prediction"]) for r in table.rows] == captions
        changed |= expected != predict_ids(guide.model, guide.snapshots[0][1], x)
    assert changed, "predictions never changed between epochs: the check above could not tell epochs apart"


def test_images_are_uploaded_once(guide: Fitted) -> None:
    rec = guide.records
    (inputs,) = rec.tables("predictions/inputs")
    pngs = [e for e in inputs.entries if e.path.endswith(".png")]
    assert len(pngs) == 10 and all(e.local_path and os.path.getsize(e.local_path) == e.size for e in pngs)
    first = staged_png(rec, "predictions/inputs", inputs.rows[0]["image"])
    assert first.size == (8, 8) and first.mode == "L"
    for table in rec.tables("predictions/table"):
        # each epoch's table holds no image file: its "sample" column references the inputs table's rows
        assert not [e for e in table.entries if e.path.endswith(".png")]
        refs = [e for e in table.entries if e.ref]
        assert len(refs) == 1
        assert refs[0].ref == f"wandb-client-artifact://{inputs.client_id}/predictions/inputs.table.json"
        assert refs[0].local_path is None
        assert table.data["column_types"]["params"]["type_map"]["sample"]["wb_type"] == "foreignIndex"
        assert [r["sample"] for r in table.rows] == list(range(10))
    # the captioned-image panel: one PNG per sample per logged epoch in the run's files
    panel_pngs = [f for f in rec.files if f.startswith("media/images/") and f.endswith(".png")]
    assert len(panel_pngs) == 10 * 3


def test_sanity_check_is_not_logged_by_default(guide: Fitted) -> None:
    # make_trainer turns the sanity check off; the every_n_epochs test below runs it: here, step 0 is absent
    assert all(step != 0 for step, _ in guide.records.series("predictions/images"))


# ---------------------------------------------------------------- dict batches, RGB, logits, class scores
class DictRGB(Dataset):
    """Digits as RGB uint8 channel-last images in dict batches: {"image": (8, 8, 3), "label": y}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        gray = (x[:, 0] * 255).to(torch.uint8)
        self.images = torch.stack([gray, 255 - gray, gray // 2], dim=-1)  # a real 3-colour image
        self.labels = y

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


class DictDigits(DigitsDataModule):
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.train_set is not None and self.val_set is not None
        self.train_dict = DictRGB(*self.train_set.tensors)
        self.val_dict = DictRGB(*self.val_set.tensors)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dict, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dict, batch_size=self.batch_size)


class DictLogitsModule(DigitsClassifier):
    """Reads dict batches of RGB uint8 images; validation_step returns a dict with logits."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_1 = torch.nn.Linear(8 * 8 * 3, self.hparams.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float() / 255.0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}


def test_dict_batches_rgb_logits_and_scores(tmp_path: Path) -> None:
    names = [f"digit-{i}" for i in range(10)]
    callback = LogPredictionSamples(num_samples=5, class_names=names, key="digits")
    snaps = Snapshots()
    model, dm = DictLogitsModule(), DictDigits(batch_size=32)
    _, rec = fit_digits([callback, snaps], model=model, datamodule=dm, max_epochs=1)
    (table,) = rec.tables("digits/table")
    score_cols = [f"score_{n}" for n in names]
    assert table.columns == ["id", "sample", "ground truth", "prediction", *score_cols]
    ids = [r["id"] for r in table.rows]
    x = torch.stack([dm.val_dict[i]["image"] for i in ids])
    expected = predict_ids(model, snaps.taken[0][1], x)
    state = snaps.taken[0][1]
    probs = torch.softmax(predict_logits(model, state, x), dim=1)
    for row, pred, p in zip(table.rows, expected, probs, strict=True):
        assert row["prediction"] == names[pred]
        assert row["ground truth"] == names[int(dm.val_dict[row["id"]]["label"])]
        scores = [row[c] for c in score_cols]
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert scores == pytest.approx(p.tolist(), abs=1e-5)
    (_, panel), = rec.series("digits/images")
    assert [parse_caption(c)[1] for c in panel["captions"]] == [names[p] for p in expected]
    (inputs,) = rec.tables("digits/inputs")
    png = staged_png(rec, "digits/inputs", inputs.rows[1]["image"])
    assert png.mode == "RGB" and png.size == (8, 8)
    assert np.array_equal(np.asarray(png), dm.val_dict[ids[1]]["image"].numpy())  # uint8 pixels kept as they are


def predict_logits(model: LightningModule, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------- no predictions returned: forward on the chosen rows
class LossOnlyGray(DigitsClassifier):
    """(N, H, W) grayscale floats in [-50, 50] with a NaN and an inf pixel; validation_step returns the loss only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nan_to_num(x, nan=0.0, posinf=50.0))

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


class GrayDigits(DigitsDataModule):
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.val_set is not None
        x, y = self.val_set.tensors
        x = x[:, 0] * 100 - 50
        x[:, 0, 0] = float("nan")
        x[:, 7, 7] = float("inf")
        self.val_set = TensorDataset(x, y)


def test_forward_fallback_grayscale_any_range_and_nan(tmp_path: Path) -> None:
    callback = LogPredictionSamples(num_samples=4)
    snaps = Snapshots()
    model, dm = LossOnlyGray(), GrayDigits(batch_size=32)
    _, rec = fit_digits([callback, snaps], model=model, datamodule=dm, max_epochs=1)
    (table,) = rec.tables("predictions/table")
    ids = [r["id"] for r in table.rows]
    x = torch.stack([dm.val_set[i][0] for i in ids])
    expected = predict_ids(model, snaps.taken[0][1], x)
    assert [r["prediction"] for r in table.rows] == expected
    (_, panel), = rec.series("predictions/images")
    assert [int(parse_caption(c)[1]) for c in panel["captions"]] == expected
    (inputs,) = rec.tables("predictions/inputs")
    png = np.asarray(staged_png(rec, "predictions/inputs", inputs.rows[0]["image"]))
    assert png.shape == (8, 8)
    assert png[0, 0] == 0 and png[7, 7] == 255  # NaN drawn black, inf white
    assert 0 < png[1:7, 1:7].max() <= 255  # the rest scaled from [-50, 50]


# ---------------------------------------------------------------- inputs that are not images
class VectorDigits(DigitsDataModule):
    """Feature vectors (N, 64) instead of images."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        assert self.train_set is not None and self.val_set is not None
        self.train_set = TensorDataset(self.train_set.tensors[0].reshape(-1, 64), self.train_set.tensors[1])
        self.val_set = TensorDataset(self.val_set.tensors[0].reshape(-1, 64), self.val_set.tensors[1])


def test_feature_vectors_go_into_the_table_as_values(tmp_path: Path) -> None:
    callback = LogPredictionSamples(num_samples=3)
    model, dm = DigitsClassifier(), VectorDigits(batch_size=32)
    with pytest.warns(UserWarning, match="not images"):
        _, rec = fit_digits([callback], model=model, datamodule=dm, max_epochs=2)
    keys = rec.keys()
    assert "predictions/images" not in keys
    (inputs,) = rec.tables("predictions/inputs")
    assert inputs.columns == ["id", "input", "ground truth"]
    assert not [e for e in inputs.entries if e.path.endswith(".png")]
    row = inputs.rows[0]
    values = [float(v) for v in row["input"].split()]
    assert values == pytest.approx(dm.val_set[row["id"]][0].tolist(), abs=1e-6)
    assert len(rec.tables("predictions/table")) == 2


# ---------------------------------------------------------------- every_n_epochs, sanity check, test stage
def test_every_n_epochs_sanity_check_and_test_stage(tmp_path: Path) -> None:
    callback = LogPredictionSamples(num_samples=4, every_n_epochs=2, stages=["validation", "test"], log_table=False)
    model, dm = DigitsClassifier(), DigitsDataModule(batch_size=32)
    trainer = make_trainer([callback], max_epochs=3, num_sanity_val_steps=1, limit_test_batches=2)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    wandb.finish()
    rec = read_run(find_runs("runs")[0])
    # epoch 1 (the 2nd), as check_val_every_n_epoch=2 counts; not epoch 0 or 2, not the sanity check
    assert [s for s, _ in rec.series("predictions/images")] == [11]
    assert [s for s, _ in rec.series("predictions_test/images")] == [18]  # test logs at Lightning's step
    keys = rec.keys()
    assert "predictions/table" not in keys and not rec.tables("predictions/inputs")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, r"num_samples=0.*>= 1"),
        ({"every_n_epochs": 0}, r"every_n_epochs=0.*>= 1"),
        ({"stages": ["train"]}, r"unknown stage.*'train'.*validation.*test.*predict"),
        ({"stages": "valid"}, r"unknown stage.*'valid'"),
        ({"class_names": [0, 1]}, r"class_names.*strings"),
    ],
)
def test_construction_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LogPredictionSamples(**kwargs)


class FiveD(DigitsDataModule):
    def val_dataloader(self) -> DataLoader:
        x, y = self.val_set.tensors  # type: ignore[union-attr]
        return DataLoader(TensorDataset(x[:, None], y), batch_size=16)


class WrongLength(DigitsClassifier):
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.zeros(len(batch[1]) + 1, dtype=torch.long)


@pytest.mark.parametrize(
    ("callback_kwargs", "model", "dm", "match"),
    [
        ({}, DigitsClassifier, FiveD, r"shape \(16, 1, 1, 8, 8\).*neither an image batch"),
        ({}, WrongLength, DigitsDataModule, r"step output is a Tensor of shape \(17,\).*holds 16 examples"),
        ({"class_names": ["a", "b", "c"]}, DigitsClassifier, DigitsDataModule, r"class_names=<3 names>.*at least"),
    ],
)
def test_unusable_first_batch_fails_clearly(callback_kwargs: dict, model: type, dm: type, match: str) -> None:
    trainer = make_trainer([LogPredictionSamples(**callback_kwargs)], max_epochs=1, limit_train_batches=1)
    with pytest.raises(ValueError, match=match):
        trainer.validate(model(), datamodule=dm(batch_size=16))


class EmptyVal(DigitsDataModule):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=8)


def test_empty_validation_set_logs_nothing_and_warns_once(recwarn: pytest.WarningsRecorder) -> None:
    _, rec = fit_digits([LogPredictionSamples()], datamodule=EmptyVal(batch_size=32), max_epochs=2)
    ours = [w for w in recwarn if "LogPredictionSamples" in str(w.message)]
    assert len(ours) == 1 and "ran no batch" in str(ours[0].message)
    keys = rec.keys()
    assert not any(k.startswith("predictions") for k in keys)
    assert not rec.artifacts(type="run_table")


# ---------------------------------------------------------------- DDP, CLI, state key
@pytest.mark.slow
def test_ddp_logs_rank_zero_samples_once(tmp_path: Path) -> None:
    reports = run_ranks("predictions_ddp.py", out_dir=tmp_path / "reports", timeout=240)
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 for r in reports)
    runs = find_runs(tmp_path / "runs")
    assert len(runs) == 1
    rec = read_run(runs[0])
    steps = [s for s, _ in rec.series("predictions/images")]
    assert steps == [3, 7]  # once per epoch, from one process, at the validation metrics' step
    tables = rec.tables("predictions/table")
    assert len(tables) == 2 and len(rec.tables("predictions/inputs")) == 1
    ids = [[r["id"] for r in t.rows] for t in tables]
    assert ids[0] == ids[1] == reports[0]["ids"]
    # rank 0's shard of an unshuffled DistributedSampler: dataset positions 0, 2, 4, ...
    assert ids[0] == [2 * p for p in reports[0]["positions"]]


def test_lightning_cli_builds_it(tmp_path: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lw_callbacks.predictions.LogPredictionSamples
  init_args:
    num_samples: 8
    every_n_epochs: 2
    key: samples
    class_names: [zero, one, two, three, four, five, six, seven, eight, nine]
    log_images: false
    stages: [validation, test]
    input_key: image
""",
        tmp_path,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, LogPredictionSamples)]
    assert callback.num_samples == 8 and callback.every_n_epochs == 2 and callback.key == "samples"
    assert callback.class_names is not None and callback.class_names[9] == "nine"
    assert callback.log_images is False and callback.stages == ("validation", "test")
    assert callback.input_key == "image"


def test_state_key_tells_instances_apart() -> None:
    a, b = LogPredictionSamples(key="a"), LogPredictionSamples(key="b")
    c = LogPredictionSamples(key="a", stages=["test"])
    assert len({a.state_key, b.state_key, c.state_key}) == 3


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Iterator[None]:
    import logging

    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def test_state_key_names_the_options_which_are_read_only() -> None:
    a, b = LogPredictionSamples(key="a"), LogPredictionSamples(key="b")
    assert a.state_key != b.state_key == LogPredictionSamples(key="b").state_key
    with pytest.raises(AttributeError, match=r"LogPredictionSamples\.key is read-only.*key='b'"):
        a.key = "b"
    assert a.key == "a"
