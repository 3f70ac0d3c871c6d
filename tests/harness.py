"""Shared helpers: fit the digits model under a real offline WandbLogger and read back its records,
and run multi-process scripts as subprocesses with a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import wandb
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import RunRecords, find_runs, read_run

SCRIPTS = Path(__file__).parent / "scripts"


def release(name: str) -> tuple[int, ...]:
    """The installed release of a distribution as numbers: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    return tuple(int(p) for p in version(name).split("+")[0].split(".")[:3] if p.isdigit())


WANDB_VERSION = release("wandb")
LIGHTNING_VERSION = release("lightning")
ISOLATED = ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR", "TMPDIR")


@contextmanager
def isolated_wandb(root: Path) -> Iterator[Path]:
    """Offline W&B with every W&B folder (and TMPDIR) under ``root``, and ``root`` as the cwd.

    Everything is restored on exit (``WANDB_DIR`` too, which ``ShareRunDir`` sets), and a run
    left open is finished. The autouse fixture of ``conftest.py`` wraps each test in it; a
    module-scoped fixture that fits once for several tests uses it directly.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in ISOLATED:
            folder = root / "env" / name.lower()
            folder.mkdir(parents=True, exist_ok=True)
            mp.setenv(name, str(folder))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_CONSOLE", "off")
        mp.delenv("WANDB_RUN_ID", raising=False)
        mp.chdir(root)
        mp.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
        try:
            yield root
        finally:
            if wandb.run is not None:
                wandb.finish()

REPO = Path(__file__).parent.parent


def make_logger(save_dir: Path | str = "runs", namespace: str = "lightning.pytorch", **kwargs: Any) -> WandbLogger:
    """An offline ``WandbLogger`` writing under ``save_dir`` (relative to the test's cwd), of the
    ``namespace`` package (``"lightning.pytorch"`` or ``"pytorch_lightning"``)."""
    # Absolute: wandb's service process outlives a test and would resolve a relative path against
    # the folder the first test of the session ran in.
    path = Path(save_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("project", "lw-tests")
    if namespace != "lightning.pytorch":
        import importlib

        logger_class: Any = importlib.import_module(f"{namespace}.loggers").WandbLogger
        return logger_class(save_dir=str(path), **kwargs)  # type: ignore[no-any-return]
    return WandbLogger(save_dir=str(path), **kwargs)


def make_trainer(
    callbacks: Sequence[Callback] = (), logger: Any = None, **kwargs: Any
) -> Trainer:
    """A small CPU Trainer: 2 epochs, few batches, no progress bar, logging every step."""
    options: dict[str, Any] = {
        "max_epochs": 2,
        "limit_train_batches": 6,
        "limit_val_batches": 3,
        "accelerator": "cpu",
        "devices": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": "lightning",
    }
    options.update(kwargs)
    return Trainer(logger=make_logger() if logger is None else logger, callbacks=list(callbacks), **options)


def finish_and_read(save_dir: Path | str = "runs") -> RunRecords:
    """Finish the current W&B run and decode its records."""
    wandb.finish()
    runs = find_runs(save_dir)
    assert len(runs) == 1, f"expected exactly one run under {save_dir}, found {runs}"
    return read_run(runs[0])


def fit_digits(
    callbacks: Sequence[Callback] = (),
    model: LightningModule | None = None,
    datamodule: LightningDataModule | None = None,
    **trainer_kwargs: Any,
) -> tuple[Trainer, RunRecords]:
    """Fit the digits model with ``callbacks`` and return the Trainer and the run's records."""
    trainer = make_trainer(callbacks, **trainer_kwargs)
    trainer.fit(model or DigitsClassifier(), datamodule=datamodule or DigitsDataModule(batch_size=32))
    return trainer, finish_and_read()


def run_ranks(
    script: str | Path,
    *args: str,
    out_dir: Path,
    launcher: str = "python",
    nprocs: int = 2,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    returncode: int = 0,
) -> list[dict[str, Any]]:
    """Run a multi-process script and return what each rank reported, ordered by rank.

    ``launcher`` is ``"python"`` (the script starts its own ranks, e.g. Lightning's ``ddp``) or
    ``"torchrun"``. The script gets ``LW_REPORT_DIR``; each rank writes ``rank<N>.json`` there
    (see ``scripts/_report.py``). A non-zero exit or a timeout fails with the processes' output, so
    a deadlock fails fast instead of eating CI time. ``returncode`` is the exit status expected
    (1 for a job that is meant to crash).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    script = SCRIPTS / script if not Path(script).is_absolute() else Path(script)
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
        cmd = [*torchrun, str(script), *args]
    else:
        cmd = [sys.executable, str(script), *args]
    full_env = dict(os.environ)
    # A fresh job starts its own wandb service, as a real launch would; inheriting this test
    # process's service would resolve relative paths against another test's folder.
    full_env.pop("WANDB_SERVICE", None)
    full_env["LW_REPORT_DIR"] = str(out_dir)
    full_env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(REPO), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    # Its own session, so a timeout kills every rank the job started, not only the launcher.
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd(),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{script.name} did not finish in {timeout}s (hang?)\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ) from None
    output = f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert proc.returncode == returncode, f"{script.name} exited {proc.returncode}, not {returncode}\n{output}"
    reports = sorted(out_dir.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    assert reports, f"{script.name} wrote no report\n{output}"
    return [json.loads(p.read_text()) for p in reports]


def build_with_cli(callbacks_yaml: str, tmp_dir: Path, extra_args: Sequence[str] = ()) -> Any:
    """Build a Trainer with LightningCLI from YAML, as a user's config file would, without running.

    ``callbacks_yaml`` is the YAML list under ``trainer.callbacks`` (``class_path`` / ``init_args``
    entries). Returns the ``LightningCLI`` object; its ``trainer.callbacks`` hold the built instances.
    """
    from lightning.pytorch.cli import LightningCLI

    config = tmp_dir / "config.yaml"
    body = "\n".join("    " + line for line in callbacks_yaml.strip("\n").splitlines())
    config.write_text(
        "trainer:\n"
        "  accelerator: cpu\n"
        "  logger:\n"
        "    class_path: lightning.pytorch.loggers.WandbLogger\n"
        f"    init_args: {{project: lw-tests, save_dir: {Path('runs').resolve()}}}\n"
        "  callbacks:\n" + body + "\n"
    )
    (Path("runs")).mkdir(exist_ok=True)
    return LightningCLI(
        DigitsClassifier,
        DigitsDataModule,
        run=False,
        args=["--config", str(config), *extra_args],
        save_config_callback=None,
    )
