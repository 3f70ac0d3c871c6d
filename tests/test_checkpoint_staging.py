"""UploadCheckpoints on another filesystem and on a full disk, restore after an offline resume, a
restored file that is the user's own, collections of two uploaders, the DDP end-of-fit rule, and
Fabric metadata; every check read back from the run's own records."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from harness import make_logger, make_trainer
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from lw_callbacks import ConfigurationError
from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
from lw_callbacks.core import files as _files
from lw_callbacks.core.publish import wait_for_cleanups
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import find_runs, read_resumed, read_run


def md5(path: str | Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


class Seen(Checkpoint):
    """After the ModelCheckpoints' hooks: the content of every checkpoint file in ``folder``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.digests: set[str] = set()

    def _look(self, *args: Any) -> None:
        for path in Path(self.folder).glob("*.ckpt"):
            if path.is_file() and not path.is_symlink():
                self.digests.add(md5(path))

    on_train_batch_end = on_validation_end = on_train_epoch_end = on_train_end = _look


def model_digests(records: Any, name: str) -> list[str]:
    return [e.digest for v in records.artifacts(name, type="model") for e in v.entries]


@pytest.fixture
def shm() -> Iterator[Path]:
    """A staging folder on tmpfs (another filesystem than the checkpoints')."""
    root = Path("/dev/shm")
    if not root.is_dir() or not os.access(root, os.W_OK):
        pytest.skip("no writable /dev/shm")
    folder = root / f"lw-staging-{uuid.uuid4().hex[:8]}"
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True) if folder.exists() else []:
        path.unlink() if path.is_file() else path.rmdir()
    if folder.exists():
        folder.rmdir()


def test_staging_on_another_filesystem_uploads_every_checkpoint(wandb_env: Path, shm: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(wandb_env).st_dev:
        pytest.skip("/dev/shm is on the same filesystem here")
    # No monitor, top-1: every epoch's file replaces the previous one.
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=1, filename="{epoch}")
    seen = Seen("ckpts")
    trainer = make_trainer([UploadCheckpoints(staging_dir=str(shm)), mc, seen], max_epochs=3)
    with pytest.warns(UserWarning, match="could not hard-link") as caught:
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert sum("could not hard-link" in str(w.message) for w in caught) == 1
    assert not any("rewritten" in str(w.message) or "not uploaded" in str(w.message) for w in caught)
    wandb.finish()
    wait_for_cleanups()
    records = read_run(find_runs("runs")[0])
    (name,) = records.artifact_names(type="model")
    uploaded = model_digests(records, name)
    assert len(seen.digests) == 3 and set(uploaded) == seen.digests  # top-1 rotated two away: still uploaded
    assert len(uploaded) == len(set(uploaded))
    assert not list(shm.rglob("*"))  # nothing left staged once the records are on disk


