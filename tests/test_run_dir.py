"""ShareRunDir: rank 0's run folder, id and name known on every rank, under every launcher."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import finish_and_read, fit_digits, make_logger, make_trainer, run_ranks
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lw_callbacks import ShareRunDir
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import find_runs, iter_records, read_run
from lw_callbacks.run_dir import pack_config, shared_run_config, unpack_config


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


@pytest.mark.parametrize("launcher", [pytest.param("ddp", marks=pytest.mark.slow)])  # others: test_all_five.py
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


# ------------------------------------------------------------------ the run's config on every rank

EXAMPLES = Path(__file__).parent.parent / "examples"
SWEEP = {"lr": 0.03, "hidden": 128}  # not the example model's defaults (0.01, 64)


def _example_module() -> Any:
    """examples/sweep_ddp.py, imported (its __main__ guard keeps it from running)."""
    spec = importlib.util.spec_from_file_location("sweep_ddp_example", EXAMPLES / "sweep_ddp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sweep_params(path: Path, values: dict[str, Any]) -> Path:
    """The file a sweep agent writes for one run (``{name: {value: v}}``); wandb.init reads it."""
    path.write_text("".join(f"{k}:\n  value: {json.dumps(v)}\n" for k, v in values.items()))
    return path


@pytest.fixture
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Makes the test's runs sweep runs with the given values, as an agent's parameter file would."""

    def start(values: dict[str, Any]) -> None:
        monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(write_sweep_params(tmp_path / "params.yaml", values)))

    yield start
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # wandb keeps the sweep's settings for every later run of the process


def recorded_writes(run_dir: Path, key: str) -> list[Any]:
    """Every value the run's records ever set ``key`` to in its config, in order."""
    values = []
    for record in iter_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        values += [json.loads(item.value_json) for item in updates if item.key == key]
    return values


def test_sweep_values_reach_the_hparams_the_model_is_built_with(sweep: Callable[[dict[str, Any]], None]) -> None:
    sweep({**SWEEP, "dropout": 0.5})
    example = _example_module()
    model = example.SweepClassifier()
    share = ShareRunDir(apply_config_to_hparams=True)
    logger = make_logger(config={"batch_size": 32})
    trainer = make_trainer([share], logger=logger, max_epochs=1)
    dm = DigitsDataModule(batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
        trainer.validate(model, datamodule=dm)  # a second setup: no second warning
    assert share.config == {"batch_size": 32, **SWEEP, "dropout": 0.5}
    assert (model.hparams["lr"], model.hparams["hidden"]) == (0.03, 128)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.03
    assert model.net[1].out_features == 128
    ours = [str(w.message) for w in caught if "ShareRunDir" in str(w.message)]
    assert len(ours) == 1 and "'dropout'" in ours[0] and "SweepClassifier" in ours[0], ours
    run = finish_and_read()
    assert (run.config["lr"], run.config["hidden"]) == (0.03, 128)
    assert set(recorded_writes(run.run_dir, "lr")) == {0.03}  # never the default, not even for a moment


def test_without_a_sweep_nothing_changes(recwarn: pytest.WarningsRecorder) -> None:
    example = _example_module()
    model = example.SweepClassifier(hidden=48)
    share = ShareRunDir(apply_config_to_hparams=True)
    logger = make_logger(config={"batch_size": 32})
    logger.experiment.config.update({"note": "set before fit"})
    trainer = make_trainer([share], logger=logger, max_epochs=1)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert share.config == {"batch_size": 32, "note": "set before fit"}
    assert dict(model.hparams) == {"hidden": 48, "lr": 0.01}
    assert model.net[1].out_features == 48
    assert not [w for w in recwarn if "ShareRunDir" in str(w.message)]
    run = finish_and_read()
    assert (run.config["lr"], run.config["hidden"], run.config["note"]) == (0.01, 48, "set before fit")


def test_the_run_config_wins_over_the_module_defaults() -> None:
    """A value the run was started with (not only a sweep's) is what every rank trains with, and is
    what Lightning then logs as the module's hyperparameter."""
    model = _example_module().SweepClassifier()
    share = ShareRunDir(apply_config_to_hparams=True)
    trainer = make_trainer([share], logger=make_logger(config={"lr": 0.002}), max_epochs=1)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.002
    assert finish_and_read().config["lr"] == 0.002


def test_lightning_cli_sweep_values_override_the_yaml(tmp_path: Path, sweep: Callable[[dict[str, Any]], None]) -> None:
    from lightning.pytorch.cli import LightningCLI

    sweep(SWEEP)
    example = _example_module()
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  accelerator: cpu\n  max_epochs: 1\n  limit_train_batches: 2\n  limit_val_batches: 1\n"
        "  enable_progress_bar: false\n"
        "  logger:\n    class_path: lightning.pytorch.loggers.WandbLogger\n"
        f"    init_args: {{project: lw-tests, save_dir: {(tmp_path / 'runs').resolve()}}}\n"
        "  callbacks:\n    - class_path: lw_callbacks.ShareRunDir\n"
        "      init_args: {apply_config_to_hparams: true}\n"
        "model:\n  hidden: 16\n  lr: 0.1\n"
    )
    (tmp_path / "runs").mkdir()
    cli = LightningCLI(
        example.SweepClassifier, DigitsDataModule, run=False, args=["--config", str(config)], save_config_callback=None
    )
    assert cli.model.hparams["lr"] == 0.1  # the YAML's, until the run's config arrives at setup
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.03
    assert cli.model.net[1].out_features == 128
    assert (finish_and_read().config["lr"]) == 0.03


