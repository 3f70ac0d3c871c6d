"""LogPredictionSamples on modules as their users write them: an autoencoder shaped like Lightning's
example (``predict=``, ``predict_step``, reconstructions), NaN scores, and a segmenter with an ignore
label; everything read back from the run's records."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import modules
import numpy as np
import pytest
import torch
import wandb
from harness import build_with_cli, finish_and_read, make_logger, make_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from modules import (
    VOID,
    LitAutoEncoder,
    LitAutoEncoderWithPredictStep,
    UNetLike,
    UNetLikeReturnsLogits,
    VoidShapes,
    reconstruct,
)
from PIL import Image
from test_prediction_tasks import panel_class_labels
from torch.utils.data import DataLoader

from lw_callbacks import ConfigurationError, LogPredictionSamples, LWCallbacksWarning
from lw_callbacks.core.tasks.reconstruction import GAP
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.demo_tasks import SHAPE_NAMES
from lw_callbacks.records import RunRecords


class Snapshots(Callback):
    """The weights at the end of every validation run of the fit (not the sanity check)."""

    def __init__(self) -> None:
        self.taken: list[dict[str, torch.Tensor]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.taken.append(copy.deepcopy(pl_module.state_dict()))


class SanityProbe(Callback):
    def __init__(self) -> None:
        self.started = self.ended = False
        self.optimizer_steps = 0

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = True

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.ended = True

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.optimizer_steps += 1


def run_file(rec: RunRecords, path: str) -> Path:
    return rec.run_dir / "files" / path


# ---------------------------------------------------------------- the autoencoder
def fit_autoencoder(
    model: LightningModule, callback: LogPredictionSamples, **kwargs: Any
) -> tuple[tuple[Trainer, Any, Snapshots], RunRecords]:
    snaps = Snapshots()
    dm = DigitsDataModule(batch_size=32)
    options: dict[str, Any] = {"max_epochs": 3, "limit_train_batches": 3, "limit_val_batches": 2,
                               "num_sanity_val_steps": 2}
    options.update(kwargs)
    trainer = make_trainer([callback, snaps], **options)
    trainer.fit(model, datamodule=dm)
    return (trainer, dm, snaps), finish_and_read()


def check_reconstructions(rec: RunRecords, model: LightningModule, dm: Any, snaps: Snapshots) -> None:
    metric_steps = [int(s) for s, _ in rec.series("val_loss")]
    assert len(metric_steps) == 3
    assert [int(s) for s, _ in rec.series("predictions/table")] == metric_steps  # every validation
    assert [int(s) for s, _ in rec.series("predictions/images")] == metric_steps
    (inputs,) = rec.tables("predictions/inputs")
    assert inputs.columns == ["id", "image", "ground truth"]
    tables = rec.tables("predictions/table")
    for table, weights, (_, panel) in zip(tables, snaps.taken, rec.series("predictions/images"), strict=True):
        assert table.columns == ["id", "sample", "ground truth", "reconstruction", "mse"]
        probe = copy.deepcopy(model)
        probe.load_state_dict(weights)
        probe.eval()
        for row, caption in zip(table.rows, panel["captions"], strict=True):
            x = dm.val_set[row["id"]][0]
            with torch.no_grad():
                expected = probe(x.view(1, -1)).view_as(x)
            assert row["mse"] == pytest.approx(float(((expected - x) ** 2).mean()), rel=1e-4, abs=1e-7)
            assert row["ground truth"] == int(dm.val_set[row["id"]][1])
            assert caption == f"Ground Truth: {row['ground truth']} - Input | Reconstruction - MSE {row['mse']:.4g}"
            # the reconstruction as an image, on the input's [0, 1] scale
            entry = table.entry(row["reconstruction"]["path"])  # in the table's artifact
            assert entry.local_path is not None
            png = np.asarray(Image.open(entry.local_path))
            want = (np.clip(expected[0].numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)
            assert png.shape == (8, 8) and np.abs(png.astype(int) - want).max() <= 1
        # the panel: each input beside its reconstruction
        assert (panel["width"], panel["height"]) == (16 + GAP, 8)
    first, last = ([r["mse"] for r in t.rows] for t in (tables[0], tables[-1]))
    assert first != last


def test_autoencoder_with_predict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LitAutoEncoder()
    (_, dm, snaps), rec = fit_autoencoder(model, LogPredictionSamples(num_samples=4, predict=reconstruct))
    check_reconstructions(rec, model, dm, snaps)


def test_autoencoder_with_its_predict_step(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = LitAutoEncoderWithPredictStep()
    with caplog.at_level(logging.INFO):
        (_, dm, snaps), rec = fit_autoencoder(model, LogPredictionSamples(num_samples=4))
    said = [r.getMessage() for r in caplog.records if "predict_step" in r.getMessage()]
    assert len(said) == 1 and "LitAutoEncoderWithPredictStep.predict_step" in said[0], said
    check_reconstructions(rec, model, dm, snaps)


def test_autoencoder_without_a_way_to_predict_fails_in_the_sanity_check() -> None:
    probe = SanityProbe()
    trainer = make_trainer([LogPredictionSamples(num_samples=4), probe], num_sanity_val_steps=2)
    with pytest.raises(ConfigurationError) as info:
        trainer.fit(LitAutoEncoder(), datamodule=DigitsDataModule(batch_size=32))
    assert probe.started and not probe.ended, "not raised during the sanity check"
    assert trainer.global_step == 0 and probe.optimizer_steps == 0
    text = str(info.value)
    assert "pl_module(x)" in text and "Tensor of shape (4, 1, 8, 8)" in text
    assert "predict=" in text and "predict_step" in text, text
    wandb.finish()


def test_autoencoder_without_a_sanity_check_warns_once_what_to_pass() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer([LogPredictionSamples(num_samples=4)], max_epochs=2, num_sanity_val_steps=0)
        trainer.fit(LitAutoEncoder(), datamodule=DigitsDataModule(batch_size=32))
    assert trainer.current_epoch == 2  # the fit ran to its end
    ours = [str(w.message) for w in caught if "LogPredictionSamples" in str(w.message)]
    assert len(ours) == 1, ours
    assert "predict=" in ours[0] and "predict_step" in ours[0] and "no more validation samples" in ours[0]
    assert "keep the sanity check" not in ours[0]
    rec = finish_and_read()
    keys = rec.keys()
    assert "predictions/table" not in keys


def test_a_predict_path_that_does_not_import_fails_at_setup() -> None:
    probe = SanityProbe()
    trainer = make_trainer([LogPredictionSamples(predict="no_such_package.predict"), probe])
    with pytest.raises(ConfigurationError, match=r"predict='no_such_package.predict'.*cannot import"):
        trainer.fit(LitAutoEncoder(), datamodule=DigitsDataModule(batch_size=32))
    assert not probe.started
    wandb.finish()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"predict": 5}, "predict=5"),
        ({"predict": "reconstruct"}, "predict='reconstruct'"),
        ({"ignore_index": "250"}, "ignore_index='250'"),
        ({"ignore_index": [250, 1.5]}, "ignore_index=[250, 1.5]"),
        ({"ignore_index": True}, "ignore_index=True"),
    ],
)
def test_new_options_are_checked_at_construction(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=re_escape(argument)):
        LogPredictionSamples(**kwargs)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_lightning_cli_sets_predict_and_ignore_index(tmp_path: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lw_callbacks.LogPredictionSamples
  init_args:
    predict: modules.reconstruct
    ignore_index: [250, 255]
- class_path: lw_callbacks.LogPredictionSamples
  init_args:
    key: other
    ignore_index: 250
""",
        tmp_path,
    )
    first, second = [c for c in cli.trainer.callbacks if isinstance(c, LogPredictionSamples)]
    assert first.predict in ("modules.reconstruct", reconstruct)  # jsonargparse may import it itself
    assert first.ignore_index == [250, 255] and second.ignore_index == 250


