"""LogPredictionSamples beyond classification: segmentation, detection, text, audio and regression,
on small real data made here, checked from the run's own records."""

from __future__ import annotations

import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from harness import build_with_cli, finish_and_read, make_trainer
from lightning.pytorch import LightningModule
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lw_callbacks import ConfigurationError
from lw_callbacks.demo import load_digits_tensors
from lw_callbacks.demo_tasks import SHAPE_NAMES, Shapes, ShapesDetector, ShapesSegmenter, detection_collate
from lw_callbacks.predictions import LogPredictionSamples
from lw_callbacks.records import RunRecords, iter_records, log_file_of

STEP = "trainer/global_step"


def run_file(rec: RunRecords, path: str) -> Path:
    return rec.run_dir / "files" / path


def panel_class_labels(rec: RunRecords) -> dict[str, dict[str, str]]:
    """What W&B recorded as the panel's class labels per mask layer (run config ``_wandb``)."""
    labels: dict[str, dict[str, str]] = {}
    for r in iter_records(log_file_of(rec.run_dir)):
        if r.WhichOneof("record_type") == "config":
            for item in r.config.update:
                if item.key == "_wandb":
                    value = json.loads(item.value_json).get("mask/class_labels", {})
                    labels.update({k: v["value"] for k, v in value.items()})
    return labels


def table_class_labels(inputs: Any, kind: str) -> dict[str, dict[str, str]]:
    """The class labels of each mask / box layer of the table's image column, as the UI reads them."""
    params = inputs.data["column_types"]["params"]["type_map"]["image"]["params"]["allowed_types"][0]["params"]
    per_layer = params.get(f"{kind}_class_maps")
    if per_layer is not None:
        return dict(per_layer["params"]["val"])
    # older wandb (0.21): one class map for the column, and the names of the layers apart
    labels = params["class_map"]["params"]["val"]
    return {layer: labels for layer in params[f"{kind}_layers"]["params"]["val"]}


# ---------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def segmentation(isolated_dir: Path) -> tuple[RunRecords, Shapes]:
    torch.manual_seed(0)
    data = Shapes(96, size=32, mode="segmentation")
    loader = DataLoader(data, batch_size=16)
    callback = LogPredictionSamples(num_samples=5, class_names=SHAPE_NAMES, key="seg")
    trainer = make_trainer([callback], max_epochs=2, limit_train_batches=4, limit_val_batches=3)
    trainer.fit(ShapesSegmenter(), loader, loader)
    return finish_and_read(isolated_dir / "runs"), data


