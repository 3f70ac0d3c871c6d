"""UploadCheckpoints and restore_checkpoint on real offline runs, read back from the run's own records."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from harness import LIGHTNING_VERSION, build_with_cli, make_logger, make_trainer, run_ranks
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
from lw_callbacks.core import files as _files
from lw_callbacks.core import jobs as _jobs
from lw_callbacks.core.publish import wait_for_cleanups
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import ArtifactVersion, RunRecords, find_runs, read_resumed, read_run


def md5(path: str | Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


class Observer(Checkpoint):
    """Listed after the ModelCheckpoints: after each of their hooks, remembers the content of every
    checkpoint file in their folders, and the step it was first seen at."""

    def __init__(self, *checkpoints: ModelCheckpoint) -> None:
        self.checkpoints = checkpoints
        self.seen: dict[tuple[str, str], int] = {}  # (real path, md5) -> global step first seen

    def _look(self, trainer: Trainer) -> None:
        for mc in self.checkpoints:
            if not mc.dirpath or not os.path.isdir(mc.dirpath):
                continue
            for path in Path(mc.dirpath).glob("*.ckpt"):
                if path.is_file() and not path.is_symlink():
                    self.seen.setdefault((os.path.realpath(path), md5(path)), trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self._look(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._look(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._look(trainer)

    def files(self, mc: ModelCheckpoint, prefix: str = "") -> dict[str, int]:
        """md5 -> step, for the contents of ``mc``'s files named ``prefix*`` that are not ``last*.ckpt``."""
        folder = os.path.realpath(mc.dirpath or "")
        return {
            digest: step
            for (path, digest), step in self.seen.items()
            if os.path.dirname(path) == folder and Path(path).name.startswith(prefix)
            and not Path(path).name.startswith("last")
        }


def versions(records: RunRecords, name: str) -> list[ArtifactVersion]:
    return records.artifacts(name, type="model")


def only_run(root: Path) -> RunRecords:
    runs = find_runs(root)
    assert len(runs) == 1, runs
    return read_run(runs[0])


# --------------------------------------------------------------------------------------------- one fit, many checks
@dataclass
class Main:
    records: RunRecords
    names: list[str]
    acc: ModelCheckpoint
    loss: ModelCheckpoint
    observer: Observer
    best_acc_md5: str
    live_restored: Path
    live_restored_md5: str
    restored: Path
    resumed: RunRecords
    resumed_names: list[str]
    resumed_epochs: int
    resumed_start_step: int
    resumed_end_step: int
    loaded: bool
    dirpath: Path
    files_after_a: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def main(isolated_dir: Path) -> Main:
    """Run A: two ModelCheckpoints (val_acc max top-1 + last, val_loss min top-2), 4 epochs; the best
    restored inside the live run and from the finished run's folder; run B resumes from it."""
    root = isolated_dir
    seed_everything(0)
    dirpath = root / "ckpts"
    acc = ModelCheckpoint(dirpath=dirpath, monitor="val_acc", mode="max", save_last=True, filename="acc-{epoch}-{step}")
    loss = ModelCheckpoint(dirpath=dirpath, monitor="val_loss", mode="min", save_top_k=2, filename="loss-{epoch}")
    upload = UploadCheckpoints(aliases=["exp-a"])
    observer = Observer(acc, loss)
    trainer = make_trainer([upload, acc, loss, observer], logger=make_logger(root / "a"), max_epochs=4)
    trainer.fit(DigitsClassifier(lr=0.02), datamodule=DigitsDataModule(batch_size=32))
    names = list(upload.collection_names)
    files_after_a = {os.path.realpath(p): md5(p) for p in dirpath.iterdir() if p.is_file()}
    best_acc_md5 = md5(acc.best_model_path)
    live = restore_checkpoint(f"{names[0]}:best", root=root / "live")  # inside the running offline run
    live_md5 = md5(live)
    wandb.finish()
    wait_for_cleanups()
    records = only_run(root / "a")
    restored = restore_checkpoint(f"{names[0]}:best", run_dir=records.run_dir, root=root / "restored")

    # Run B: a new run resumed from the restored best checkpoint, one more epoch.
    acc_b = ModelCheckpoint(
        dirpath=dirpath, monitor="val_acc", mode="max", save_last=True, filename="acc-{epoch}-{step}"
    )
    loss_b = ModelCheckpoint(dirpath=dirpath, monitor="val_loss", mode="min", save_top_k=2, filename="loss-{epoch}")
    upload_b = UploadCheckpoints(aliases=["exp-a"])
    start: list[int] = []

    class Start(Checkpoint):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            start.append(trainer.global_step)

    trainer_b = make_trainer([upload_b, acc_b, loss_b, Start()], logger=make_logger(root / "b"), max_epochs=5)
    trainer_b.fit(DigitsClassifier(lr=0.02), datamodule=DigitsDataModule(batch_size=32), ckpt_path=str(restored))
    wandb.finish()
    wait_for_cleanups()
    resumed = only_run(root / "b")
    return Main(
        records, names, acc, loss, observer, best_acc_md5, live, live_md5, restored, resumed,
        list(upload_b.collection_names), trainer_b.current_epoch, start[0], trainer_b.global_step,
        upload_b.publisher.state_loaded, dirpath, files_after_a,
    )