# ---------------------------------------------------------------- NaN scores
class NaNLogits(DigitsClassifier):
    """Returns logits; the rows of digits 0-4 are all NaN, and one score of the others is NaN."""

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._step(batch, "val")
        logits = self(x).detach().clone()
        logits[y < 5] = float("nan")
        logits[y >= 5, 0] = float("nan")
        return logits


def test_rows_without_a_finite_score_are_never_shown_as_a_class() -> None:
    callback = LogPredictionSamples(num_samples=10)
    snaps = Snapshots()
    model, dm = NaNLogits(), DigitsDataModule(batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer([callback, snaps], max_epochs=2)
        trainer.fit(model, datamodule=dm)
    rec = finish_and_read()
    tables = rec.tables("predictions/table")
    panels = rec.series("predictions/images")
    assert len(tables) == 2
    nan_counts = []
    for table, (_, panel), weights in zip(tables, panels, snaps.taken, strict=True):
        probe = copy.deepcopy(model)
        probe.load_state_dict(weights)
        count = 0
        for row, caption in zip(table.rows, panel["captions"], strict=True):
            if int(row["ground truth"]) < 5:
                count += 1
                assert row["prediction"] == "nan" and caption.endswith("Prediction: nan")
                assert all(row[f"score_{c}"] is None for c in range(10))
            else:  # the argmax over the finite scores, never the NaN one
                with torch.no_grad():
                    logits = probe(dm.val_set[row["id"]][0][None])[0]
                assert row["prediction"] == str(int(logits[1:].argmax()) + 1)  # a column of strings, with "nan"
        nan_counts.append(count)
    assert nan_counts[0] > 0
    ours = [str(w.message) for w in caught if "LogPredictionSamples" in str(w.message)]
    assert len(ours) == 1 and f"{nan_counts[0]} of the 10 validation samples" in ours[0], ours
    assert "'nan'" in ours[0]


# ---------------------------------------------------------------- ignore_index
def reference_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over the classes present in either mask, counting only the non-void pixels."""
    valid = truth != VOID
    t, p = truth[valid], pred[valid]
    ious = [((t == c) & (p == c)).sum() / ((t == c) | (p == c)).sum() for c in np.union1d(t, p)]
    return float(np.mean(ious))


@pytest.mark.parametrize("given", [None, 250], ids=["read_from_the_loss", "ignore_index_250"])
def test_segmentation_iou_leaves_the_ignore_label_out(given: int | None, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    data = VoidShapes(64, size=16, mode="segmentation")
    loader = DataLoader(data, batch_size=16)
    callback = LogPredictionSamples(num_samples=4, class_names=SHAPE_NAMES, key="seg", ignore_index=given)
    with caplog.at_level(logging.INFO):
        trainer = make_trainer([callback], max_epochs=2, limit_train_batches=3, limit_val_batches=2)
        trainer.fit(UNetLikeReturnsLogits() if given is None else UNetLike(), loader, loader)
    rec = finish_and_read()
    said = [r.getMessage() for r in caplog.records if ".loss_fn.ignore_index (CrossEntropyLoss)" in r.getMessage()]
    assert len(said) == (1 if given is None else 0), said
    (inputs,) = rec.tables("seg/inputs")
    for row in inputs.rows:
        assert row["ground truth"] == "background, disc, square"  # not 250, not "ignored"
    tables = rec.tables("seg/table")
    assert len(tables) == 2
    panels = rec.series("seg/images")
    for table, (_, panel) in zip(tables, panels, strict=True):
        assert table.columns == ["id", "sample", "ground truth", "prediction", "iou", "ignored"]
        for row, layers in zip(table.rows, panel["all_masks"], strict=True):
            truth = data.mask(row["id"]).numpy()
            assert row["ignored"] == int((truth == VOID).sum()) > 0
            shown = np.asarray(Image.open(run_file(rec, layers["ground_truth"]["path"])))
            assert np.array_equal(shown == 255, truth == VOID)  # drawn as the "ignored" class
            pred = np.asarray(Image.open(run_file(rec, layers["predictions"]["path"])))
            assert row["iou"] == pytest.approx(reference_iou(truth, pred), abs=1e-5)
    # W&B's class labels of the masks name the ignored pixels
    labels = panel_class_labels(rec)
    assert labels["seg/images_wandb_delimeter_ground_truth"] == {
        "0": "background", "1": "disc", "2": "square", "255": "ignored"
    }


def test_classification_target_with_the_ignore_label_is_shown_ignored() -> None:
    class SomeIgnored(DigitsDataModule):
        def setup(self, stage: str | None = None) -> None:
            super().setup(stage)
            assert self.val_set is not None
            x, y = self.val_set.tensors
            y = y.clone()
            y[::2] = -1  # e.g. unlabelled examples
            self.val_set = torch.utils.data.TensorDataset(x, y)

    class Model(DigitsClassifier):
        def _step(self, batch: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch
            return super()._step((x, y.clamp(min=0)), stage)

    callback = LogPredictionSamples(num_samples=4, class_names=[str(i) for i in range(10)], ignore_index=-1)
    trainer = make_trainer([callback], max_epochs=1)
    trainer.fit(Model(), datamodule=SomeIgnored(batch_size=32))
    rec = finish_and_read()
    (table,) = rec.tables("predictions/table")
    truths = {r["id"]: r["ground truth"] for r in table.rows}
    assert truths and all((v == "ignored") == (i % 2 == 0) for i, v in truths.items()), truths


# ---------------------------------------------------------------- a predict_step written for the predict loader
class BarePredictStep(DigitsClassifier):
    """``predict_step`` expects the predict loader's bare inputs; ``validation_step`` returns the loss only."""

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")[0]

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch).argmax(dim=1)