def test_segmentation_masks_on_the_images(segmentation: tuple[RunRecords, Shapes]) -> None:
    rec, data = segmentation
    assert rec.tables("seg/inputs") and len(rec.tables("seg/inputs")) == 1  # once per run
    (inputs,) = rec.tables("seg/inputs")
    assert inputs.columns == ["id", "image", "ground truth"]
    ids = [r["id"] for r in inputs.rows]
    assert ids == [0, 12, 24, 35, 47]  # spread over the 48 examples of the 3 validation batches run
    # the pixels and the ground-truth masks, each uploaded once, in the inputs table's artifact
    masks = [e for e in inputs.entries if e.path.startswith("media/images/mask/")]
    pixels = [e for e in inputs.entries if e.path.endswith(".png") and e not in masks]
    assert len(masks) == 5 and len(pixels) == 5
    assert table_class_labels(inputs, "mask") == {
        "ground_truth": {"0": "background", "1": "disc", "2": "square"}
    }
    for row in inputs.rows:
        cell = row["image"]
        assert (cell["width"], cell["height"]) == (32, 32)
        entry = inputs.entry(cell["masks"]["ground_truth"]["path"])
        assert entry.local_path is not None
        assert np.array_equal(np.asarray(Image.open(entry.local_path)), data.mask(row["id"]).numpy())
        assert row["ground truth"] == "background, disc, square"
    # each epoch: the prediction mask and the IoU, no pixels or ground truth again
    tables = rec.tables("seg/table")
    assert len(tables) == 2
    for table in tables:
        assert table.columns == ["id", "sample", "ground truth", "prediction", "iou"]
        assert [r["id"] for r in table.rows] == ids
        assert not [e for e in table.entries if e.path.startswith("media/images/mask/")]
        assert [r["sample"] for r in table.rows] == list(range(5))
    # the panel: both masks on each image, the IoU in the caption equal to the table's
    panels = rec.series("seg/images")
    assert [s for s, _ in panels] == [s for s, _ in rec.series("seg/table")]
    for (_, panel), table in zip(panels, tables, strict=True):
        assert len(panel["all_masks"]) == 5
        for layers, row, caption in zip(panel["all_masks"], table.rows, panel["captions"], strict=True):
            assert set(layers) == {"ground_truth", "predictions"}
            truth = np.asarray(Image.open(run_file(rec, layers["ground_truth"]["path"])))
            pred = np.asarray(Image.open(run_file(rec, layers["predictions"]["path"])))
            assert np.array_equal(truth, data.mask(row["id"]).numpy())
            present = np.union1d(np.unique(truth), np.unique(pred))
            iou = np.mean([((truth == c) & (pred == c)).sum() / ((truth == c) | (pred == c)).sum() for c in present])
            assert row["iou"] == pytest.approx(iou, abs=1e-5)
            assert caption == f"IoU {iou:.3f}"
    labels = panel_class_labels(rec)
    assert labels["seg/images_wandb_delimeter_ground_truth"] == {"0": "background", "1": "disc", "2": "square"}
    assert labels["seg/images_wandb_delimeter_predictions"] == {"0": "background", "1": "disc", "2": "square"}
    first, last = ([r["iou"] for r in t.rows] for t in tables)
    assert first != last  # the predictions evolve between epochs


class SmallMask(ShapesSegmenter):
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])[..., :16, :]


def test_segmentation_mask_of_another_size_fails_at_the_first_batch() -> None:
    trainer = make_trainer([LogPredictionSamples(task="segmentation")], limit_val_batches=1)
    loader = DataLoader(Shapes(8, mode="segmentation"), batch_size=4)
    with pytest.raises(ConfigurationError, match=r"sample 0 of the first validation batch: the predicted mask is "
                       r"16x32 but the image is 32x32.*\(4, 3, 16, 32\)"):
        trainer.validate(SmallMask(), loader)


def test_segmentation_mismatch_first_seen_after_training_began_warns_and_training_goes_on() -> None:
    loader = DataLoader(Shapes(16, mode="segmentation"), batch_size=4)
    trainer = make_trainer([LogPredictionSamples(key="seg")], max_epochs=2, limit_train_batches=2, limit_val_batches=2)
    with pytest.warns(UserWarning, match=r"predicted mask is 16x32 but the image is 32x32.*logs no more validation"):
        trainer.fit(SmallMask(), loader, loader)
    assert trainer.current_epoch == 2  # the fit ran to its end
    rec = finish_and_read()
    logged = rec.keys()
    assert not [k for k in logged if k.startswith("seg/")]
    sanity = make_trainer([LogPredictionSamples()], max_epochs=1, limit_train_batches=2, num_sanity_val_steps=1)
    with pytest.raises(ConfigurationError, match=r"predicted mask is 16x32"):
        sanity.fit(SmallMask(), loader, loader)


