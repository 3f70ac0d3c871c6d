"""Checkpoints of every shape, timing and place: ``best`` without a monitor, asynchronous saving
(``AsyncCheckpointIO``), a folder per checkpoint, and fsspec dirpaths; read back from the run's records."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import wandb
from harness import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lw_callbacks.checkpoints import UploadCheckpoints
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import find_runs, read_run


def md5(path: str | Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


def test_best_without_monitor_is_the_checkpoint_lightning_loads_for_ckpt_path_best(wandb_env: Path) -> None:
    """The W&B guide's checkpoint (no monitor): ``best`` is Lightning's ``best_model_path``, the newest
    top-k file (never ``last.ckpt``), the very file ``trainer.test(ckpt_path="best")`` loads."""
    mc = ModelCheckpoint(dirpath="ckpts", every_n_train_steps=4, save_top_k=-1, save_last=True)
    upload = UploadCheckpoints()
    trainer = make_trainer([mc, upload], max_epochs=3)
    model, dm = DigitsClassifier(), DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, ckpt_path="best")
    loaded = trainer.ckpt_path
    assert loaded and Path(loaded).name != "last.ckpt"
    restored = upload.restore("best")
    assert restored is not None and md5(restored) == md5(loaded)
    name = upload.collection_names[0]
    wandb.finish()
    records = read_run(find_runs("runs")[0])
    versions = records.artifacts(name, type="model")
    assert len(versions) >= 3
    best = [v for v in versions if "best" in v.aliases]
    assert len(best) == 1 and best[0].entries[0].digest == md5(loaded)
    assert best[0].metadata["original_filename"] == Path(loaded).name