def test_one_collection_per_checkpoint_callback(main: Main) -> None:
    run_id = main.records.run_id
    assert main.names == [f"model-{run_id}-val_acc", f"model-{run_id}-val_loss"]
    assert main.records.artifact_names(type="model") == main.names
    for name, mc in zip(main.names, (main.acc, main.loss), strict=True):
        assert {v.metadata["monitor"] for v in versions(main.records, name)} == {mc.monitor}


@pytest.mark.parametrize("index", [0, 1])
def test_aliases_follow_each_callbacks_monitor_and_mode(main: Main, index: int) -> None:
    name = main.names[index]
    vs = versions(main.records, name)
    assert len(vs) >= 2
    scores = [v.metadata["score"] for v in vs]
    pick = max if index == 0 else min  # val_acc mode max, val_loss mode min
    best = [v for v in vs if "best" in v.aliases]
    assert len(best) == 1 and best[0].metadata["score"] == pick(scores)
    newest = max(vs, key=lambda v: (v.metadata["global_step"], v.version))
    assert [v for v in vs if "latest" in v.aliases] == [newest]
    assert [v for v in vs if "exp-a" in v.aliases] == [newest]
    for v in vs:
        assert f"epoch-{v.metadata['epoch']}" in v.aliases
        assert f"step-{v.metadata['step']}" in v.aliases  # the metrics' trainer/global_step
        # the score sits in the history at that step, as the UI's chart of the monitor shows it
        logged = dict(main.records.series(v.metadata["monitor"]))
        assert logged[v.metadata["step"]] == pytest.approx(v.metadata["score"])
    # The best moved: it was logged on more than one version of the max-acc / min-loss run.
    assert sum("best" in v.logged_aliases for v in vs) >= 2 or len({*scores}) == 1


def test_metadata_of_each_version(main: Main) -> None:
    for name, mc in zip(main.names, (main.acc, main.loss), strict=True):
        for v in versions(main.records, name):
            meta = v.metadata
            assert meta["monitor"] == mc.monitor and meta["mode"] == mc.mode
            assert meta["ModelCheckpoint"]["save_top_k"] == mc.save_top_k
            assert meta["ModelCheckpoint"]["save_last"] == mc.save_last
            assert meta["ModelCheckpoint"]["dirpath"] == str(main.dirpath)
            assert meta["original_filename"] == Path(meta["original_path"]).name
            assert meta["original_path"].startswith(os.path.realpath(main.dirpath))
            assert isinstance(meta["score"], float)
            if not meta["is_last"]:
                prefix = "acc" if mc is main.acc else "loss"
                assert meta["original_filename"].startswith(f"{prefix}-epoch={meta['epoch']}")
            assert [e.path for e in v.entries] == ["model.ckpt"]


def test_staged_files_match_digest_and_saved_file(main: Main) -> None:
    saved = {digest for _path, digest in main.observer.seen}
    deleted = 0
    for name in main.names:
        for v in versions(main.records, name):
            entry = v.entry("model.ckpt")
            assert entry.local_path and os.path.isfile(entry.local_path)
            assert md5(entry.local_path) == entry.digest
            assert entry.digest in saved  # the content the ModelCheckpoint wrote
            original = v.metadata["original_path"]
            if not os.path.exists(original):
                deleted += 1  # removed by top-k rotation after the hand-over: still whole here
                assert (original, entry.digest) in main.observer.seen
    assert deleted >= 1, "no checkpoint was deleted by top-k rotation: the case is not exercised"


