"""The one doorway to W&B: every callback reaches the live run through here, never ``wandb.run``.

- :func:`require_wandb_logger` finds the ``WandbLogger`` among ``trainer.loggers`` or raises a clear
  error at setup naming the callback and the fix.
- :func:`get_run` / :func:`run_of` give the live ``wandb`` Run on global rank 0 and ``None`` on every
  other rank, and ``None`` under ``WANDB_MODE=disabled`` (a silent no-op).
- :func:`log` logs a payload at the trainer's step by putting ``trainer/global_step`` into it
  (never ``step=``: W&B drops rows whose step goes backwards), and reports a failure as a warning
  instead of raising into the training loop.
- :func:`define_metric` keeps the ``trainer/global_step`` x-axis on every named definition.
- :func:`lightning_step` is the one step axis every callback logs at: the step Lightning passes to
  ``WandbLogger.log_metrics`` at that moment (the history's ``trainer/global_step``).
- A ``DummyLogger`` (what ``fast_dev_run`` puts in place of the Trainer's loggers) counts as
  disabled: callbacks run their code paths but log nothing and raise nothing.
- :data:`warning_cache` is the package's one-time warning cache for module-level code
  (:data:`lw_callbacks._errors.PACKAGE`: each cause once, as an ``LWCallbacksWarning``).
- :func:`add_hashed_file` adds a file whose md5 is already known to an artifact without W&B hashing
  it again.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lw_callbacks import _compat
from lw_callbacks._errors import PACKAGE, ConfigurationError, warn

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger
    from wandb import Api, Artifact
    from wandb.sdk.wandb_run import Run

    from lw_callbacks.fabric._common import Fabric

STEP_KEY = "trainer/global_step"

__all__ = [
    "STEP_KEY",
    "active_run",
    "add_hashed_file",
    "at_finish",
    "define_metric",
    "find_fabric_wandb_logger",
    "find_wandb_logger",
    "finish_after_interrupted_cell",
    "get_run",
    "is_disabled",
    "lightning_step",
    "log",
    "logging_suppressed",
    "require_fabric_wandb_logger",
    "require_wandb_logger",
    "run_folder",
    "run_is_offline",
    "run_of",
    "warning_cache",
]

#: One-time warnings of module-level code (global rank 0, once per cause).
warning_cache = PACKAGE


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The first ``WandbLogger`` (of ``lightning.pytorch`` or ``pytorch_lightning``) among the Trainer's
    loggers, or ``None``."""
    for logger in trainer.loggers:
        if _compat.is_wandb_logger(logger):
            return logger  # type: ignore[return-value]
    return None


def logging_suppressed(trainer: pl.Trainer) -> bool:
    """True when the Trainer's loggers were replaced by ``DummyLogger`` (``fast_dev_run``): log nothing."""
    loggers = list(getattr(trainer, "loggers", ()))
    return bool(loggers) and all(_compat.is_dummy_logger(lg) for lg in loggers)


def require_wandb_logger(trainer: pl.Trainer, owner: str) -> WandbLogger | None:
    """The Trainer's ``WandbLogger``; ``None`` under ``fast_dev_run`` (its loggers are ``DummyLogger``).

    Raises:
        ConfigurationError: the Trainer has none; the message names ``owner`` and the fix.
    """
    logger = find_wandb_logger(trainer)
    if logger is None and logging_suppressed(trainer):
        return None
    if logger is None:
        names = [type(lg).__name__ for lg in trainer.loggers] or ["no logger"]
        raise ConfigurationError(
            f"{owner} logs to Weights & Biases and needs a `WandbLogger` among the Trainer's loggers, "
            f"but the Trainer has {', '.join(names)}. Pass `Trainer(logger=WandbLogger(project=...))` "
            f"(it may be one of a list of loggers), or remove {owner} from the callbacks."
        )
    return logger


def find_fabric_wandb_logger(fabric: Fabric) -> Any | None:
    """The first W&B logger among ``fabric.loggers``: wandb's Fabric ``WandbLogger``
    (``wandb.integration.lightning.fabric``) or Lightning's ``WandbLogger`` (either namespace); ``None`` if
    there is none."""
    for logger in getattr(fabric, "loggers", ()):
        if _compat.is_fabric_wandb_logger(logger):
            return logger
    return None


