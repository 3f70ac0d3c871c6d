"""Checkpoints of every shape, timing and place: ``best`` without a monitor, asynchronous saving
(``AsyncCheckpointIO``), a folder per checkpoint, and fsspec dirpaths; read back from the run's records."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
import wandb
from harness import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from lw_callbacks.checkpoints import UploadCheckpoints
from lw_callbacks.core.publish import wait_for_cleanups
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


# ------------------------------------------------------------------------------------------ AsyncCheckpointIO
class RecordingIO(TorchCheckpointIO):
    """The file writer under ``AsyncCheckpointIO``: a slow disk (each write waits first), and a record of what
    each write put on disk: md5 -> (file name, epoch, global_step) read from the checkpoint itself."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.written: dict[str, tuple[str, int, int]] = {}

    def save_checkpoint(  # type: ignore[override]
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        time.sleep(self.delay)
        super().save_checkpoint(checkpoint, path, storage_options)
        self.written[md5(path)] = (Path(path).name, checkpoint["epoch"], checkpoint["global_step"])


class Padded(DigitsClassifier):
    """The digits model with a buffer of ``pad_mb`` MiB, for checkpoints of tens of MB."""

    def __init__(self, pad_mb: int = 20) -> None:
        super().__init__()
        self.register_buffer("pad", torch.randn(pad_mb * 2**20 // 4))


def test_async_checkpoint_io_uploads_each_file_once_with_its_own_metadata(wandb_env: Path) -> None:
    """5 checkpoints of 20 MB written by AsyncCheckpointIO on a slow disk while training goes on: every file
    on disk at the end is one version whose md5 is its file's, and each version's epoch, step and aliases
    are those of the bytes it holds (read from the checkpoint the writer wrote)."""
    writer = RecordingIO(delay=0.5)
    mc = ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_top_k=4,
                         filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = make_trainer([mc, upload], max_epochs=6, limit_train_batches=3, limit_val_batches=1,
                           plugins=[AsyncCheckpointIO(writer)])
    trainer.fit(Padded(20), datamodule=DigitsDataModule(batch_size=32))
    best_md5 = md5(mc.best_model_path)
    name = upload.collection_names[0]
    wandb.finish()
    wait_for_cleanups()
    records = read_run(find_runs("runs")[0])
    versions = records.artifacts(name, type="model")
    on_disk = {md5(p): p.name for p in Path("ckpts").glob("*.ckpt") if p.is_file() and not p.is_symlink()}
    assert len(on_disk) == 4 and min(p.stat().st_size for p in Path("ckpts").glob("*.ckpt")) > 20 * 10**6
    digests = [v.entries[0].digest for v in versions]
    assert len(digests) == len(set(digests)), "a checkpoint uploaded twice"
    assert set(on_disk) <= set(digests), f"not uploaded: {[on_disk[d] for d in set(on_disk) - set(digests)]}"
    assert len(versions) == len(writer.written) == 6  # the two that top-k rotation deleted too
    for v in versions:
        entry = v.entries[0]
        assert md5(entry.local_path) == entry.digest
        filename, epoch, global_step = writer.written[entry.digest]  # these bytes were written as ...
        assert v.metadata["original_filename"] == filename
        assert v.metadata["epoch"] == epoch and v.metadata["global_step"] == global_step
        assert f"epoch-{epoch}" in v.aliases or any(
            f"epoch-{epoch}" in o.aliases and o.version > v.version for o in versions
        )
        assert f"step-{v.metadata['step']}" in v.aliases or any(
            f"step-{v.metadata['step']}" in o.aliases and o.version > v.version for o in versions
        )
    (best,) = [v for v in versions if "best" in v.aliases]
    assert best.entries[0].digest == best_md5
    (latest,) = [v for v in versions if "latest" in v.aliases]
    assert latest.metadata["epoch"] == 5