def test_every_saved_checkpoint_uploaded_exactly_once(main: Main) -> None:
    for name, mc in zip(main.names, (main.acc, main.loss), strict=True):
        uploaded = [v.entry("model.ckpt").digest for v in versions(main.records, name)]
        assert len(uploaded) == len(set(uploaded))
        topk = main.observer.files(mc, "acc-" if mc is main.acc else "loss-")
        expected = set(topk)
        if mc.save_last:
            topk_steps = set(topk.values())
            folder = os.path.realpath(main.dirpath)
            for (path, digest), step in main.observer.seen.items():
                if os.path.dirname(path) == folder and Path(path).name == "last.ckpt" and step not in topk_steps:
                    expected.add(digest)  # a last.ckpt saved at a step without a top-k file
        assert set(uploaded) == expected


def test_no_staging_leftovers_and_user_files_untouched(main: Main) -> None:
    assert not (main.dirpath / _jobs.STAGING_FOLDER).exists()
    # After run A: exactly the files its ModelCheckpoints keep, each with the content they wrote.
    kept = {os.path.realpath(p) for mc in (main.acc, main.loss) for p in [*mc.best_k_models, mc.last_model_path] if p}
    assert set(main.files_after_a) == kept
    for path, digest in main.files_after_a.items():
        assert (path, digest) in main.observer.seen


def test_restore_offline_returns_the_best_file_and_fit_resumes(main: Main) -> None:
    assert md5(main.restored) == main.best_acc_md5
    assert main.restored.name == "model.ckpt"
    best = main.records.resolve_artifact(main.names[0], "best")
    entry = best.entry("model.ckpt")
    tag = base64.b64decode(entry.digest).hex()[:8]
    assert main.restored.parent.name == f"{main.names[0]}-v{best.version}-{tag}"
    assert os.stat(main.restored).st_nlink == 1  # a copy of its own, not a link to W&B's staged file
    model = DigitsClassifier.load_from_checkpoint(main.restored)
    assert model.hparams.lr == 0.02
    # Trainer.fit(ckpt_path=restored) resumed at the best checkpoint's step, not from scratch.
    assert main.loaded
    assert main.resumed_start_step == best.metadata["global_step"] > 0
    assert main.resumed_end_step > main.resumed_start_step
    assert main.resumed_epochs == 5


def test_restore_inside_the_live_run(main: Main) -> None:
    assert main.live_restored_md5 == main.best_acc_md5


def test_resume_does_not_upload_earlier_files_again(main: Main) -> None:
    earlier = {v.entry("model.ckpt").digest for v in main.records.artifacts(type="model")}
    later = main.resumed.artifacts(type="model")
    assert later, "the resumed fit uploaded nothing"
    assert set(main.resumed.artifact_names(type="model")) <= set(main.resumed_names)
    resumed_from = main.records.resolve_artifact(main.names[0], "best").metadata["epoch"]
    for v in later:
        assert v.entry("model.ckpt").digest not in earlier
        # saved by the resumed fit, which starts after the restored (best, not always last) epoch
        assert v.metadata["epoch"] is not None and v.metadata["epoch"] >= resumed_from


def test_restore_errors_list_what_exists(main: Main) -> None:
    run_dir = main.records.run_dir
    with pytest.raises(LookupError, match="no artifact named 'model-nope'") as err:
        restore_checkpoint("model-nope:best", run_dir=run_dir, timeout=1)
    assert main.names[0] in str(err.value)
    with pytest.raises(LookupError, match="no version or alias 'epoch-99'") as err:
        restore_checkpoint(f"{main.names[1]}:epoch-99", run_dir=run_dir, timeout=1)
    assert "best" in str(err.value) and "latest" in str(err.value)
    with pytest.raises(ValueError, match="ref"):
        restore_checkpoint("a/b/c/d:best", run_dir=run_dir)