# ---------------------------------------------------------------- detection
class NormalizedCxcywh(Dataset):
    """The shapes' boxes as normalised (cx, cy, w, h), plus a fake low-score prediction."""

    def __init__(self, data: Shapes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, t = self.data[i]
        b, s = t["boxes"], self.data.size
        centre = [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2]
        cxcywh = torch.stack([*centre, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        return x, {"boxes": cxcywh / s, "labels": t["labels"]}


class CxcywhDetector(ShapesDetector):
    """Predicts in the data's format (normalised cxcywh), with one extra box scoring 0.1."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step((batch[0], [to_xyxy(t) for t in batch[1]]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:  # type: ignore[override]
        out = super().validation_step((batch[0], [to_xyxy(t) for t in batch[1]]), batch_idx)
        for d in out:
            b = d["boxes"] / 32
            d["boxes"] = torch.cat([torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                                 b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1),
                                    torch.tensor([[0.5, 0.5, 0.2, 0.2]])])
            d["labels"] = torch.cat([d["labels"], torch.tensor([1])])
            d["scores"] = torch.cat([d["scores"], torch.tensor([0.1])])
        return out


def to_xyxy(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    b = t["boxes"] * 32
    xyxy = torch.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    return {"boxes": xyxy, "labels": t["labels"]}


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_detection_boxes_on_the_images() -> None:
    torch.manual_seed(0)
    data = Shapes(64, size=32, mode="detection")
    loader = DataLoader(NormalizedCxcywh(data), batch_size=16, collate_fn=detection_collate)
    callback = LogPredictionSamples(
        num_samples=4, class_names=SHAPE_NAMES, key="det", box_format="cxcywh", normalized_boxes=True
    )
    trainer = make_trainer([callback], max_epochs=2, limit_train_batches=4, limit_val_batches=2)
    model = CxcywhDetector()
    trainer.fit(model, loader, loader)
    rec = finish_and_read()
    (inputs,) = rec.tables("det/inputs")
    assert table_class_labels(inputs, "box") == {
        "ground_truth": {"0": "background", "1": "disc", "2": "square"}
    }
    for row in inputs.rows:
        gt = row["image"]["boxes"]["ground_truth"]
        assert [b["class_id"] for b in gt] == [1, 2] and [b["box_caption"] for b in gt] == ["disc", "square"]
        expected = data.boxes(row["id"])["boxes"].tolist()  # pixels xyxy, from normalised cxcywh
        got = [[b["position"][k] for k in ("minX", "minY", "maxX", "maxY")] for b in gt]
        assert np.allclose(got, expected, atol=1e-4)
        assert all(b["domain"] == "pixel" for b in gt)
        assert row["ground truth"] == "1 disc, 1 square"
    tables = rec.tables("det/table")
    assert len(tables) == 2
    assert tables[0].columns == ["id", "sample", "ground truth", "prediction", "predicted boxes", "matches@0.5"]
    panels = rec.series("det/images")
    assert len(panels) == 2
    for (_, panel), table in zip(panels, tables, strict=True):
        assert len(panel["all_boxes"]) == 4
        for layers, row, caption in zip(panel["all_boxes"], table.rows, panel["captions"], strict=True):
            assert set(layers) == {"ground_truth", "predictions"}
            boxes = json.loads(run_file(rec, layers["predictions"]["path"]).read_text())
            preds = boxes["box_data"]
            assert all(b["scores"]["score"] >= 0.3 for b in preds)  # the 0.1 box is left out
            assert boxes["class_labels"] == {"0": "background", "1": "disc", "2": "square"}
            truth = json.loads(run_file(rec, layers["ground_truth"]["path"]).read_text())["box_data"]
            assert len(truth) == 2 and row["predicted boxes"] == len(preds)
            # one object per class: a prediction matches when it overlaps its class's box at IoU >= 0.5
            pos = [[b["position"][k] for k in ("minX", "minY", "maxX", "maxY")] for b in (*truth, *preds)]
            found = sum(
                1 for p, pb in zip(preds, pos[2:], strict=True)
                if box_iou(pb, pos[p["class_id"] - 1]) >= 0.5
            )
            assert row["matches@0.5"] == found
            assert caption == f"matches@0.5: {found} / 2; predicted {len(preds)}"
    assert sum(r["matches@0.5"] for r in tables[-1].rows) > 0  # the trained detector finds shapes


def test_detection_box_outside_the_image_fails_at_the_first_batch() -> None:
    trainer = make_trainer([LogPredictionSamples(normalized_boxes=True)], limit_val_batches=1)
    loader = DataLoader(Shapes(8, mode="detection"), batch_size=4, collate_fn=detection_collate)  # pixel boxes
    with pytest.raises(ConfigurationError, match=r"sample 0 of the first validation batch: ground-truth box 0 "
                       r"\[3.0, 1.0, 14.0, 12.0\] is \(96.0, 32.0, 448.0, 384.0\) in pixels under box_format='xyxy', "
                       r"normalized_boxes=True, outside the 32x32"):
        trainer.validate(ShapesDetector(), loader)


# ---------------------------------------------------------------- text
WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "grape", "eagle", "house", "melon", "zebra"]
ANIMALS = {"tiger", "eagle", "zebra"}
FRUIT = {"apple", "lemon", "grape", "melon"}
LETTERS = "_abcdefghijklmnopqrstuvwxyz"


def decode(ids: list[int]) -> str:
    """Token ids back to the word (the tests' tokenizer: one id per letter, 0 pads)."""
    return "".join(LETTERS[i] for i in ids if i)


def encode(word: str, length: int = 6) -> list[int]:
    return [LETTERS.index(c) for c in word] + [0] * (length - len(word))


def word_class(w: str) -> int:
    return 1 if w in FRUIT else 2 if w in ANIMALS else 0


class WordClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(len(LETTERS), 8, padding_idx=0)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"])


class TokenWords(Dataset):
    def __len__(self) -> int:
        return len(WORDS)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": torch.tensor(encode(WORDS[i])), "label": word_class(WORDS[i])}


def test_text_token_ids_with_decode_and_class_scores() -> None:
    callback = LogPredictionSamples(num_samples=4, decode=decode, class_names=["other", "fruit", "animal"], key="txt")
    trainer = make_trainer([callback])
    trainer.validate(WordClassifier(), DataLoader(TokenWords(), batch_size=6))
    rec = finish_and_read()
    (inputs,) = rec.tables("txt/inputs")
    assert inputs.columns == ["id", "text", "ground truth"]
    assert [(r["text"], r["ground truth"]) for r in inputs.rows] == [
        (WORDS[i], ["other", "fruit", "animal"][word_class(WORDS[i])]) for i in (0, 4, 7, 11)
    ]
    (table,) = rec.tables("txt/table")
    assert table.columns[:4] == ["id", "sample", "ground truth", "prediction"]
    assert table.columns[4:] == ["score_other", "score_fruit", "score_animal"]
    logged = rec.keys()
    assert "txt/images" not in logged


class Reverser(LightningModule):
    """A "generator" on string batches: validation_step returns each word reversed, strings."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def validation_step(self, batch: Any, batch_idx: int) -> list[str]:
        return [w[::-1] for w in batch["text"]]


def test_text_strings_in_and_out_and_decode_from_a_dotted_path(tmp_path: Path) -> None:
    data = [{"text": w, "target": w[::-1] if i % 3 else w.upper()} for i, w in enumerate(WORDS)]
    callback = LogPredictionSamples(num_samples=3, key="gen", decode="test_prediction_tasks.decode")
    trainer = make_trainer([callback])
    trainer.validate(Reverser(), DataLoader(data, batch_size=4))
    assert callback._core.decoder is decode  # imported at setup
    rec = finish_and_read()
    (inputs,) = rec.tables("gen/inputs")
    assert [r["text"] for r in inputs.rows] == [WORDS[0], WORDS[6], WORDS[11]]  # spread over the 12 words
    (table,) = rec.tables("gen/table")
    assert [(r["ground truth"], r["prediction"]) for r in table.rows] == [
        (d["target"], d["text"][::-1]) for d in (data[0], data[6], data[11])
    ]


def test_decode_path_that_does_not_import_fails_at_setup() -> None:
    trainer = make_trainer([LogPredictionSamples(decode="no_such_package.tokenizer.decode")])
    with pytest.raises(ConfigurationError, match=r"decode='no_such_package.tokenizer.decode'.*cannot import"):
        trainer.validate(WordClassifier(), DataLoader(TokenWords(), batch_size=6))


def test_lightning_cli_builds_the_task_arguments(tmp_path: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lw_callbacks.LogPredictionSamples
  init_args:
    task: detection
    box_format: cxcywh
    normalized_boxes: true
    score_threshold: 0.5
    decode: test_prediction_tasks.decode
""",
        tmp_path,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, LogPredictionSamples)]
    assert (callback.task, callback.box_format, callback.normalized_boxes) == ("detection", "cxcywh", True)
    assert callback.score_threshold == 0.5
    assert callback.decode in ("test_prediction_tasks.decode", decode)  # jsonargparse may import it itself


# ---------------------------------------------------------------- audio
RATE = 8000


def sine_clips(n: int = 24, seconds: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Sine waves at 440 Hz (class 0) and 1760 Hz (class 1), amplitude 0.5, ``(n, 1, T)``."""
    t = torch.arange(int(RATE * seconds)) / RATE
    labels = torch.arange(n) % 2
    freqs = torch.where(labels == 0, 440.0, 1760.0)
    return (0.5 * torch.sin(2 * torch.pi * freqs[:, None] * t[None]))[:, None], labels


class ToneClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.out = torch.nn.Linear(2, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        crossings = (wav[:, 0, 1:] * wav[:, 0, :-1] < 0).float().mean(dim=1, keepdim=True)
        return self.out(torch.cat([crossings, torch.ones_like(crossings)], dim=1))

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch["audio"])


def test_audio_clips_in_the_inputs_table() -> None:
    clips, labels = sine_clips()
    data = [{"audio": c, "label": y} for c, y in zip(clips, labels, strict=True)]
    callback = LogPredictionSamples(num_samples=3, sample_rate=RATE, class_names=["low", "high"], key="tones")
    trainer = make_trainer([callback])
    trainer.validate(ToneClassifier(), DataLoader(data, batch_size=8))
    rec = finish_and_read()
    (inputs,) = rec.tables("tones/inputs")
    assert inputs.columns == ["id", "audio", "ground truth"]
    assert [r["ground truth"] for r in inputs.rows] == ["low", "low", "high"]  # ids 0, 12, 23
    for row in inputs.rows:
        cell = row["audio"]
        assert cell["_type"] == "audio-file"
        entry = inputs.entry(cell["path"])
        assert entry.local_path is not None
        with wave.open(entry.local_path) as w:
            assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (RATE, 1, RATE // 4)
            got = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32767.0
        assert got == pytest.approx(clips[row["id"], 0].numpy(), abs=1e-4)
    (table,) = rec.tables("tones/table")
    assert [r["id"] for r in table.rows] == [0, 12, 23]
    logged = rec.keys()
    assert "tones/images" not in logged


def test_audio_without_sample_rate_fails_at_the_first_batch() -> None:
    clips, labels = sine_clips(8)
    data = [{"audio": c, "label": y} for c, y in zip(clips, labels, strict=True)]
    trainer = make_trainer([LogPredictionSamples()])
    with pytest.raises(ConfigurationError, match=r"inputs are audio .*\(8, 1, 2000\).*sample rate is missing"):
        trainer.validate(ToneClassifier(), DataLoader(data, batch_size=8))


def test_audio_task_needs_a_sample_rate_at_construction() -> None:
    with pytest.raises(ConfigurationError, match=r"task='audio'.*sample rate is missing"):
        LogPredictionSamples(task="audio")


# ---------------------------------------------------------------- regression
class Brightness(LightningModule):
    """Predicts each digit's mean brightness (a float) from its pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.reshape(len(x), -1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x)[:, 0], y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_regression_target_prediction_and_abs_error() -> None:
    x, _ = load_digits_tensors()
    x = x[:192]
    y = x.mean(dim=(1, 2, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer = make_trainer([LogPredictionSamples(num_samples=4, key="reg")], max_epochs=2)
    model = Brightness()
    trainer.fit(model, loader, loader)
    rec = finish_and_read()
    (inputs,) = rec.tables("reg/inputs")
    assert inputs.columns == ["id", "image", "target"]
    tables = rec.tables("reg/table")
    assert len(tables) == 2
    last = tables[-1]
    assert last.columns == ["id", "sample", "target", "prediction", "abs_error"]
    ids = [r["id"] for r in last.rows]
    with torch.no_grad():
        expected = model(x[ids])[:, 0].tolist()
    for row, pred in zip(last.rows, expected, strict=True):
        assert row["target"] == pytest.approx(float(y[row["id"]]), abs=1e-6)
        assert row["prediction"] == pytest.approx(pred, abs=1e-5)
        assert row["abs_error"] == pytest.approx(abs(row["prediction"] - row["target"]), abs=1e-5)
    (_, panel) = rec.series("reg/images")[-1]
    first = last.rows[0]
    assert panel["captions"][0] == f"Target: {first['target']:.4g} - Prediction: {first['prediction']:.4g}"


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "captioning"}, r"task='captioning'.*'segmentation'"),
        ({"box_format": "xywh"}, r"box_format='xywh'.*'xyxy'.*'cxcywh'"),
        ({"score_threshold": 2}, r"score_threshold=2.*\[0, 1\]"),
        ({"sample_rate": 0}, r"sample_rate=0.*positive integer"),
        ({"decode": 3}, r"decode=3.*callable"),
    ],
)
def test_task_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        LogPredictionSamples(**kwargs)


@pytest.fixture(autouse=True)
def _quiet_lightning() -> Iterator[None]:
    import logging

    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


# ---------------------------------------------------------------- kept copies made in place
def _to_uint8_whole(arr: np.ndarray) -> np.ndarray:
    """The display scaling on the whole image at once, float64 (the reference for the banded one)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
    if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif arr.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    scaled = np.where(np.isnan(a), 0.0, np.where(np.isposinf(a), 1.0, np.where(np.isneginf(a), 0.0, scaled)))
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def test_display_pixels_scaled_by_bands_equal_the_whole_image_and_live_off_the_heap() -> None:
    from lw_callbacks.core import offheap
    from lw_callbacks.core.pixels import display

    rng = np.random.default_rng(0)
    wide = rng.normal(3.0, 40.0, size=(3, 37, 29)).astype(np.float32)
    wide[0, 5, 5], wide[1, 36, 0], wide[2, 20, 7] = np.nan, np.inf, -np.inf
    late = np.zeros((1, 40, 24), dtype=np.float32)
    late[0, 39, 23] = 7.0  # the only bright pixel is in the last band: the range spans all bands
    cases = [
        wide,
        late,
        rng.random((33, 18, 3), dtype=np.float32),  # [0, 1] floats, HWC
        rng.integers(-300, 900, size=(21, 50), dtype=np.int64),
        rng.integers(0, 200, size=(4, 17, 17), dtype=np.int32),
        np.full((3, 19, 19), np.nan, dtype=np.float32),
    ]
    for arr in cases:
        got = display(torch.from_numpy(arr), "image")
        assert np.array_equal(got, _to_uint8_whole(arr))
        assert offheap.is_off_heap(got)
        assert offheap.off_heap(got) is got  # kept as made, not copied again
    flags = rng.random((16, 16)) > 0.5
    assert np.array_equal(display(flags, "image"), flags.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(5, 4, 9, 7, generator=g),  # scores: argmax
        lambda g: torch.randn(5, 1, 9, 7, generator=g),  # one channel of logits: sigmoid, threshold
        lambda g: torch.rand(5, 9, 7, generator=g),  # probabilities
        lambda g: torch.randint(0, 6, (5, 9, 7), generator=g).float(),  # ids as floats
        lambda g: torch.randint(0, 6, (5, 9, 7), generator=g),  # ids
        lambda g: torch.randint(0, 6, (5, 1, 9, 7), generator=g, dtype=torch.int32),
        lambda g: torch.rand(5, 9, 7, generator=g) > 0.5,  # booleans
    ],
)
def test_mask_rows_equal_the_class_ids_of_the_taken_rows(make: Any) -> None:
    from lw_callbacks.core import offheap
    from lw_callbacks.core.tasks import segmentation as tasks

    v = make(torch.Generator().manual_seed(1))
    rows = [4, 1, 2]
    got = tasks.mask_rows(v, rows)
    assert got.dtype == np.uint8 and offheap.is_off_heap(got)
    assert np.array_equal(got, tasks.mask_array(v[rows]))
    scores = torch.randn(3, 4, 9, 7)
    scores[1, 2] = 50.0  # class 2 everywhere in row 1
    assert (tasks.mask_rows(scores.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), [1]) == 2).all()