def test_staging_disk_filling_up_leaves_no_partial_file(
    wandb_env: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partials: list[str] = []
    real_write = _files._write

    def fill_up(fh: Any, data: bytes) -> None:  # the disk fills up half-way through each copy
        real_write(fh, data[: len(data) // 2])
        fh.flush()
        partials.append(fh.name)
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def other_filesystem(src: str, dst: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link (injected)")

    monkeypatch.setattr(_files, "_link", other_filesystem)
    monkeypatch.setattr(_files, "_write", fill_up)
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=1, filename="{epoch}")
    seen = Seen("ckpts")
    trainer = make_trainer([UploadCheckpoints(staging_dir=str(shm)), mc, seen], max_epochs=3)
    with pytest.warns(UserWarning) as caught:
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    messages = [str(w.message) for w in caught]
    full = [m for m in messages if "disk full" in m]
    assert len(full) == 1 and "epoch=0.ckpt" in full[0] and "staging_dir" in full[0], messages
    assert partials and not any(os.path.exists(p) for p in partials)
    assert not list(shm.rglob("*.partial"))
    wandb.finish()
    wait_for_cleanups()
    records = read_run(find_runs("runs")[0])
    (name,) = records.artifact_names(type="model")
    # each file was uploaded from the descriptor taken when it was saved, though rotation deleted two
    assert set(model_digests(records, name)) == seen.digests and len(seen.digests) == 3


def test_restore_after_an_offline_resume_keeps_every_path_it_returned(wandb_env: Path) -> None:
    def fit(epochs: int, resume: bool) -> tuple[list[str], ModelCheckpoint]:
        mc = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, save_last="link", filename="{epoch}")
        logger = make_logger("runs", id="resumeckpt", resume="allow")
        upload = UploadCheckpoints()
        trainer = make_trainer([upload, mc], logger=logger, max_epochs=epochs)
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32),
                    ckpt_path="last" if resume else None)
        return upload.collection_names, mc

    (name,), _ = fit(2, resume=False)
    first_v0 = restore_checkpoint(f"{name}:v0", root="restored")
    first_v0_md5 = md5(first_v0)
    wandb.finish()
    wait_for_cleanups()
    time.sleep(1.1)  # a segment's folder is named by the second it starts in: two in one second share it
    (name_b,), mc_b = fit(4, resume=True)
    assert name_b == name
    wandb.finish()
    wait_for_cleanups()
    records = read_resumed("runs", "resumeckpt")
    assert len(records.segments) == 2
    versions = records.artifacts(name)
    assert [v.version for v in versions] == [0, 1, 2, 3]  # numbered over both segments, as sync will
    again = restore_checkpoint(f"{name}:v0", run_dir="runs", root="restored")
    assert md5(again) == first_v0_md5 == versions[0].entries[0].digest
    assert md5(first_v0) == first_v0_md5  # a path returned before the resume still holds its bytes
    latest = restore_checkpoint(f"{name}:latest", run_dir="runs", root="restored")
    assert md5(latest) == md5(os.path.realpath(mc_b.last_model_path)) == versions[-1].entries[0].digest
    assert latest != first_v0


def test_restored_file_is_the_users_own(wandb_env: Path) -> None:
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, filename="{epoch}")
    upload = UploadCheckpoints()
    trainer = make_trainer([upload, mc], max_epochs=1)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    records = read_run(find_runs("runs")[0])
    (name,) = upload.collection_names
    entry = records.resolve_artifact(name, "latest").entry("model.ckpt")
    path = restore_checkpoint(f"{name}:latest", run_dir="runs")
    original = path.read_bytes()
    assert os.stat(path).st_nlink == 1
    torch.save({"mine": torch.zeros(3)}, path)  # the user writes over it in place
    with open(path, "r+b") as fh:
        fh.write(b"edited")
    assert entry.local_path and md5(entry.local_path) == entry.digest  # what `wandb sync` uploads is intact
    again = restore_checkpoint(f"{name}:latest", run_dir="runs")
    assert again == path and again.read_bytes() == original


def test_two_uploaders_on_checkpoints_with_one_monitor_get_two_collections(wandb_env: Path) -> None:
    fast = ModelCheckpoint(dirpath="ckpts", monitor="val_loss", save_top_k=1, filename="fast-{epoch}")
    slow = ModelCheckpoint(dirpath="ckpts", monitor="val_loss", save_top_k=1, every_n_epochs=2,
                           filename="slow-{epoch}")
    up_fast, up_slow = UploadCheckpoints(checkpoints=[fast]), UploadCheckpoints(checkpoints=[slow])
    trainer = make_trainer([up_fast, up_slow, fast, slow], max_epochs=4)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    records = read_run(find_runs("runs")[0])
    run_id = records.run_id
    assert up_fast.collection_names == [f"model-{run_id}-val_loss-fast"]
    assert up_slow.collection_names == [f"model-{run_id}-val_loss-slow"]
    for upload, prefix, epochs in ((up_fast, "fast", [0, 1, 2, 3]), (up_slow, "slow", [1, 3])):
        versions = records.artifacts(upload.collection_names[0])
        assert all(v.metadata["original_filename"].startswith(prefix) for v in versions)
        assert sorted(v.metadata["epoch"] for v in versions) == epochs
        for v in versions:
            assert f"epoch-{v.metadata['epoch']}" in v.aliases
        best = min(versions, key=lambda v: v.metadata["score"])
        assert "best" in best.aliases
        assert "latest" in max(versions, key=lambda v: v.metadata["epoch"]).aliases


def test_two_uploaders_on_one_checkpoint_are_refused_at_setup(wandb_env: Path) -> None:
    mc = ModelCheckpoint(dirpath="ckpts", monitor="val_loss")
    first, second = UploadCheckpoints(checkpoints=[mc]), UploadCheckpoints(checkpoints=[mc], aliases=["x"])
    trainer = make_trainer([first, second, mc])
    with pytest.raises(ConfigurationError, match="same ModelCheckpoint"):
        first.setup(trainer, DigitsClassifier(), "fit")