# --------------------------------------------------------------------------------------------- faults
def test_failing_log_artifact_is_reported_and_retried_at_flush(wandb_env: Path) -> None:
    logger = make_logger()
    run = logger.experiment
    real_log_artifact = run.log_artifact
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("injected: W&B unreachable")
        return real_log_artifact(*args, **kwargs)

    run.log_artifact = flaky
    mc = ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_top_k=-1, filename="{epoch}")
    observer = Observer(mc)
    trainer = make_trainer([UploadCheckpoints(), mc, observer], logger=logger, max_epochs=3)
    with pytest.warns(UserWarning, match="injected: W&B unreachable") as caught:
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert any("retried when fit ends" in str(w.message) for w in caught)
    assert not any("were not uploaded" in str(w.message) for w in caught)
    files = sorted(Path("ckpts").glob("*.ckpt"))
    before = {os.path.realpath(p): md5(p) for p in files}
    wandb.finish()
    records = only_run(Path("runs"))
    (name,) = records.artifact_names(type="model")
    vs = versions(records, name)
    assert {v.entry("model.ckpt").digest for v in vs} == set(observer.files(mc)) == set(before.values())
    newest = max(vs, key=lambda v: v.metadata["global_step"])
    # Retried versions are logged after the newest one; `latest` still ends on the newest.
    assert "latest" in newest.aliases, [(v.version, v.metadata["global_step"], v.logged_aliases) for v in vs]
    best = max(vs, key=lambda v: v.metadata["score"])
    assert "best" in best.aliases
    assert {os.path.realpath(p): md5(p) for p in sorted(Path("ckpts").glob("*.ckpt"))} == before  # untouched

    # A staged file that no longer matches its recorded digest is refused, naming both digests.
    staged = vs[0].entry("model.ckpt").local_path
    assert staged is not None
    os.chmod(staged, 0o600)
    with open(staged, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ValueError, match="md5") as err:
        restore_checkpoint(f"{name}:v0", run_dir=records.run_dir)
    assert vs[0].entry("model.ckpt").digest in str(err.value)


def test_staging_disk_full_uploads_from_the_original_at_flush(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)", dst)

    monkeypatch.setattr(_files, "_link", full)
    # No monitor, top-1: each epoch's file replaces the previous one; the descriptor taken when it was
    # saved still reads it at flush, so none is lost.
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=1, filename="{epoch}")
    observer = Observer(mc)
    trainer = make_trainer([UploadCheckpoints(), mc, observer], max_epochs=3)
    with pytest.warns(UserWarning) as caught:
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    messages = [str(w.message) for w in caught]
    full_warnings = [m for m in messages if "disk full" in m]
    assert len(full_warnings) == 1, messages  # one warning, naming the file and the fix
    assert "epoch=0.ckpt" in full_warnings[0] and "staging_dir" in full_warnings[0]
    assert not any("not in W&B" in m for m in messages)
    wandb.finish()
    wait_for_cleanups()
    records = only_run(Path("runs"))
    (name,) = records.artifact_names(type="model")
    uploaded = {v.entry("model.ckpt").digest for v in versions(records, name)}
    assert uploaded == set(observer.files(mc))  # all three, though two were deleted by rotation
    assert not (Path("ckpts") / _jobs.STAGING_FOLDER).exists()


class FailAt(DigitsClassifier):
    def __init__(self, step: int, error: type[BaseException]) -> None:
        super().__init__()
        self.fail_step, self.error = step, error

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.global_step == self.fail_step:
            raise self.error("injected mid-fit failure")
        return super().training_step(batch, batch_idx)


@pytest.mark.skipif(LIGHTNING_VERSION < (2, 5, 3), reason="ModelCheckpoint(save_on_exception=) needs lightning 2.5.3")
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_fit_keeps_every_saved_checkpoint(wandb_env: Path, error: type[BaseException]) -> None:
    mc = ModelCheckpoint(
        dirpath="ckpts", save_top_k=-1, every_n_train_steps=2, save_on_exception=True, filename="{step}"
    )
    observer = Observer(mc)
    trainer = make_trainer([UploadCheckpoints(), mc, observer])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
            trainer.fit(FailAt(9, error), datamodule=DigitsDataModule(batch_size=32))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    saved = observer.files(mc)
    assert len(saved) >= 5  # steps 2, 4, 6, 8 and the save on exception
    wandb.finish()
    records = read_run(find_runs("runs")[0], require_exit=False)
    (name,) = records.artifact_names(type="model")
    assert {v.entry("model.ckpt").digest for v in versions(records, name)} == set(saved)


