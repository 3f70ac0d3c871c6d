"""ShareRunDir: rank 0's run folder, id and name known on every rank, under every launcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import fit_digits, make_trainer, run_ranks
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lw_callbacks import ShareRunDir
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import find_runs


def test_single_process_shares_the_run_folder(tmp_path: Path) -> None:
    share = ShareRunDir(checkpoints_in_run_dir=True)
    ckpt = ModelCheckpoint(monitor="val_acc", mode="max")
    _, run = fit_digits([share, ckpt], max_epochs=1)
    assert share.run_id == run.run_id
    assert share.run_dir == run.run_dir.resolve()
    assert share.files_dir == share.run_dir / "files"
    assert os.environ["WANDB_DIR"] == str((tmp_path / "runs").resolve())
    assert Path(ckpt.best_model_path).parent == share.run_dir / "checkpoints"
    assert Path(ckpt.best_model_path).is_file()


def test_user_dirpath_is_kept(tmp_path: Path) -> None:
    share = ShareRunDir(checkpoints_in_run_dir=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "mine")
    fit_digits([share, ckpt], max_epochs=1)
    assert Path(ckpt.best_model_path).parent == tmp_path / "mine"


def test_second_fit_goes_to_the_new_run(tmp_path: Path) -> None:
    import wandb

    share = ShareRunDir(checkpoints_in_run_dir=True)
    ckpt = ModelCheckpoint()
    model, dm = DigitsClassifier(), DigitsDataModule(batch_size=32)
    make_trainer([share, ckpt], max_epochs=1).fit(model, datamodule=dm)
    first = share.run_dir
    wandb.finish()
    make_trainer([share, ckpt], max_epochs=1).fit(model, datamodule=dm)
    assert share.run_dir != first
    # (the reused ModelCheckpoint skips saving at a global step it already saved: check its folder)
    assert ckpt.dirpath == str(share.run_dir / "checkpoints")
    assert len(find_runs("runs")) == 2


def test_needs_a_wandb_logger() -> None:
    trainer = make_trainer([ShareRunDir()], logger=False, max_epochs=1)
    with pytest.raises(MisconfigurationException, match=r"ShareRunDir.*WandbLogger"):
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())


def test_disabled_mode_is_a_silent_noop(monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = os.environ.get("WANDB_DIR")
    share = ShareRunDir(checkpoints_in_run_dir=True)
    trainer = make_trainer([share], max_epochs=1)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert share.run_dir is None and share.run_id is None
    assert os.environ.get("WANDB_DIR") == before
    assert not [w for w in recwarn if "ShareRunDir" in str(w.message)]


@pytest.mark.parametrize("launcher", ["ddp"])  # ddp_spawn and torchrun: tests/test_all_five.py
def test_every_rank_agrees(tmp_path: Path, launcher: str) -> None:
    reports = run_ranks(
        "run_dir_ddp.py",
        launcher,
        out_dir=tmp_path / "reports",
        launcher="torchrun" if launcher == "torchrun" else "python",
        timeout=240,
    )
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 for r in reports)
    runs = find_runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # exactly one run folder for the whole job
    run_dir = str(runs[0].resolve())
    for r in reports:
        assert r["run_dir"] == run_dir
        assert r["run_id"] == runs[0].name.split("-")[-1]
        assert r["wandb_dir_env"] == str((tmp_path / "runs").resolve())
        assert r["ckpt_dirpath"] == os.path.join(run_dir, "checkpoints")
        assert r["user_dir_ckpt_dirpath"] == os.path.join(run_dir, "user-checkpoints")
    assert reports[0]["has_wandb_run"] and not reports[1]["has_wandb_run"]
    assert Path(reports[0]["best_model_path"]).is_file()
    saved = sorted(p.name for p in (runs[0] / "user-checkpoints").iterdir())
    assert saved == ["user-epoch=0.ckpt"], saved