def require_fabric_wandb_logger(fabric: Fabric, owner: str) -> Any:
    """The W&B logger of a Fabric object.

    Raises:
        TypeError: ``fabric`` is not a ``lightning.fabric.Fabric``.
        ConfigurationError: it has no W&B logger; the message names ``owner`` and the fix.
    """
    if not hasattr(fabric, "loggers") or not hasattr(fabric, "broadcast"):
        raise TypeError(
            f"{owner}: the first argument must be the `lightning.Fabric` object, got {type(fabric).__name__}; "
            f"call it as `fabric.call(<hook>, fabric, ...)`."
        )
    logger = find_fabric_wandb_logger(fabric)
    if logger is None:
        names = [type(lg).__name__ for lg in fabric.loggers] or ["no logger"]
        raise ConfigurationError(
            f"{owner} logs to Weights & Biases and needs a W&B logger among the Fabric's loggers, but the Fabric "
            f"has {', '.join(names)}. Pass `L.Fabric(loggers=[WandbLogger(project=...)])` with "
            "`from wandb.integration.lightning.fabric import WandbLogger` (or Lightning's "
            "`lightning.pytorch.loggers.WandbLogger`)."
        )
    return logger


def is_disabled(run: Run | None = None) -> bool:
    """True under ``WANDB_MODE=disabled`` or for a disabled (no-op) run."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return True
    if run is None:
        return False
    if getattr(run, "disabled", False) is True:
        return True
    settings = getattr(run, "settings", None)
    return getattr(settings, "mode", None) == "disabled"


def run_of(logger: Any | None, global_rank: int) -> Run | None:
    """The live run of a W&B logger on global rank 0; ``None`` elsewhere or when disabled.

    Works with Lightning's ``WandbLogger`` and with wandb's Fabric ``WandbLogger`` (anything whose
    ``experiment`` is the run on rank 0). On rank 0 this starts the run if it has not started yet.
    """
    if logger is None or global_rank != 0 or is_disabled() or _compat.is_dummy_logger(logger):
        return None
    run = logger.experiment
    if is_disabled(run) or not hasattr(run, "log"):
        return None
    return run


def active_run() -> Run | None:
    """The run started in this process (``wandb.run``), or ``None``; for code outside a Trainer."""
    import wandb

    run = wandb.run
    return None if run is None or is_disabled(run) else run


def get_run(trainer: pl.Trainer, owner: str) -> Run | None:
    """The live run for a callback on ``trainer``: rank 0 only, ``None`` elsewhere or when disabled.

    Raises:
        ConfigurationError: the Trainer has no ``WandbLogger``.
    """
    return run_of(require_wandb_logger(trainer, owner), trainer.global_rank)


def lightning_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs metrics at right now: the ``trainer/global_step`` of W&B's history.

    Lightning passes ``fit_loop.epoch_loop._batches_that_stepped`` to ``WandbLogger.log_metrics``.
    That counter grows after a batch's optimizer step and its logging, so inside a training batch
    and in a validation run it equals ``trainer.global_step`` before the batch stepped (one lower than
    ``global_step`` at ``on_validation_end``); once the epoch's batches are done Lightning logs the
    epoch-end metrics at the counter minus one, and so does this. ``trainer.global_step`` counts
    optimizer steps and stays what ``ModelCheckpoint`` file names and metadata use.
    """
    fit_loop = getattr(trainer, "fit_loop", None)
    loop = getattr(fit_loop, "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    if not isinstance(step, int):
        return int(trainer.global_step)
    progress = getattr(getattr(fit_loop, "epoch_progress", None), "current", None)
    in_epoch_end = (
        bool(getattr(trainer, "training", False))
        and progress is not None
        and getattr(progress, "processed", 0) > getattr(progress, "completed", 0)
    )
    return max(0, step - 1) if in_epoch_end else step


def skip_pandas_import() -> None:
    """Keep W&B from importing pandas the first time a histogram, image or table is logged.

    W&B asks of every logged value that is not a number or a string whether it is a
    ``pandas.DataFrame``, and when pandas is installed it imports pandas to ask: half a second or
    more of one core, paid by the training thread at the first media value of the process. A value
    can only be a DataFrame once pandas has been imported, so the check is wrapped to answer
    ``False`` while pandas is not in ``sys.modules`` and to ask W&B's own check otherwise: the answer
    is the same for every value, without the import. Idempotent.
    """
    try:
        from wandb import util
    except Exception:  # pragma: no cover - wandb is a dependency
        return
    check = getattr(util, "is_pandas_data_frame", None)
    if check is None or getattr(check, "_lw_no_import", False):
        return

    def is_pandas_data_frame(obj: Any) -> bool:
        return "pandas" in sys.modules and bool(check(obj))

    is_pandas_data_frame._lw_no_import = True  # type: ignore[attr-defined]
    util.is_pandas_data_frame = is_pandas_data_frame


_warm_up_started = False


def warm_up_media() -> None:
    """Load, on a background thread, the modules W&B's first image or table log loads (its image and
    table types, PIL's PNG writer, the HTTP session its artifact storage builds even offline), so the
    training thread does not pay them at the first logged epoch; also :func:`skip_pandas_import`.
    Once per process; a failure is ignored (the first log then loads them as it would anyway).
    """
    global _warm_up_started
    skip_pandas_import()
    if _warm_up_started:
        return
    _warm_up_started = True

    def load() -> None:
        try:
            import PIL.PngImagePlugin  # noqa: F401
            import requests  # noqa: F401
            from wandb.sdk.artifacts.storage_policies import wandb_storage_policy  # noqa: F401
            from wandb.sdk.data_types import image, table  # noqa: F401
        except Exception:  # pragma: no cover - an optional speed-up
            pass

    threading.Thread(target=load, name="lw-callbacks-warm-up", daemon=True).start()


def log(run: Run, payload: Mapping[str, Any], step: int, owner: str) -> bool:
    """Log ``payload`` at ``trainer/global_step == step``; a failure warns and returns ``False``."""
    data = dict(payload)
    data[STEP_KEY] = int(step)
    try:
        run.log(data)
    except Exception as err:  # a logging failure must never end a training run
        warn(
            f"{owner}: logging {sorted(payload)} to W&B at step {step} failed "
            f"({type(err).__name__}: {err}); training goes on without it."
        )
        return False
    return True


def define_metric(
    run: Any, name: str, *, summary: str | None = None, hidden: bool = False, overwrite: bool = False
) -> None:
    """``define_metric`` that keeps WandbLogger's x-axis (``trainer/global_step``, ``step_sync``).

    A key defined on its own stops inheriting WandbLogger's ``"*"`` rule, so every named
    definition must repeat ``step_metric`` or the key silently loses its x-axis.

    ``overwrite=True`` replaces an earlier definition of the same key; without it W&B merges the
    two (two calls with ``summary="max"`` then ``summary="min"`` leave ``{"min", "max"}``).
    """
    kwargs: dict[str, Any] = {"step_metric": STEP_KEY, "step_sync": True}
    if summary is not None:
        kwargs["summary"] = summary
    if hidden:
        kwargs["hidden"] = True
    if overwrite:
        kwargs["overwrite"] = True
    run.define_metric(name, **kwargs)


def run_folder(run: Run, logger: Any = None) -> Path:
    """The run's own folder, the one holding ``run-<id>.wandb``, wherever it landed.

    ``run.settings.sync_dir`` is right for a run started in this process, but not for a run
    *attached* from another process: under ``ddp_spawn`` Lightning's ``WandbLogger`` starts the run
    in the main process and the spawned rank 0 attaches to it, and wandb (0.31) gives the attached
    run this process's default settings, so ``run.dir`` then names a folder that is not the run's.
    This looks for the log under the logger's ``save_dir``, ``WANDB_DIR`` and the settings' root.
    """
    settings = run.settings
    sync_dir = Path(settings.sync_dir)
    log_name = f"run-{run.id}.wandb"
    if (sync_dir / log_name).exists():
        return sync_dir.resolve()
    roots = [getattr(logger, "save_dir", None), os.environ.get("WANDB_DIR"), settings.root_dir, "."]
    found: list[Path] = []
    for root in roots:
        if root:
            # offline-run-<date>-<id>, or <...>-<id>-1 when another segment started in that second
            found += [p.parent for p in Path(root).glob(f"*/*-{run.id}*/{log_name}")]
    if not found:
        return sync_dir.resolve()
    return max(found, key=lambda p: p.stat().st_mtime).resolve()


def at_finish(run: Run, early: Any = None, late: Any = None) -> bool:
    """Have ``early()`` called when ``run.finish()`` starts (the run still takes records) and ``late()``
    after the run's last records were handed to W&B; ``False`` when this wandb has no such hooks."""
    try:
        from wandb.sdk.wandb_run import TeardownHook, TeardownStage

        hooks = run._teardown_hooks
    except (ImportError, AttributeError):
        return False
    if not isinstance(hooks, list):
        return False
    if early is not None:
        hooks.append(TeardownHook(early, TeardownStage.EARLY))
    if late is not None:
        hooks.append(TeardownHook(late, TeardownStage.LATE))
    return True


_FINISH_AFTER_CELL: set[int] = set()  # ids of runs whose finish waits for the end of the cell


def finish_after_interrupted_cell(trainer: pl.Trainer, exception: BaseException) -> bool:
    """In a Jupyter / IPython kernel, finish the W&B run of a fit that ``KeyboardInterrupt`` ended,
    once the cell is done (after every ``on_exception`` hook and upload hand-over of the fit).

    On ``KeyboardInterrupt`` Lightning raises ``SystemExit``: a script exits, and W&B finishes the
    run at exit. A kernel catches it and goes on, with the run still open, so the next fit's
    ``WandbLogger`` would reuse it (its history, steps and artifacts mixed into the interrupted
    run). Finishing it here does what the exit would have done. Returns whether a finish is due.
    """
    if not isinstance(exception, KeyboardInterrupt) or trainer.global_rank != 0:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    logger = find_wandb_logger(trainer)
    run = getattr(logger, "_experiment", None) if logger is not None else None
    if shell is None or run is None or not hasattr(run, "finish") or is_disabled(run):
        return False
    if id(run) in _FINISH_AFTER_CELL:
        return True
    _FINISH_AFTER_CELL.add(id(run))

    def finish(*_: Any) -> None:
        shell.events.unregister("post_run_cell", finish)
        _FINISH_AFTER_CELL.discard(id(run))
        try:
            run.finish(exit_code=1)  # Lightning's exit code for an interrupted fit
        except Exception as err:  # the run may be gone already
            warn(f"finishing the interrupted W&B run failed ({type(err).__name__}: {err}).")

    shell.events.register("post_run_cell", finish)
    return True


def run_is_offline(run: Run) -> bool:
    """True for a run that writes only to its local log (``mode="offline"``)."""
    settings = getattr(run, "settings", None)
    return bool(getattr(settings, "_offline", False)) or getattr(settings, "mode", "") in ("offline", "dryrun")


def update_summary(run: Run, values: Mapping[str, Any], owner: str) -> bool:
    """Write ``values`` into the run summary; a failure warns and returns ``False``."""
    try:
        run.summary.update(dict(values))
    except Exception as err:  # never fail training (or its end) over a summary
        warn(
            f"{owner}: writing {sorted(values)} to the W&B run summary failed ({type(err).__name__}: {err})."
        )
        return False
    return True


def model_artifact(name: str, metadata: Mapping[str, Any] | None) -> Artifact:
    """A new ``model`` artifact (nothing is logged until :func:`log_artifact`)."""
    import wandb

    return wandb.Artifact(name=name, type="model", metadata=dict(metadata) if metadata is not None else None)


def log_artifact(run: Run, artifact: Artifact, aliases: list[str]) -> Artifact:
    """``run.log_artifact(artifact, aliases=aliases)``; errors propagate (the uploader retries them)."""
    return run.log_artifact(artifact, aliases=aliases)


def public_api() -> Api:
    """``wandb.Api()`` (it needs a key and a server)."""
    import wandb

    return wandb.Api()


def add_hashed_file(
    artifact: Artifact, path: str, name: str, digest: str, policy: Literal["mutable", "immutable"] = "mutable"
) -> Any:
    """Add ``path`` to ``artifact`` as entry ``name`` with its base64 md5 ``digest`` already known, so
    that W&B does not read the file a second time to hash it (with ``policy="mutable"`` it still makes its
    staged copy). Returns the manifest entry.

    The known digest goes through ``Artifact._add_local_file(name, path, digest=...)``, which W&B's own
    ``add_file`` calls after hashing (the same in wandb 0.21 and 0.31). Where that is missing or takes no
    ``digest``, or the artifact hashes with another algorithm than md5, the public ``add_file`` is used,
    which hashes the file itself: compare the entry's ``digest`` with the one you hold.
    """
    import inspect

    add: Any = getattr(artifact, "_add_local_file", None)
    algorithm = str(getattr(artifact, "digest_algorithm", None) or "MD5")
    try:
        takes_digest = add is not None and "digest" in inspect.signature(add).parameters
    except (TypeError, ValueError):
        takes_digest = False
    if takes_digest and algorithm.upper().endswith("MD5"):
        return add(name, path, digest=digest, policy=policy)
    return artifact.add_file(path, name=name, policy=policy)


def wandb_staging_dir() -> str:
    """The folder W&B stages artifact files in (``$WANDB_DATA_DIR/artifacts/staging``), created if missing."""
    from wandb.sdk.artifacts.staging import get_staging_dir

    return str(get_staging_dir())