def test_leftover_staged_copies_are_uploaded_by_the_resumed_fit(wandb_env: Path) -> None:
    logger = make_logger("a")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("injected: W&B down for this whole fit")

    logger.experiment.log_artifact = down
    mc = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, save_last=True, filename="{epoch}")
    observer = Observer(mc)
    trainer = make_trainer([UploadCheckpoints(flush_timeout=20), mc, observer], logger=logger)
    with pytest.warns(UserWarning, match="were not uploaded"):
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    run_id = logger.experiment.id
    wandb.finish()
    staged = sorted((Path("ckpts") / _jobs.STAGING_FOLDER / run_id).glob("*/*.ckpt"))
    assert len(staged) == 2  # epoch 0 and 1; the last.ckpt copies share their steps

    # A staged copy of another run in the same folder is reported, never uploaded into this one.
    stranger = Path("ckpts") / _jobs.STAGING_FOLDER / "otherrun" / "model-otherrun"
    stranger.mkdir(parents=True)
    (stranger / "000000-x-epoch=9.ckpt").write_bytes(b"not ours")
    note = {"seq": 0, "collection": "model-otherrun", "source": "x", "staged": str(stranger / "000000-x-epoch=9.ckpt"),
            "size": 8, "signature": [0, 0, 8, 0], "score": None, "metadata": {}, "aliases": [], "run_id": "otherrun"}
    (stranger / "000000-x-epoch=9.ckpt.json").write_text(json.dumps(note))

    mc_b = ModelCheckpoint(dirpath="ckpts", save_top_k=-1, save_last=True, filename="{epoch}")
    logger_b = make_logger("a", id=run_id, resume="allow")  # the same run, resumed: a new offline segment
    trainer_b = make_trainer([UploadCheckpoints(flush_timeout=20), mc_b], logger=logger_b, max_epochs=3)
    with pytest.warns(UserWarning, match="another run \\(otherrun\\)"):
        trainer_b.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32), ckpt_path=mc.last_model_path)
    wandb.finish()
    wait_for_cleanups()
    records = read_resumed(Path("a"), run_id)
    assert len(records.segments) == 2
    uploaded = [v.entry("model.ckpt").digest for v in versions(records, f"model-{run_id}")]
    assert len(uploaded) == len(set(uploaded)) == 3
    assert set(observer.files(mc)) <= set(uploaded)
    epochs = sorted(v.metadata["epoch"] for v in versions(records, f"model-{run_id}"))
    assert epochs == [0, 1, 2]
    assert not (Path("ckpts") / _jobs.STAGING_FOLDER / run_id).exists()
    assert (stranger / "000000-x-epoch=9.ckpt").exists()


