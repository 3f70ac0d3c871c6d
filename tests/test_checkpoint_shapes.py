"""Checkpoints of every shape, timing and place: ``best`` without a monitor, asynchronous saving
(``AsyncCheckpointIO``), a folder per checkpoint, and fsspec dirpaths; read back from the run's records."""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import modules
import pytest
import torch
import wandb
from harness import SCRIPTS, make_logger, make_trainer, run_ranks
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lw_callbacks import ConfigurationError
from lw_callbacks.checkpoints import UploadCheckpoints
from lw_callbacks.core import files as _files
from lw_callbacks.core import jobs as _jobs
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


def padded(namespace: str, pad_mb: int = 20) -> Any:
    """The digits model of ``namespace`` with a buffer of ``pad_mb`` MiB, for checkpoints of tens of MB."""
    base: Any = modules.of(namespace).DigitsClassifier

    class Padded(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("pad", torch.randn(pad_mb * 2**20 // 4))

    return Padded()


@pytest.mark.parametrize("namespace", modules.NAMESPACES)
def test_async_checkpoint_io_uploads_each_file_once_with_its_own_metadata(wandb_env: Path, namespace: str) -> None:
    """6 checkpoints of 20 MB written by AsyncCheckpointIO (either namespace) on a slow disk while training goes
    on, top-k rotation deleting two: the top k are on disk at the end, each one version whose md5 is its file's, and
    each version's epoch, step and aliases are those of the bytes it holds (read from the checkpoint the
    writer wrote)."""
    L = modules.api(namespace)
    io_module = importlib.import_module(f"{namespace}.plugins.io")
    writer = RecordingIO(delay=2.0)
    mc = L.ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_top_k=4, filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = L.Trainer(
        logger=make_logger(namespace=namespace), callbacks=[mc, upload], max_epochs=6, limit_train_batches=3,
        limit_val_batches=1, accelerator="cpu", devices=1, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir="lightning",
        plugins=[io_module.AsyncCheckpointIO(writer)],
    )
    trainer.fit(padded(namespace), datamodule=modules.of(namespace).DigitsDataModule(batch_size=32))
    best_md5 = md5(mc.best_model_path)
    name = upload.collection_names[0]
    wandb.finish()
    wait_for_cleanups()
    records = read_run(find_runs("runs")[0])
    versions = records.artifacts(name, type="model")
    on_disk = {md5(p): p.name for p in Path("ckpts").glob("*.ckpt") if p.is_file() and not p.is_symlink()}
    # Rotation's deletions wait on the writer thread behind the writes and hand-overs queued before them: none
    # comes before its file's write (which would leave the file behind) or before its hand-over (lost).
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


# ------------------------------------------------------------------------------------------ fsspec dirpaths
@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_dirpath_every_kept_checkpoint_uploaded_and_restorable(wandb_env: Path, scheme: str) -> None:
    """``memory://`` files are streamed through fsspec into the staging folder by the worker; ``file://`` is a
    local folder. Every checkpoint kept is one version with its bytes, and ``best`` restores to its bytes."""
    import fsspec

    dirpath = f"memory://ck-{wandb_env.name}" if scheme == "memory" else f"file://{wandb_env / 'fck'}"
    mc = ModelCheckpoint(dirpath=dirpath, monitor="val_acc", mode="max", save_top_k=2, save_last=True,
                         filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = make_trainer([mc, upload], max_epochs=4)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    fs, root = fsspec.core.url_to_fs(mc.dirpath)
    kept = {Path(p).name: base64.b64encode(hashlib.md5(fs.cat_file(p)).digest()).decode()
            for p in fs.ls(root, detail=False) if p.endswith(".ckpt") and Path(p).name != "last.ckpt"}
    assert len(kept) == 2
    best_md5 = kept[Path(mc.best_model_path).name]
    restored = upload.restore("best")
    assert restored is not None and md5(restored) == best_md5
    name = upload.collection_names[0]
    wandb.finish()
    wait_for_cleanups()
    versions = read_run(find_runs("runs")[0]).artifacts(name, type="model")
    digests = [v.entries[0].digest for v in versions]
    assert set(kept.values()) <= set(digests) and len(digests) == len(set(digests))
    for v in versions:
        assert md5(v.entries[0].local_path) == v.entries[0].digest
    if scheme == "memory":
        assert all(v.metadata["original_path"].startswith("memory://") for v in versions)
        fs.rm(root, recursive=True)


def test_unsupported_dirpath_scheme_is_refused_at_setup(wandb_env: Path) -> None:
    mc = ModelCheckpoint(dirpath="http://example.com/ckpts", monitor="val_acc", mode="max")
    trainer = make_trainer([mc, UploadCheckpoints()], max_epochs=1)
    with pytest.raises(ConfigurationError, match=r"dirpath='http://example.com/ckpts'"):
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))


# ------------------------------------------------------------------------------------------ folder checkpoints
def _folder_module() -> Any:
    spec = importlib.util.spec_from_file_location("folder_checkpoints", SCRIPTS / "folder_checkpoints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folder_checkpoints_one_version_each_restored_as_a_folder_that_resumes(wandb_env: Path) -> None:
    """A CheckpointIO writing a folder per checkpoint: each folder is one version holding all its files
    (paths relative to the folder), staged by hard links; ``restore("best")`` returns an identical folder
    and ``trainer.fit(ckpt_path=restored)`` resumes from it."""
    folders = _folder_module()
    mc = ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_top_k=2, filename="{epoch}-{step}")
    upload = UploadCheckpoints()
    trainer = make_trainer([mc, upload], max_epochs=3, plugins=[folders.FolderCheckpointIO()])
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    kept = {Path(p).name: folders.listing(p) for p in mc.best_k_models}
    assert len(kept) == 2 and all(set(files) == {"meta.pt", "shard-0.pt"} for files in kept.values())
    restored = upload.restore("best")
    assert restored is not None and restored.is_dir()
    assert folders.listing(restored) == kept[Path(mc.best_model_path).name]
    best_step = torch.load(Path(mc.best_model_path) / "meta.pt", weights_only=False)["global_step"]
    name = upload.collection_names[0]
    wandb.finish()
    wait_for_cleanups()
    versions = read_run(find_runs("runs")[0]).artifacts(name, type="model")
    assert len(versions) == 3  # every folder saved, the one top-k rotation deleted too
    by_name = {v.metadata["original_filename"]: v for v in versions}
    for folder_name, files in kept.items():
        v = by_name[folder_name]
        assert {e.path: e.digest for e in v.entries} == files and v.metadata["folder"] is True
        assert v.digest == _files.manifest_digest(files)  # deduplicated by this digest
        for e in v.entries:
            assert e.local_path and md5(e.local_path) == e.digest
    assert "best" in by_name[Path(mc.best_model_path).name].aliases
    assert not list(Path("ckpts").glob(f"{_jobs.STAGING_FOLDER}/*/*/*"))  # nothing left staged

    starts: list[int] = []

    class Start(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            starts.append(trainer.global_step)

    resumed = make_trainer([Start()], max_epochs=4, plugins=[folders.FolderCheckpointIO()])
    resumed.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32), ckpt_path=str(restored))
    assert starts == [best_step] and resumed.global_step > best_step


@pytest.mark.slow
def test_folder_checkpoints_under_ddp_each_rank_writing_its_shard(wandb_env: Path) -> None:
    """2-process DDP (gloo), each rank writing its shard into the checkpoint's folder, as sharded strategies
    do: every folder is one version with all its files; every rank restores an identical folder; a new
    2-process fit resumes from it."""
    reports = run_ranks("folder_checkpoints.py", str(wandb_env / "ddp"), out_dir=wandb_env / "reports", timeout=300)
    rank0, rank1 = reports
    assert rank0["names"] == rank1["names"]
    saved = rank0["saved"]
    assert len(saved) == 2 and all(set(files) == {"meta.pt", "shard-0.pt", "shard-1.pt"} for files in saved.values())
    versions = rank0["versions"]
    assert len(versions) == len(saved)
    assert sorted(sorted(v["entries"].items()) for v in versions) == sorted(sorted(f.items()) for f in saved.values())
    for v in versions:
        assert v["digest"] == _files.manifest_digest(v["entries"])
    (best,) = [v for v in versions if "best" in v["aliases"]]
    assert best["entries"] == saved[rank0["best_model_path"]]
    for report in reports:
        assert report["restored_files"] == saved[rank0["best_model_path"]]
        assert report["resumed_start"] == rank0["best_global_step"] and report["resumed_end"] > report["resumed_start"]


def test_fabric_uploads_a_checkpoint_folder_and_restores_it(wandb_env: Path) -> None:
    """``FabricUploadCheckpoints.upload_checkpoint`` takes the folder of a sharded checkpoint: one version
    of all its files, ``best`` by score, restored as an identical folder."""
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.fabric import FabricUploadCheckpoints, restore_checkpoint

    folders = _folder_module()
    fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="lw-tests", save_dir=str(wandb_env))])
    upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
    saved = {}
    for epoch, acc in enumerate([0.5, 0.8, 0.6]):
        folder = wandb_env / "ckpts" / f"epoch={epoch}"
        (folder / "shards").mkdir(parents=True)
        torch.save({"epoch": epoch}, folder / "meta.pt")
        torch.save({"w": torch.randn(1000)}, folder / "shards" / "0.pt")
        upload.upload_checkpoint(fabric, folder, step=epoch, epoch=epoch, score=acc)
        saved[epoch] = folders.listing(folder)
    upload.training_done(fabric)
    restored = restore_checkpoint(f"{upload.collection_name}:best")
    assert restored.is_dir() and folders.listing(restored) == saved[1]
    assert set(saved[1]) == {"meta.pt", "shards/0.pt"}
    wandb.finish()
    versions = read_run(find_runs(wandb_env)[0]).artifacts(upload.collection_name)
    assert [{e.path: e.digest for e in v.entries} for v in versions] == [saved[0], saved[1], saved[2]]
    assert "best" in versions[1].aliases and versions[1].metadata["folder"] is True