def test_a_predict_step_that_cannot_read_evaluation_batches_gives_way_to_forward(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snaps = Snapshots()
    model, dm = BarePredictStep(), DigitsDataModule(batch_size=32)
    with caplog.at_level(logging.INFO):
        trainer = make_trainer([LogPredictionSamples(num_samples=4), snaps], max_epochs=1, num_sanity_val_steps=2)
        trainer.fit(model, datamodule=dm)
    said = [r.getMessage() for r in caplog.records if "BarePredictStep.predict_step failed" in r.getMessage()]
    assert len(said) == 1 and "pl_module(x)" in said[0], said
    rec = finish_and_read()
    (table,) = rec.tables("predictions/table")
    probe = copy.deepcopy(model)
    probe.load_state_dict(snaps.taken[0])
    x = torch.stack([dm.val_set[r["id"]][0] for r in table.rows])
    with torch.no_grad():
        assert [r["prediction"] for r in table.rows] == probe(x).argmax(dim=1).tolist()


# ---------------------------------------------------------------- detection with an ignore label
def test_detection_boxes_with_the_ignore_label_match_nothing_and_are_counted() -> None:
    from lw_callbacks.demo_tasks import Shapes, ShapesDetector, detection_collate

    torch.manual_seed(0)
    data = Shapes(48, size=32, mode="detection")
    loader = DataLoader(data, batch_size=16, collate_fn=detection_collate)
    callback = LogPredictionSamples(num_samples=3, class_names=SHAPE_NAMES, key="det", ignore_index=2)
    trainer = make_trainer([callback], max_epochs=2, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(ShapesDetector(), loader, loader)
    rec = finish_and_read()
    (inputs,) = rec.tables("det/inputs")
    for row in inputs.rows:
        assert row["ground truth"] == "1 disc"  # the square (label 2) is ignored
        captions = [b["box_caption"] for b in row["image"]["boxes"]["ground_truth"]]
        assert captions == ["disc", "ignored"]
    tables = rec.tables("det/table")
    assert tables[0].columns == [
        "id", "sample", "ground truth", "prediction", "predicted boxes", "matches@0.5", "ignored"
    ]
    for table, (_, panel) in zip(tables, rec.series("det/images"), strict=True):
        for row, layers in zip(table.rows, panel["all_boxes"], strict=True):
            assert row["ignored"] == 1
            preds = json.loads(run_file(rec, layers["predictions"]["path"]).read_text())["box_data"]
            disc = data.boxes(row["id"])["boxes"][0].tolist()
            found = sum(  # only the disc can be matched
                1 for p in preds
                if p["class_id"] == 1
                and box_iou([p["position"][k] for k in ("minX", "minY", "maxX", "maxY")], disc) >= 0.5
            )
            assert row["matches@0.5"] == min(found, 1)


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------- Fabric
def test_fabric_samples_take_predict_and_read_the_ignore_label_from_the_model() -> None:
    import lightning as L
    from harness import make_logger

    from lw_callbacks.fabric import FabricPredictionSamples

    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[make_logger()])
    auto = FabricPredictionSamples(num_samples=3, key="ae", predict=reconstruct)
    images = torch.rand(4, 1, 8, 8)
    labels = torch.arange(4)
    model = LitAutoEncoder()
    with pytest.raises(ConfigurationError, match=r"predict= is given.*model="):
        auto.log_prediction_samples(fabric, (images, labels), step=0)
    auto.log_prediction_samples(fabric, (images, labels), step=1, model=model)
    seg = FabricPredictionSamples(num_samples=2, key="seg")
    shapes = VoidShapes(2, size=16)
    batch = (torch.stack([shapes[i][0] for i in range(2)]), torch.stack([shapes[i][1] for i in range(2)]))
    unet = UNetLike()
    seg.log_prediction_samples(fabric, batch, step=2, model=unet)
    assert seg.core.ignored == frozenset({VOID})
    rec = finish_and_read()
    (table,) = rec.tables("ae/table")
    assert table.columns == ["id", "sample", "ground truth", "reconstruction", "mse"]
    with torch.no_grad():
        expected = model(images[:3].view(3, -1)).view_as(images[:3])
    assert [r["mse"] for r in table.rows] == pytest.approx(
        [float(((e - i) ** 2).mean()) for e, i in zip(expected, images[:3], strict=True)], rel=1e-4
    )
    (table,) = rec.tables("seg/table")
    assert table.columns[-1] == "ignored" and [r["ignored"] for r in table.rows] == [
        int((shapes.mask(i) == VOID).sum()) for i in range(2)
    ]


# ---------------------------------------------------------------- stages that log nothing are said, once
def fit_saying(namespace: str = "lightning.pytorch", model: Any = None, val: bool = True,
               callback: LogPredictionSamples | None = None, **kwargs: Any) -> tuple[list[str], RunRecords]:
    """A tiny fit on the digits; the package's warnings it gave, and the run's records."""
    L = modules.api(namespace)
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    data = {"train_dataloaders": dm.train_dataloader()}
    if val:
        data["val_dataloaders"] = dm.val_dataloader()
    options: dict[str, Any] = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2,
                               "num_sanity_val_steps": 0, "accelerator": "cpu", "log_every_n_steps": 1,
                               "enable_progress_bar": False, "enable_model_summary": False,
                               "enable_checkpointing": False, "default_root_dir": "lightning"}
    options.update(kwargs)
    callback = callback or LogPredictionSamples(num_samples=4)
    trainer = L.Trainer(logger=make_logger(namespace=namespace), callbacks=[callback], **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model if model is not None else DigitsClassifier(), **data)
    ours = [str(w.message) for w in caught if issubclass(w.category, LWCallbacksWarning)]
    return ours, finish_and_read()