class _Module(LightningModule):
    pass


@pytest.mark.slow
def test_ddp_end_of_fit_waits_at_most_half_the_process_group_timeout(wandb_env: Path) -> None:
    upload = UploadCheckpoints(flush_timeout=600)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=100)),
                      logger=False)
    assert upload._end_of_fit_timeout(trainer) == 50.0
    assert UploadCheckpoints(flush_timeout=20)._end_of_fit_timeout(trainer) == 20.0
    single = Trainer(accelerator="cpu", devices=1, logger=False)
    assert upload._end_of_fit_timeout(single) == 600.0


def test_fabric_metadata_is_checked_before_anything_is_marked(wandb_env: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.fabric import FabricUploadCheckpoints

    logger = WandbLogger(project="lw-tests", save_dir=os.path.abspath("runs"))
    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[logger])
    upload = FabricUploadCheckpoints()
    fabric.save("model.ckpt", {"w": torch.ones(2)})
    with pytest.raises(ConfigurationError, match="JSON"):
        upload.upload_checkpoint(fabric, "model.ckpt", step=1, metadata={"path": Path("x")})
    upload.upload_checkpoint(fabric, "model.ckpt", step=1, metadata={"path": "x"})  # corrected: uploaded
    upload.training_done(fabric)
    wandb.finish()
    records = read_run(find_runs("runs")[0])
    (version,) = records.artifacts(upload.collection_name)
    assert version.metadata["path"] == "x" and version.entries[0].digest == md5("model.ckpt")


def test_each_checkpoint_is_hashed_once(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every md5 computed in this process (ours and W&B's) is observed, not changed: what it hashed and how much.
    import threading

    real_md5 = hashlib.md5
    made: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Counted:
        def __init__(self, data: bytes = b"", **kwargs: Any) -> None:
            self._hash = real_md5(data, **kwargs)
            self.read = len(data)

        def update(self, data: Any) -> None:
            self.read += len(data)
            self._hash.update(data)

        def digest(self) -> bytes:
            value = self._hash.digest()
            with lock:
                made.append((base64.b64encode(value).decode(), self.read))
            return value

        def hexdigest(self) -> str:
            return self.digest().hex()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._hash, name)

    monkeypatch.setattr(hashlib, "md5", Counted)
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer([mc, UploadCheckpoints(progress_bar=False)], max_epochs=3)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    wait_for_cleanups()
    monkeypatch.undo()
    records = read_run(find_runs("runs")[0])
    (name,) = records.artifact_names(type="model")
    entries = [e for v in records.artifacts(name, type="model") for e in v.entries]
    assert len(entries) == 3 and len({e.digest for e in entries}) == 3
    for entry in entries:
        hashed = [read for digest, read in made if digest == entry.digest]
        assert hashed == [entry.size], f"{entry.path} ({entry.size} bytes) was hashed {len(hashed)} times: {hashed}"
        assert entry.local_path and Path(entry.local_path).is_file() and md5(entry.local_path) == entry.digest


def test_a_checkpoint_rewritten_while_wandb_copies_it_is_not_logged_under_the_old_digest(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    real = _files.copy_for_wandb
    rewritten: list[str] = []

    def rewrite_first(path: str) -> str:
        copy = real(path)
        if not rewritten:  # injected: the checkpoint is rewritten in place while W&B's copy was made
            rewritten.append(md5(path))
            with open(path, "ab") as fh:  # our staged hard link: the checkpoint file itself
                fh.write(b"rewritten in place")
        return copy

    monkeypatch.setattr(_files, "copy_for_wandb", rewrite_first)
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer([mc, UploadCheckpoints(progress_bar=False)], max_epochs=2)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    wait_for_cleanups()
    records = read_run(find_runs("runs")[0])
    (name,) = records.artifact_names(type="model")
    entries = [e for v in records.artifacts(name, type="model") for e in v.entries]
    assert rewritten and entries and rewritten[0] not in {e.digest for e in entries}
    for entry in entries:
        assert entry.local_path and md5(entry.local_path) == entry.digest
    assert not list(Path("ckpts").rglob("*.upload-staging/*/*/*"))
