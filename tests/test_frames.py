"""DataFrames of offline runs: known values logged through real W&B offline, read back cell by cell."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import WANDB_VERSION, isolated_wandb
from PIL import Image

from lw_callbacks.records import find_runs, read_resumed, read_run, runs_frame, samples_frame

pd = pytest.importorskip("pandas")

STEP = "trainer/global_step"


def _pixels(i: int) -> np.ndarray:
    return (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3 + i * 7).astype(np.uint8)


def _log_rows(run: Any, first: int, count: int) -> list[dict[str, Any]]:
    """Log ``count`` rows of known values; return them flattened as W&B's history shows them, with
    media as the pixels logged (checked against the files)."""
    import wandb

    expected: list[dict[str, Any]] = []
    for i in range(first, first + count):
        row: dict[str, Any] = {
            "loss": 1.0 / (i + 1), "epoch": i // 2, "name": f"row-{i}",
            "nested": {"a": i * 2, "b": {"c": f"c{i}"}}, STEP: 10 * i,
        }
        flat = {"loss": 1.0 / (i + 1), "epoch": i // 2, "name": f"row-{i}",
                "nested.a": i * 2, "nested.b.c": f"c{i}", STEP: 10 * i}
        if i % 3 == 1:
            row["img"] = wandb.Image(_pixels(i))
            row["imgs"] = [wandb.Image(_pixels(i + 1)), wandb.Image(_pixels(i + 2))]
            flat["img"] = _pixels(i)
            flat["imgs"] = [_pixels(i + 1), _pixels(i + 2)]
        if i % 3 == 2:
            masked = {"pred": {"mask_data": (_pixels(i) % 3).astype(np.uint8)}}
            row["tab"] = wandb.Table(columns=["id", "image", "score"],
                                     data=[[k, wandb.Image(_pixels(k), masks=masked if k == 1 else None), k / 4]
                                           for k in range(3)])
            flat["tab"] = "table"
        run.log(row)
        expected.append(flat)
    return expected


def _same_image(path: Any, pixels: np.ndarray) -> bool:
    file = Path(path)
    return file.is_file() and np.array_equal(np.asarray(Image.open(file).convert("L")), pixels)


def _assert_frame_is(frame: Any, expected: list[dict[str, Any]], folders: list[Path]) -> None:
    """Each cell of ``frame`` is the value logged (NaN / None where a row did not log the key); media
    cells are files in one of the run's ``folders`` holding the logged pixels."""
    assert list(frame.index) == [row[STEP] for row in expected]
    assert frame.index.name == STEP
    keys = {k for row in expected for k in row} - {STEP}
    assert keys | {"_step", "_runtime", "_timestamp"} == set(frame.columns)
    assert list(frame["_step"]) == list(range(len(expected)))  # continued across segments
    assert frame["_runtime"].notna().all() and frame["_timestamp"].notna().all()
    for position, row in enumerate(expected):
        for key in keys:
            cell = frame[key].iloc[position]
            if key not in row:
                assert cell is None or (isinstance(cell, float) and math.isnan(cell)), (position, key, cell)
            elif key == "img":
                assert _same_image(cell, row[key]) and any(Path(cell).is_relative_to(f) for f in folders)
            elif key == "imgs":
                assert len(cell) == 2 and all(_same_image(c, p) for c, p in zip(cell, row[key], strict=True))
            elif key == "tab":
                assert Path(cell).is_file() and cell.endswith(".table.json")
            else:
                assert cell == row[key], (position, key, cell, row[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One plain run, and one run resumed once (two segments), of known values."""
    import wandb

    root = tmp_path_factory.mktemp("frames")
    out: dict[str, Any] = {"root": root}
    with isolated_wandb(root):
        run = wandb.init(project="lw-frames", dir=str(root / "plain"), mode="offline", name="plain-run",
                         config={"lr": 0.1, "net": {"width": 8, "act": "relu"}})
        out["plain"] = _log_rows(run, 0, 7)
        run.summary["best"] = {"acc": 0.9}
        out["plain_dir"] = Path(run.dir).parent
        run.finish()
        out["resumed"] = []
        for segment, (first, count) in enumerate([(0, 4), (4, 3)]):
            if segment and WANDB_VERSION < (0, 22, 1):
                time.sleep(1.1)
            run = wandb.init(project="lw-frames", dir=str(root / "resumed"), id="resumed1", resume="allow",
                             mode="offline", config={"lr": 0.5})
            out["resumed"] += _log_rows(run, first, count)
            run.finish()
        for folder in find_runs(root):
            read_run(folder, timeout=60)
    return out


def test_history_frame_is_what_was_logged(runs: dict[str, Any]) -> None:
    records = read_run(runs["plain_dir"])
    frame = records.history_frame()
    _assert_frame_is(frame, runs["plain"], [runs["plain_dir"]])
    assert frame["epoch"].dtype == np.int64 and frame["loss"].dtype == np.float64  # numbers as numbers
    rows = list(records.iter_history())  # the same rows, one at a time
    assert len(rows) == len(frame) and [r[STEP] for r in rows] == list(frame.index)
    only = records.history_frame(keys=["img"])  # the rows holding img, with only it
    assert list(only.index) == [r[STEP] for r in runs["plain"] if "img" in r]
    assert set(only.columns) == {"img", "_step", "_runtime", "_timestamp"}
    assert list(records.history_frame(x_axis=None).index) == list(range(7))
    with pytest.raises(KeyError, match="no history key 'nope'"):
        records.history_frame(x_axis="nope")
    lean = read_run(runs["plain_dir"], keep_history=False)  # nothing kept but the count
    assert lean.history == [] and lean.history_rows == 7
    pd.testing.assert_frame_equal(lean.history_frame(), frame)


def test_table_frame_is_the_table_logged(runs: dict[str, Any]) -> None:
    records = read_run(runs["plain_dir"])
    logged_at = [r[STEP] for r in runs["plain"] if "tab" in r]
    assert len(records.tables("tab")) == len(logged_at) == 2
    for index in (0, -1):
        table = records.table_frame("tab", index)
        assert list(table.columns) == ["id", "image", "score", "image.masks.pred"]
        assert list(table["id"]) == [0, 1, 2] and list(table["score"]) == [0.0, 0.25, 0.5]
        assert all(_same_image(path, _pixels(k)) for k, path in enumerate(table["image"]))
        step = logged_at[index]
        mask = np.asarray(Image.open(table["image.masks.pred"][1]))  # the mask's class ids
        assert np.array_equal(mask, _pixels(step // 10) % 3) and table["image.masks.pred"].isna().sum() == 2
    with pytest.raises(KeyError, match=r"no table logged under 'nope'; the table keys are \['tab'\]"):
        records.table_frame("nope")


def test_a_resumed_run_is_its_segments_one_after_the_other(runs: dict[str, Any]) -> None:
    merged = read_resumed(runs["root"] / "resumed", "resumed1", timeout=0)
    assert len(merged.segments) == 2
    _assert_frame_is(merged.history_frame(), runs["resumed"], merged.segments)


def test_a_run_killed_midway_is_read_up_to_the_cut(runs: dict[str, Any], tmp_path: Path) -> None:
    (log,) = runs["plain_dir"].glob("run-*.wandb")
    killed = tmp_path / runs["plain_dir"].name
    shutil.copytree(runs["plain_dir"], killed, symlinks=True)
    data = log.read_bytes()
    (killed / log.name).write_bytes(data[: int(len(data) * 0.6)])  # SIGKILL: no exit record, a cut tail
    records = read_run(killed, timeout=0, require_exit=False)
    assert not records.complete
    frame = records.history_frame()
    assert 0 < len(frame) < len(runs["plain"])
    _assert_frame_is(frame, runs["plain"][: len(frame)], [killed])


def test_runs_frame_is_one_row_per_run(runs: dict[str, Any]) -> None:
    frame = runs_frame(runs["root"]).set_index("id")
    plain = read_run(runs["plain_dir"])
    assert sorted(frame.index) == sorted([plain.run_id, "resumed1"])  # the resumed run once
    row = frame.loc[plain.run_id]
    assert row["name"] == "plain-run" and row["state"] == "finished" and row["project"] == "lw-frames"
    assert (row["config.lr"], row["config.net.width"], row["config.net.act"]) == (0.1, 8, "relu")
    assert row["summary.best.acc"] == 0.9 and row["summary.loss"] == runs["plain"][-1]["loss"]
    assert _same_image(row["summary.img"], runs["plain"][4]["img"])  # the last image logged
    resumed = frame.loc["resumed1"]
    assert resumed["segments"] == 2 and resumed["config.lr"] == 0.5
    assert resumed["summary._step"] == 3 - 1  # as the newest segment (3 rows) recorded it
    assert resumed["summary.nested.b.c"] == runs["resumed"][-1]["nested.b.c"]


def test_without_pandas_the_error_names_the_extra(runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    records = read_run(runs["plain_dir"])
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    for call in (records.history_frame, lambda: records.table_frame("tab"), lambda: runs_frame(runs["root"]),
                 lambda: samples_frame(records)):
        with pytest.raises(ImportError, match=r'pip install "lw-callbacks\[pandas\]"'):
            call()
    assert len(list(records.iter_history())) == 7  # the generator needs no pandas


def _text(cell: Any) -> str:
    return "" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else str(cell)


def test_export_writes_history_tables_and_runs(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "lw_callbacks", "export", str(runs["root"]), "--to", "csv",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain = read_run(runs["plain_dir"])
    history = pd.read_csv(out / plain.run_id / "history.csv", index_col=STEP, float_precision="round_trip")
    frame = plain.history_frame()
    assert list(history.index) == list(frame.index)
    for key in ("loss", "epoch", "nested.a", "nested.b.c", "img", "_step"):
        assert [_text(v) for v in history[key]] == [_text(v) for v in frame[key]], key
    tables = sorted(p.name for p in (out / plain.run_id / "tables").iterdir())
    assert tables == ["tab-0.csv", "tab-1.csv"]
    assert list(pd.read_csv(out / plain.run_id / "tables" / "tab-1.csv")["score"]) == [0.0, 0.25, 0.5]
    assert sorted(pd.read_csv(out / "runs.csv")["id"]) == sorted([plain.run_id, "resumed1"])
    assert (out / "resumed1" / "history.csv").is_file()
    parquet = subprocess.run([sys.executable, "-m", "lw_callbacks", "export", str(runs["plain_dir"]), "--to",
                              "parquet", "--out", str(tmp_path / "pq")], capture_output=True, text=True, timeout=120)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert parquet.returncode == 1 and "needs pyarrow" in parquet.stderr and "pip install pyarrow" in parquet.stderr
    else:
        assert parquet.returncode == 0, parquet.stderr
        assert pd.read_parquet(tmp_path / "pq" / plain.run_id / "history.parquet").shape[0] == 7


def test_samples_frame_follows_each_sample_across_validations(tmp_path: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks import LogPredictionSamples
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    class WithScores(DigitsClassifier):  # validation_step returns the logits: per-class score columns
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            super().validation_step(batch, batch_idx)
            return self(batch[0])

    samples = LogPredictionSamples(num_samples=6, class_names=[str(i) for i in range(10)])
    trainer = Trainer(
        logger=WandbLogger(project="digits", save_dir=str(tmp_path)), callbacks=[samples],
        max_epochs=3, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False,
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(WithScores(), datamodule=DigitsDataModule())
    trainer.logger.experiment.finish()
    records = read_run(find_runs(tmp_path)[-1], timeout=60)
    frame = samples_frame(records)
    val_steps = [step for step, _ in records.series("val_acc")]
    tables = records.tables("predictions/table")
    (inputs,) = records.tables("predictions/inputs")  # logged once
    assert len(val_steps) == len(tables) == 3
    assert list(frame.columns[:5]) == ["step", "id", "image", "ground truth", "prediction"]
    assert [c for c in frame.columns if c.startswith("score_")] == [f"score_{i}" for i in range(10)]
    assert len(frame) == 3 * 6 and sorted(set(frame["step"])) == sorted(val_steps)
    ids = [list(group["id"]) for _, group in frame.groupby("step", sort=True)]
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 6  # the same samples at every step
    for (step, group), table in zip(frame.groupby("step", sort=True), tables, strict=True):
        assert list(group["prediction"]) == [row["prediction"] for row in table.rows], step
        assert list(group["score_3"]) == [row["score_3"] for row in table.rows]
    truth = {row["id"]: row["ground truth"] for row in inputs.rows}
    assert all(truth[i] == t for i, t in zip(frame["id"], frame["ground truth"], strict=True))
    assert all(Path(p).is_file() and Image.open(p).size == (8, 8) for p in frame["image"])