def no_validation_step(namespace: str) -> Any:
    """A module with a training step only, as Lightning's LSTM and transformer demos are."""

    class NoValidationStep(modules.api(namespace).LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x.reshape(len(x), -1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return NoValidationStep()


def predictions_keys(rec: RunRecords) -> list[str]:
    return [k for k in rec.keys() if k.startswith("predictions")]  # noqa: SIM118


@pytest.mark.parametrize("namespace", modules.NAMESPACES)
def test_a_module_without_validation_step_is_said_once(namespace: str) -> None:
    ours, rec = fit_saying(namespace, model=no_validation_step(namespace), max_epochs=2)
    assert len(ours) == 1, ours
    (message,) = ours
    assert message.startswith("LogPredictionSamples:")
    assert "NoValidationStep has no `validation_step`" in message and "stages=" in message
    assert not predictions_keys(rec)


@pytest.mark.parametrize(
    ("kwargs", "val", "says"),
    [
        ({"limit_val_batches": 0}, True, "`limit_val_batches=0`"),
        ({}, False, "no val dataloader"),
    ],
    ids=["limit_val_batches=0", "no-val-dataloader"],
)
def test_a_validation_loop_without_batches_is_said_once(kwargs: dict[str, Any], val: bool, says: str) -> None:
    ours, rec = fit_saying(val=val, **kwargs)
    assert len(ours) == 1 and says in ours[0] and "stages=" in ours[0], ours
    assert not predictions_keys(rec)


def test_validations_that_never_fall_on_a_logged_epoch_are_said_at_the_end_of_the_fit() -> None:
    ours, rec = fit_saying(callback=LogPredictionSamples(num_samples=4, every_n_epochs=3), max_epochs=2)
    assert len(ours) == 1 and "no validation sample was logged in this fit" in ours[0], ours
    assert "`every_n_epochs=3`" in ours[0]
    assert not predictions_keys(rec)


def test_a_sampled_module_and_fast_dev_run_say_nothing() -> None:
    ours, rec = fit_saying()
    assert ours == [] and "predictions/table" in predictions_keys(rec)
    # fast_dev_run logs nothing and says nothing of it, even for a module that could never be sampled
    ours, _ = fit_saying(model=no_validation_step("lightning.pytorch"), fast_dev_run=True)
    assert ours == []