def test_a_module_built_in_init_is_told_it_keeps_its_old_values(sweep: Callable[[dict[str, Any]], None]) -> None:
    sweep(SWEEP)
    model = DigitsClassifier()  # builds its layers in __init__ with hidden=64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer([ShareRunDir(apply_config_to_hparams=True)], max_epochs=1).fit(
            model, datamodule=DigitsDataModule(batch_size=32)
        )
    ours = [str(w.message) for w in caught if "ShareRunDir" in str(w.message)]
    assert len(ours) == 1 and "'hidden'" in ours[0] and "configure_model()" in ours[0], ours
    assert model.hparams["hidden"] == 128 and model.layer_1.out_features == 64


@pytest.mark.parametrize("argument", ["checkpoints_in_run_dir", "set_env", "apply_config_to_hparams"])
def test_arguments_must_be_bools(argument: str) -> None:
    pattern = rf"^ShareRunDir\({argument}='no'\): {argument} must be True or False"
    with pytest.raises(MisconfigurationException, match=pattern):
        ShareRunDir(**{argument: "no"})


def test_a_value_that_cannot_be_sent_is_named_once_and_left_out() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = pack_config({"lr": 0.1, "schedule": lambda step: step, "_wandb": {"x": 1}})
        loaded = unpack_config({**packed, "broken": b"not a pickle"}, global_rank=1)
    assert loaded == {"lr": 0.1}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "'schedule'" in messages[0] and "cannot be sent" in messages[0]
    assert "[rank 1]" in messages[1] and "'broken'" in messages[1]


def test_config_before_the_trainer_in_one_process(
    monkeypatch: pytest.MonkeyPatch, sweep: Callable[[dict[str, Any]], None]
) -> None:
    sweep(SWEEP)
    monkeypatch.delenv("LW_CALLBACKS_RUN_CONFIG", raising=False)
    logger = make_logger(config={"lr": 0.01, "hidden": 64, "batch_size": 32})
    config = shared_run_config(logger)
    assert config == {"lr": 0.03, "hidden": 128, "batch_size": 32}
    assert logger.experiment.id == finish_and_read().run_id  # the logger uses the run it started


@pytest.mark.slow
@pytest.mark.parametrize("rank0", ["prompt", "slow"])
def test_config_before_the_trainer_under_a_plain_env_launch(tmp_path: Path, rank0: str) -> None:
    """Two processes launched with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT only (a SLURM-like
    launch, no torchrun agent): every rank gets the sweep's values, and the port is free afterwards,
    also when rank 0 is slow to close its store: rank 1 does not reach the process group's rendezvous
    on that port while the store still answers there (it would talk to the store being closed)."""
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    params = write_sweep_params(tmp_path / "params.yaml", SWEEP)
    reports = run_ranks(
        "run_config_env.py", str(find_free_network_port()), *(["slow"] if rank0 == "slow" else []),
        out_dir=tmp_path / "reports", timeout=180,
        env={"WANDB_SWEEP_PARAM_PATH": str(params)},
    )
    assert [r["config"] for r in reports] == [SWEEP, SWEEP]
    assert reports[0]["gathered"] == [SWEEP, SWEEP]
    (run_dir,) = find_runs(tmp_path / "runs")
    assert {k: read_run(run_dir).config[k] for k in SWEEP} == SWEEP