# --------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "model-{run}"}, r"unknown field \{run\}"),
        ({"name": "model-{monitor"}, "name="),
        ({"name": "model/{monitor}"}, "letters, digits"),
        ({"aliases": ["good", "bad/alias"]}, "bad/alias"),
        ({"aliases": ["with space"]}, "with space"),
        ({"aliases": ["best"]}, "sets itself"),
        ({"aliases": ["v3"]}, "reserves"),
        ({"flush_timeout": 0}, "flush_timeout"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        UploadCheckpoints(**kwargs)


def test_name_template_and_double_upload_warning(wandb_env: Path) -> None:
    a = ModelCheckpoint(monitor="val/acc", mode="max")
    b = ModelCheckpoint(monitor="val_loss")
    upload = UploadCheckpoints(name="ckpt-{monitor}-{mode}-{index}-{run_id}")
    trainer = make_trainer([upload, a, b], logger=make_logger(log_model="all"))
    with pytest.warns(UserWarning, match=r"Turn off `log_model`"):
        upload.setup(trainer, DigitsClassifier(), "fit")
    run_id = trainer.logger.experiment.id  # type: ignore[union-attr]
    assert upload.collection_names == [f"ckpt-val_acc-max-0-{run_id}", f"ckpt-val_loss-min-1-{run_id}"]
    assert trainer.callbacks.index(upload) > max(trainer.callbacks.index(a), trainer.callbacks.index(b))
    upload.teardown(trainer, DigitsClassifier(), "fit")
    clash = UploadCheckpoints(name="ckpt-{mode}")
    with pytest.raises(MisconfigurationException, match="same artifact name"):
        clash.setup(make_trainer([clash, ModelCheckpoint(), ModelCheckpoint(monitor="x")]), DigitsClassifier(), "fit")


def test_lightning_cli_yaml_builds_it(wandb_env: Path) -> None:
    cli = build_with_cli(
        """
- class_path: lightning.pytorch.callbacks.ModelCheckpoint
  init_args: {monitor: val_acc, mode: max}
- class_path: lw_callbacks.checkpoints.UploadCheckpoints
  init_args:
    name: "model-{run_id}-{monitor}"
    aliases: [baseline]
    flush_timeout: 120
    progress_bar: false
""",
        wandb_env,
    )
    (upload,) = [c for c in cli.trainer.callbacks if isinstance(c, UploadCheckpoints)]
    assert upload.name == "model-{run_id}-{monitor}"
    assert upload.aliases == ("baseline",)
    assert upload.flush_timeout == 120.0 and upload.progress_bar is False


@pytest.mark.slow
def test_ddp_two_processes_upload_each_file_once(wandb_env: Path) -> None:
    save_dir = wandb_env / "ddp"
    reports = run_ranks("checkpoints_ddp.py", str(save_dir), out_dir=wandb_env / "reports", timeout=180)
    assert [r["rank"] for r in reports] == [0, 1]
    rank0, rank1 = reports
    assert rank0["names"] == rank1["names"] and len(rank0["names"]) == 1
    assert rank1["uploader_alive"] is False and rank0["uploader_alive"] is False
    files = rank0["files"]
    assert len(files) == 2  # save_top_k=-1, two epochs
    vs = rank0["versions"]
    assert rank0["artifact_records"] == len(vs) == len(files)  # one upload per file, from rank 0 only
    assert {v["original_path"]: v["digest"] for v in vs} == files
    best = [v for v in vs if "best" in v["aliases"]]
    assert len(best) == 1 and best[0]["score"] == max(v["score"] for v in vs)
    # every rank got the same path, holding the best checkpoint
    assert rank0["restored"] == rank1["restored"]
    assert rank0["restored_md5"] == rank1["restored_md5"] == files[rank0["best_model_path"]]


@pytest.mark.parametrize("setting", ["offline", "disabled", "fast_dev_run", "no_checkpoint_saved"])
def test_restore_gives_the_best_file_or_none_when_nothing_was_uploaded(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """The README's restore line runs in every setting: a file when one was uploaded, else None."""
    if setting == "disabled":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    seed_everything(0)
    mc = ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_top_k=1)
    upload = UploadCheckpoints()
    options: dict[str, Any] = {"fast_dev_run": True} if setting == "fast_dev_run" else {}
    if setting == "no_checkpoint_saved":
        options["limit_val_batches"] = 0  # nothing to monitor: ModelCheckpoint saves nothing with a monitor
        mc = ModelCheckpoint(dirpath="ckpts", monitor="val_acc", mode="max", save_on_train_epoch_end=False)
    trainer = make_trainer([mc, upload], **options)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    path = upload.restore("best")
    if setting == "offline":
        assert path is not None and md5(path) == md5(mc.best_model_path)
        assert md5(upload.restore("latest")) == md5(path)  # one file kept: it is both
        with pytest.raises(LookupError, match="step-9999"):
            upload.restore("step-9999")
        with pytest.raises(IndexError, match="index"):
            upload.restore(index=1)
    else:
        assert path is None
        if setting == "no_checkpoint_saved":
            assert upload.collection_names and not mc.best_model_path


def test_state_key_is_fixed_during_a_fit_and_names_the_options() -> None:
    """Lightning reads ``state_key`` on every hook call; during a fit it is built once, and the
    checkpoint's callback states are saved under it."""
    mc = ModelCheckpoint(dirpath="ckpt", monitor="val_acc", mode="max")
    upload = UploadCheckpoints(checkpoints=[mc])
    before = upload.state_key
    seen: set[str] = set()

    class Probe(Checkpoint):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            seen.add(upload.state_key)

    trainer = make_trainer([mc, upload, Probe()])
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=32))
    wandb.finish()
    assert seen == {before}
    saved = torch.load(mc.best_model_path, weights_only=False)["callbacks"]
    assert before in saved, sorted(saved)
    with pytest.raises(AttributeError, match=r"UploadCheckpoints\.aliases is read-only.*aliases="):
        upload.aliases = ("production",)  # options are fixed at construction
    other = UploadCheckpoints(checkpoints=[mc], aliases=["production"])  # the key names the options
    assert other.state_key != before and "production" in other.state_key
    # built once per change of what it names (a ModelCheckpoint's settable options): never stale
    mc.monitor, mc.mode = "val_loss", "min"
    assert upload.state_key == upload._generate_state_key(name=None, aliases=[], checkpoints=[mc.state_key])
    assert "val_loss" in upload.state_key and upload.state_key != before

    class OwnKey(ModelCheckpoint):
        tag = "a"

        @property
        def state_key(self) -> str:
            return f"OwnKey[{self.tag}]"

    own = OwnKey()
    keyed = UploadCheckpoints(checkpoints=[own])
    assert "OwnKey[a]" in keyed.state_key
    own.tag = "b"  # an attribute this class's key reads, which the cache does not know: built each call
    assert "OwnKey[b]" in keyed.state_key
