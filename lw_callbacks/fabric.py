r"""The package's features in a Lightning Fabric loop, one line each.

Fabric has no Trainer hooks and no ``ModelCheckpoint``, so each feature is a Fabric callback with
a hook you call from your loop with ``fabric.call(<hook>, fabric, ...)`` (or call the method on the
object directly). Each one drives the same core as its Trainer callback (it holds one and calls its
helpers), so the two behave alike:

================================  ======================================================  ==================
Fabric callback                   hooks (first argument: the ``Fabric``)                  core shared with
================================  ======================================================  ==================
:class:`FabricPredictionSamples`  ``log_prediction_samples(fabric, batch, outputs, step)``  LogPredictionSamples
:class:`FabricMetricSummaries`    ``define_summaries(fabric)``; optional                  MetricSummaries
                                  ``observe_metrics(fabric, metrics, step)``,
                                  ``training_done(fabric)``
:class:`FabricWatchModel`         ``watch(fabric, model, optimizer)``, ``unwatch(fabric)``  WatchModel
                                  (also ``training_done``)
:class:`FabricUploadCheckpoints`  ``upload_checkpoint(fabric, path, ...)`` after            UploadCheckpoints
                                  ``fabric.save``; ``training_done(fabric)`` flushes
:class:`FabricShareRunDir`        ``share_run_dir(fabric)``                               ShareRunDir
================================  ======================================================  ==================

:func:`~lw_callbacks.checkpoints.restore_checkpoint` needs no Trainer and works as is.

The W&B logger is wandb's Fabric logger (``wandb.integration.lightning.fabric.WandbLogger``) or
Lightning's ``lightning.pytorch.loggers.WandbLogger`` in ``L.Fabric(loggers=[...])``. As with the
Trainer callbacks, global rank 0 talks to W&B, media are logged at ``trainer/global_step`` (the
x-axis ``fabric.log_dict(..., step=step)`` uses), and a logging failure warns instead of ending
training. Hooks that broadcast (``share_run_dir``, ``training_done`` of the uploader and the first
``upload_checkpoint``) must be called on every rank, as the rest of a Fabric loop is.

Example::

    import lightning as L
    from wandb.integration.lightning.fabric import WandbLogger
    from lw_callbacks.fabric import (FabricMetricSummaries, FabricPredictionSamples, FabricShareRunDir,
                                     FabricUploadCheckpoints, FabricWatchModel)

    upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
    fabric = L.Fabric(loggers=[WandbLogger(project="digits")],
                      callbacks=[FabricPredictionSamples(num_samples=16), FabricMetricSummaries({"val_acc": "max"}),
                                 FabricWatchModel(log="all", log_freq=50), upload, FabricShareRunDir()])
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("share_run_dir", fabric)
    fabric.call("define_summaries", fabric)
    fabric.call("watch", fabric, model, optimizer)
    for epoch in range(epochs):
        ...  # training steps
        fabric.call("log_prediction_samples", fabric, val_batch, model(val_batch[0]), step=step)
        fabric.save("ckpt/last.ckpt", {"model": model, "optimizer": optimizer})
        fabric.call("upload_checkpoint", fabric, "ckpt/last.ckpt", step=step, epoch=epoch, score=val_acc)
    fabric.call("training_done", fabric)  # flushes uploads, unwatches, writes best steps
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn

from lw_callbacks import _state
from lw_callbacks._errors import (
    ConfigurationError,
    Option,
    check_bool,
    check_choice,
    check_int,
    check_path,
    check_str,
    warn,
)
from lw_callbacks._wandb import require_fabric_wandb_logger, run_of
from lw_callbacks.core import uploader as files
from lw_callbacks.core.histograms import HistogramCore
from lw_callbacks.core.histograms import check_arguments as histogram_arguments
from lw_callbacks.core.publish import (
    Publisher,
    as_float,
    check_aliases,
    check_flush_timeout,
    check_template,
    flush_limit,
    name_for,
    version_aliases,
    version_metadata,
)
from lw_callbacks.core.run_info import SharedRun, check_flag, describe_run
from lw_callbacks.core.samples import STAGES, SampleCore, take
from lw_callbacks.core.samples import check_arguments as sample_arguments
from lw_callbacks.core.summaries import SummaryCore, SummaryValue
from lw_callbacks.core.summaries import check_arguments as summary_arguments
from lw_callbacks.core.tasks import TaskOptions
from lw_callbacks.restore import restore_checkpoint

__all__ = [
    "FabricMetricSummaries",
    "FabricPredictionSamples",
    "FabricShareRunDir",
    "FabricUploadCheckpoints",
    "FabricWatchModel",
    "restore_checkpoint",
]


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric's wrapper (and DDP's), whose parameter names are the plain ones."""
    original = getattr(model, "_original_module", None)
    if isinstance(original, nn.Module):
        return original
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


# ------------------------------------------------------------------------------------ predictions


class FabricPredictionSamples:
    r"""Log prediction samples from a batch and the model's outputs in a Fabric loop.

    The hook :meth:`log_prediction_samples` takes the first ``num_samples`` examples of the batch
    you pass (on global rank 0) and logs, exactly as :class:`~lw_callbacks.LogPredictionSamples`
    does (it is that callback's core): ``<section>/images`` captioned ``Ground Truth: <y> -
    Prediction: <p>``, ``<section>/inputs`` (a table of the inputs, logged once while the inputs
    stay the same) and ``<section>/table`` (id, reference to the input row, truth, prediction and
    per-class scores) at ``trainer/global_step == step``. ``<section>`` is ``key`` for
    ``stage="validation"`` and ``<key>_<stage>`` otherwise. Pass the same evaluation batch every
    time to follow the same samples; a batch with other inputs logs a new inputs table.

    Args:
        num_samples: how many examples of the batch to log (its first ones).
        key: panel section name.
        class_names: names for labels ``0 .. C-1``.
        log_images: log the captioned-image panel.
        log_table: log the inputs table and a predictions table.
        log_scores: add ``score_<class>`` columns when outputs are class scores.
        input_key: key of the input in dict batches.
        target_key: key of the target in dict batches.
        output_key: key of the predictions in dict outputs.
        task, box_format, normalized_boxes, score_threshold, sample_rate, decode: as
            ``LogPredictionSamples``: segmentation masks, detection boxes, text, audio, regression
            and reconstruction samples (``task="auto"`` tells them from the first batch); a dotted
            ``decode`` path is imported at the first call.
        predict: ``predict(model, batch) -> predictions`` on a batch holding only the chosen rows,
            used in place of ``outputs`` (as ``LogPredictionSamples``); needs ``model=`` in the hook.
        ignore_index: target label(s) to ignore, as ``LogPredictionSamples``; ``None`` reads them from
            the ``model`` passed to the hook (its ``ignore_index``, ``hparams["ignore_index"]``, its direct
            submodules' ``ignore_index`` but ``-100``), ``[]`` ignores none.

    Raises:
        ValueError: for bad arguments (as ``LogPredictionSamples``); from the hook, for a batch or
            outputs it cannot read, an unknown ``stage``, or no usable outputs (or ``predict``) and no
            ``model``.
        ConfigurationError: from the hook, when the Fabric has no W&B logger.

    Example::

        >>> from pathlib import Path
        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricPredictionSamples
        >>> from lw_callbacks.records import read_run
        >>> samples = FabricPredictionSamples(num_samples=3, class_names=["cat", "dog"])
        >>> logger = WandbLogger(project="pets", save_dir=Path("runs").resolve())
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[logger], callbacks=[samples])
        >>> batch = (torch.rand(8, 3, 16, 16), torch.randint(0, 2, (8,)))  # the same batch every time
        >>> for step in (10, 20):
        ...     logits = torch.randn(8, 2)  # the model's outputs on the batch
        ...     fabric.call("log_prediction_samples", fabric, batch, logits, step=step)
        >>> run = fabric.logger.experiment
        >>> folder = Path(run.dir).parent
        >>> run.finish()
        >>> records = read_run(folder)
        >>> len(records.tables("predictions/inputs")), len(records.tables("predictions/table"))  # inputs once
        (1, 2)
        >>> records.tables("predictions/table")[-1].columns
        ['id', 'sample', 'ground truth', 'prediction', 'score_cat', 'score_dog']
    """

    def __init__(
        self,
        num_samples: int = 16,
        key: str = "predictions",
        class_names: list[str] | None = None,
        log_images: bool = True,
        log_table: bool = True,
        log_scores: bool = True,
        input_key: str | None = None,
        target_key: str | None = None,
        output_key: str | None = None,
        task: str = "auto",
        box_format: str = "xyxy",
        normalized_boxes: bool = False,
        score_threshold: float = 0.3,
        sample_rate: int | None = None,
        decode: Callable[[list[int]], str] | str | None = None,
        predict: Callable[[Any, Any], Any] | str | None = None,
        ignore_index: int | list[int] | None = None,
    ) -> None:
        task_opts = TaskOptions(
            task, box_format, normalized_boxes, score_threshold, sample_rate, decode, predict, ignore_index,
            owner=type(self).__name__,
        )
        names, stages = sample_arguments(
            num_samples, 1, key, class_names, log_images, log_table, log_scores, STAGES, False,
            input_key, target_key, output_key, 0, task_opts,
        )
        self.core = SampleCore(
            task_opts, num_samples=num_samples, key=key, class_names=names, log_images=log_images,
            log_table=log_table, log_scores=log_scores, stages=stages, input_key=input_key,
            target_key=target_key, output_key=output_key,
        )
        self._fingerprints: dict[str, str] = {}

    num_samples = Option[int]("How many examples are logged.", via="core")
    key = Option[str]("The panel section of validation (``key_<stage>`` for the other stages).", via="core")
    class_names = Option["list[str] | None"]("Names for labels ``0 .. C-1`` (a list), or ``None``.", via="core")
    log_images = Option[bool]("Whether the captioned-image panel is logged.", via="core")
    log_table = Option[bool]("Whether the inputs table and the predictions tables are logged.", via="core")
    log_scores = Option[bool]("Whether the table has ``score_<class>`` columns.", via="core")
    input_key = Option["str | None"]("Key of the input in dict batches, or ``None``.", via="core")
    target_key = Option["str | None"]("Key of the target in dict batches, or ``None``.", via="core")
    output_key = Option["str | None"]("Key of the predictions in dict step outputs, or ``None``.", via="core")
    task = Option[str]("The ``task`` argument as given.", via="core.task_opts")
    box_format = Option[str]("The ``box_format`` argument as given.", via="core.task_opts")
    normalized_boxes = Option[bool]("The ``normalized_boxes`` argument as given.", via="core.task_opts")
    score_threshold = Option[float]("Predicted boxes scoring below this are left out.", via="core.task_opts")
    sample_rate = Option["int | None"]("Samples per second of audio inputs, or ``None``.", via="core.task_opts")
    decode = Option[Any]("The ``decode`` argument as given.", via="core.task_opts")
    predict = Option[Any]("The ``predict`` argument as given (a callable or a dotted path).", via="core.task_opts")
    ignore_index = Option["int | list[int] | None"](
        "The ``ignore_index`` argument as given (``None``: read from the hook's ``model``).", via="core.task_opts"
    )

    def log_prediction_samples(
        self,
        fabric: Any,
        batch: Any,
        outputs: Any = None,
        *,
        step: int,
        model: nn.Module | None = None,
        stage: str = "validation",
    ) -> None:
        """Log the first ``num_samples`` examples of ``batch`` with their predictions at ``step``.

        Args:
            fabric: the ``Fabric``.
            batch: ``(x, y, ...)``, a dict, or a bare input tensor (as ``LogPredictionSamples``).
            outputs: the model's outputs on ``batch``: labels ``(N,)``, logits / probabilities
                ``(N, C)``, or a dict holding them. ``None``: ``predict(model, batch)`` (when given),
                else ``model`` is run on the chosen samples.
            step: the x-axis value (``trainer/global_step``), e.g. your optimizer step count.
            model: the model to run when ``outputs`` holds no predictions.
            stage: ``"validation"``, ``"test"`` or ``"predict"``: which panel section.

        Raises:
            ValueError: for an unknown ``stage``, a batch or outputs it cannot read, or no usable
                ``outputs`` and no ``model``.
        """
        if stage not in STAGES:
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples(stage={stage!r}): stage must be one of {list(STAGES)}."
            )
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        core = self.core
        if model is None and core.predict is not None:
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples: predict= is given, and it needs the model: pass "
                "model=<your model> to the hook."
            )
        core.resolve(model)  # dotted paths imported, ignored labels read from the model
        x, y, n = core.read_batch(stage, batch, outputs, model)  # every rank checks, so bad input fails alike
        if model is None and not core.has_predictions(stage, outputs, n):
            raise ConfigurationError(
                f"{type(self).__name__}.log_prediction_samples: `outputs` holds no predictions "
                f"(got {type(outputs).__name__}) and no `model` was given to compute them. Pass the model's "
                "outputs on this batch (labels (N,), logits (N, C), or a dict with 'preds' / 'logits'), or `model=`."
            )
        if fabric.global_rank != 0 or n == 0:
            return
        local = list(range(min(n, core.num_samples)))
        fingerprint = _fingerprint(take(x, local))
        if self._fingerprints.get(stage) != fingerprint:  # other inputs: ids 0.. now name other examples
            self._fingerprints[stage] = fingerprint
            core.forget_inputs(stage)
        core.states[stage].collected = {}
        core.collect_or_warn(stage, model, x, y, outputs, local, 0, batch)
        core.log_collected(stage, lambda: run_of(logger, 0), int(step))


def _fingerprint(chosen: Any) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(chosen, Tensor):
        chosen = chosen.detach().cpu().numpy()
    if isinstance(chosen, np.ndarray):
        digest.update(str((chosen.shape, chosen.dtype)).encode())
        digest.update(np.ascontiguousarray(chosen).tobytes())
    else:
        digest.update(repr(chosen).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ summaries


class FabricMetricSummaries:
    r"""Define W&B summaries (min / max / mean / first / last) of metrics logged with ``fabric.log_dict``.

    :meth:`define_summaries` sends each ``define_metric`` with the ``trainer/global_step`` x-axis
    that W&B's loggers use, exactly as :class:`~lw_callbacks.MetricSummaries` does (it is that
    callback's core, with ``from_callbacks=False``: Fabric has no ``ModelCheckpoint``). W&B then
    keeps the summaries itself. Optionally, :meth:`observe_metrics` beside each ``fabric.log_dict``
    records each min / max entry's best step (and epoch), and defines keys matched by a ``prefix/*``
    entry by name; :meth:`training_done` writes ``<key>.best_step`` / ``<key>.best_epoch`` to the
    summary and warns about entries never observed.

    Args:
        summaries: metric name or ``prefix/*`` -> ``"min"``, ``"max"``, ``"mean"``, ``"first"``,
            ``"last"``, ``"none"`` or a list of them (as ``MetricSummaries``).
        hidden: hide all entries (``True``) or those named from the W&B panels.
        record_best_step: record best steps in :meth:`observe_metrics`.
        warn_missing: at :meth:`training_done`, warn about entries :meth:`observe_metrics` never saw.

    Raises:
        ValueError: at construction, for bad ``summaries`` or ``hidden`` (as ``MetricSummaries``).
        ConfigurationError: from a hook, when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricMetricSummaries
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[FabricMetricSummaries({"val_acc": "max"})])
        >>> fabric.launch()
        >>> fabric.call("define_summaries", fabric)
        >>> for step, val_acc in enumerate([0.5, 0.8, 0.7]):
        ...     fabric.log_dict({"val_acc": val_acc}, step=step)
        ...     fabric.call("observe_metrics", fabric, {"val_acc": val_acc}, step=step)
        >>> fabric.call("training_done", fabric)
        >>> fabric.logger.experiment.summary["val_acc.best_step"]
        1
    """

    def __init__(
        self,
        summaries: Mapping[str, SummaryValue],
        hidden: bool | Sequence[str] = False,
        record_best_step: bool = True,
        warn_missing: bool = True,
    ) -> None:
        owner = type(self).__name__
        parsed, hidden_keys = summary_arguments(summaries, False, hidden, False, record_best_step, warn_missing, owner)
        self.core = SummaryCore(
            parsed, hidden=hidden_keys, record_best_step=record_best_step, warn_missing=warn_missing, owner=owner
        )
        self._observed = False

    summaries = Option["dict[str, tuple[str, ...]]"](
        "Metric name or suffix glob -> the aggregates W&B keeps for it (parsed).", via="core"
    )
    hidden = Option["bool | tuple[str, ...]"](
        "``True`` / ``False``, or the names and suffix globs whose charts are hidden.", via="core"
    )
    record_best_step = Option[bool]("Whether ``<metric>.best_step`` / ``.best_epoch`` are written.", via="core")
    warn_missing = Option[bool]("Whether entries that matched no logged metric are named in a warning.", via="core")

    def define_summaries(self, fabric: Any) -> None:
        """Define every entry on the run (global rank 0; a no-op elsewhere). Call it once, before logging."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        self.core.resolve()
        self.core.use_logger(logger)
        self.core.apply(run_of(logger, fabric.global_rank))
        self.core.start(forget_held=False)

    def observe_metrics(
        self, fabric: Any, metrics: Mapping[str, Any], step: int, epoch: int | None = None
    ) -> None:
        """Note the values logged with ``fabric.log_dict(metrics, step=step)`` (optional)."""
        core = self.core
        if not core.active:
            return
        self._observed = True
        if core.needs_scan:
            core.expand(metrics)
        # every call is a new value, even when it is the same object
        core.observe(metrics, True, int(step), epoch, fresh=True)

    def training_done(self, fabric: Any) -> None:
        """Write the best steps recorded by :meth:`observe_metrics` to the run summary."""
        self.core.finish(warn=self._observed)

    def state_dict(self) -> dict[str, Any]:
        """Best values seen so far, for ``fabric.save(path, {..., "summaries": callback})``-style resumes."""
        return _state.save(self.core.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.core.load_state_dict(_state.load(type(self).__name__, state_dict))


# ------------------------------------------------------------------------------------ watch


class FabricWatchModel:
    r"""Gradient and parameter histograms of a model trained in a Fabric loop, and a clean unwatch.

    :meth:`watch` selects the parameters (``include`` / ``exclude``) and puts one hook on the
    optimizer (``register_step_pre_hook``): at every ``log_freq``-th optimizer step, right before
    it, global rank 0 logs ``gradients/<name>`` / ``parameters/<name>`` histograms at
    ``trainer/global_step`` = the number of optimizer steps taken since :meth:`watch`, computed by
    :class:`~lw_callbacks.WatchModel`'s core. No hook per parameter. With ``log_graph`` the model's
    graph is recorded during the first forward. :meth:`unwatch` (and ``training_done``) removes
    every hook.

    Args:
        log: ``"gradients"``, ``"parameters"`` or ``"all"``.
        log_freq: optimizer steps between two logs.
        log_graph: log the model graph from the first forward.
        include: glob(s) of parameter names to watch (``None``: all trainable).
        exclude: glob(s) of parameter names to leave out.
        bins: histogram bins (1-512).

    Raises:
        ValueError: at construction, for bad arguments (as ``WatchModel``); from :meth:`watch`, for
            an optimizer that takes no step hooks.
        ConfigurationError: from a hook, when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricWatchModel
        >>> watch = FabricWatchModel(log="all", log_freq=50)
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[watch])
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 1))
        >>> model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> fabric.call("watch", fabric, model, optimizer)
        >>> watch.watched_names
        ['0.weight', '0.bias']
        >>> for step in range(3):  # histograms at step 0
        ...     fabric.backward(model(torch.randn(4, 8)).pow(2).mean())
        ...     optimizer.step()
        ...     optimizer.zero_grad()
        >>> fabric.call("unwatch", fabric)
        >>> watch.watched_names
        []
    """

    def __init__(
        self,
        log: Literal["gradients", "parameters", "all"] = "gradients",
        log_freq: int = 100,
        log_graph: bool = False,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        bins: int = 64,
    ) -> None:
        owner = type(self).__name__
        include_patterns, exclude_patterns = histogram_arguments(
            log, log_freq, log_graph, include, exclude, bins, owner
        )
        self.core = HistogramCore(log, log_freq, log_graph, include_patterns, exclude_patterns, bins, owner)
        self._handle: Any = None
        self._steps = 0

    log_mode = Option[str]('What is logged: ``"gradients"``, ``"parameters"`` or ``"all"`` (the ``log`` argument).',
                           via="core")
    log_freq = Option[int]("Optimizer steps between two logs.", via="core")
    log_graph = Option[bool]("Whether the module graph is logged from the first forward.", via="core")
    include = Option["list[str] | None"]("Parameter-name patterns to watch (``None``: every one).", via="core")
    exclude = Option["list[str] | None"]("Parameter-name patterns not to watch.", via="core")
    bins = Option[int]("Bins per histogram.", via="core")

    @property
    def watched_names(self) -> list[str]:
        """Names of the watched parameters (rank 0, between watch and unwatch)."""
        return self.core.watched_names

    def watch(self, fabric: Any, model: nn.Module, optimizer: Any) -> None:
        """Start watching ``model``, whose parameters ``optimizer`` steps (both as ``fabric.setup`` returned)."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        inner = getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper delegates step to it
        if not hasattr(inner, "register_step_pre_hook"):
            raise ConfigurationError(
                f"{type(self).__name__}.watch(optimizer=...): got {type(optimizer).__name__}, not a torch optimizer; "
                "pass the optimizer returned by `fabric.setup(model, optimizer)`."
            )
        self.unwatch(fabric)
        core = self.core
        module = _unwrap(model)
        watched = core.select(module)
        if fabric.global_rank != 0:
            return
        if not core.start(run_of(logger, 0), watched):
            return
        self._steps = 0
        core.arm_graph(module)  # with log_graph: recorded during the first forward
        self._handle = inner.register_step_pre_hook(self._before_step)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.core.finish_graph()
        self.core.log_histograms(self._steps)
        self._steps += 1

    def unwatch(self, fabric: Any = None) -> None:
        """Remove the optimizer hook and any graph hook; drop the references to the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.core.release()

    def training_done(self, fabric: Any = None) -> None:
        """Same as :meth:`unwatch`."""
        self.unwatch(fabric)


# ------------------------------------------------------------------------------------ checkpoints


class FabricUploadCheckpoints:
    r"""Upload checkpoints saved with ``fabric.save`` as W&B ``model`` artifacts, without slowing training.

    After ``fabric.save(path, state)``, call :meth:`upload_checkpoint` on every rank: on global
    rank 0 it hard-links the file into a staging folder (or, on another filesystem, opens it for the
    worker to copy) and returns; a background thread hashes and logs it, exactly as
    :class:`~lw_callbacks.UploadCheckpoints` does (it is that callback's core: the same hand-over,
    ledger, retries, flush, and staged files kept until W&B holds them durably). Each file becomes a version of one
    collection, ``collection_name`` (``model-<run id>-<monitor>``, or ``model-<run id>`` without
    ``monitor``), holding ``model.ckpt``, with metadata ``score``, ``monitor``, ``mode``,
    ``epoch``, ``global_step``, ``original_filename``, ``original_path`` and yours, and aliases
    ``latest``, ``best`` (by ``score``, with ``monitor`` and ``mode``), ``epoch-<n>``,
    ``step-<n>`` and the ``aliases`` given. Content uploaded before is not uploaded again.

    :meth:`training_done` flushes pending uploads (for at most ``flush_timeout`` seconds, retrying
    failures) and tells every rank what was logged, so :func:`restore_checkpoint` right after gives
    each rank the same file; call it on every rank. :meth:`training_failed` flushes without any
    collective (for an ``except`` block). Your checkpoint files are never moved or deleted.

    Attributes:
        collection_name: the artifact name, known on every rank after the first upload call.

    Args:
        name: collection name template with ``{run_id}``, ``{monitor}``, ``{mode}``, ``{index}`` (0).
        monitor: the name of the score passed to :meth:`upload_checkpoint`; enables ``best``.
        mode: ``"min"`` or ``"max"``: which score is best.
        aliases: extra aliases for every version.
        flush_timeout: seconds to wait for pending uploads at the end.
        staging_dir: where hand-over links go; ``None``: ``.upload-staging`` beside each file.
        progress_bar: show a progress bar while flushing 64 MiB or more.

    Options are read-only after construction (setting one raises ``AttributeError``).

    Raises:
        ConfigurationError: at construction, for a bad template, alias, timeout, ``mode``, ``monitor``,
            ``staging_dir`` or ``progress_bar``; from a hook, when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> import torch
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricUploadCheckpoints, restore_checkpoint
        >>> upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, loggers=[WandbLogger(project="digits")],
        ...                   callbacks=[upload])
        >>> fabric.launch()
        >>> model = torch.nn.Linear(8, 1)
        >>> for epoch, val_acc in enumerate([0.5, 0.8, 0.7]):
        ...     fabric.save(f"checkpoints/epoch{epoch}.ckpt", {"model": model, "val_acc": val_acc})
        ...     fabric.call("upload_checkpoint", fabric, f"checkpoints/epoch{epoch}.ckpt",
        ...                 step=epoch, epoch=epoch, score=val_acc)
        >>> fabric.call("training_done", fabric)  # flushes, and tells every rank what was logged
        >>> path = restore_checkpoint(upload.collection_name + ":best")
        >>> path.name, path.parent.name.rsplit("-", 2)[1]  # the best version: epoch 1, val_acc 0.8
        ('model.ckpt', 'v1')
        >>> torch.load(path, weights_only=True)["val_acc"]
        0.8
    """

    def __init__(
        self,
        name: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        aliases: Sequence[str] = (),
        flush_timeout: float = 600.0,
        staging_dir: str | None = None,
        progress_bar: bool = True,
    ) -> None:
        owner = type(self).__name__
        self._mode = check_choice(owner, "mode", mode, ("min", "max"))
        self._monitor = check_str(owner, "monitor", monitor, allow_none=True, example="'val_acc'")
        self._name = check_template(name, owner)
        self._aliases = check_aliases(aliases, owner)
        self._flush_timeout = check_flush_timeout(flush_timeout, owner)
        self._staging_dir = check_path(owner, "staging_dir", staging_dir)
        self._progress_bar = check_bool(owner, "progress_bar", progress_bar)
        # the hand-over, ledger, worker and flushes of UploadCheckpoints, its messages naming this class
        self.publisher = Publisher(self.aliases, self.flush_timeout, self.staging_dir, self.progress_bar, owner)
        self.collection_name: str | None = None
        self._run: Any = None

    name = Option[str | None]("The collection name template, or ``None`` for the default name.")
    monitor = Option[str | None]("The name of the score, or ``None`` (no ``best`` alias).")
    mode = Option[str]("``\"min\"`` or ``\"max\"``: which score is best.")
    aliases = Option[tuple[str, ...]]("The extra aliases of every new version, each once.")
    flush_timeout = Option[float]("Seconds to wait for pending uploads at the end.")
    staging_dir = Option[str | None]("Where hand-over links go, or ``None``: beside each file.")
    progress_bar = Option[bool]("Whether a progress bar shows while flushing large files.")

    def upload_checkpoint(
        self,
        fabric: Any,
        path: str | os.PathLike[str],
        *,
        step: int | None = None,
        epoch: int | None = None,
        score: Any = None,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Hand the checkpoint file at ``path`` (as ``fabric.save`` wrote it) over for upload.

        Args:
            fabric: the ``Fabric``.
            path: the file ``fabric.save`` wrote, or the folder of a sharded checkpoint (one version
                holding all its files; :func:`restore_checkpoint` returns the folder).
            step: optimizer step of the checkpoint (metadata and alias ``step-<n>``).
            epoch: epoch of the checkpoint (metadata and alias ``epoch-<n>``).
            score: the ``monitor`` value of this checkpoint (a number or a one-element tensor).
            aliases: extra aliases for this version only.
            metadata: extra JSON-serializable metadata for this version.

        Raises:
            FileNotFoundError: on global rank 0, when ``path`` does not exist.
            ConfigurationError: ``path`` is not a path; ``step`` /
                ``epoch`` not an int >= 0; a bad alias; on global rank 0, ``metadata`` that is not
                JSON-serializable (:class:`~lw_callbacks.ConfigurationError`, raised before anything
                is marked, so the corrected call for the same file uploads it).
        """
        call = f"{type(self).__name__}.upload_checkpoint"
        check_path(call, "path", path, allow_none=False)
        check_int(call, "step", step, minimum=0, allow_none=True, example="100")
        check_int(call, "epoch", epoch, minimum=0, allow_none=True, example="3")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigurationError(
                f"{call}(metadata={metadata!r}): metadata must be a dict of JSON-serializable values or None, "
                f"got {type(metadata).__name__}, e.g. metadata={{'lr': 0.01}}."
            )
        extra = list(check_aliases(aliases, call))
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        publisher = self.publisher
        if self.collection_name is None:  # first call: every rank learns the name (one broadcast)
            run = run_of(logger, fabric.global_rank)
            run_id = str(run.id) if run is not None else None
            run_id = fabric.broadcast(run_id, src=0)
            self.collection_name = name_for(self.name, run_id, self.monitor, self.mode, 0)[:128] if run_id else ""
            self._run = run
        if fabric.global_rank != 0 or self._run is None:
            return
        real = os.path.realpath(path)
        folder = os.path.isdir(real)  # a sharded checkpoint: one version holding all its files
        if not folder and not os.path.isfile(real):
            raise FileNotFoundError(
                f"{call}(path={str(path)!r}): no such file on global rank 0; "
                "pass the path given to `fabric.save(path, state)`, after that call."
            )
        value = as_float(score)
        value = value if value is not None and math.isfinite(value) else None
        meta = version_metadata(
            path, score=value, monitor=self.monitor, mode=self.mode, epoch=epoch, global_step=step, is_last=False,
            extra={**dict(metadata or {}), **({"folder": True} if folder else {})},
        )
        try:  # checked before anything is marked, so a corrected call for the same file is not skipped
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ConfigurationError(
                f"{call}(metadata=...) must be JSON-serializable (str, numbers, "
                f"bools, None, lists and dicts of them; no NaN): {err}. Convert values first, e.g. "
                "`float(tensor)` or `str(path)`."
            ) from None
        if publisher.uploader is None:
            publisher.check_staging()  # a staging_dir that cannot be used: ConfigurationError naming it
            publisher.ledger.collection(self.collection_name, self.monitor, self.mode)
            publisher.begin(self._run, logger, owner=type(self).__name__)
        try:
            sig = files.folder_signature(real) if folder else files.signature(os.stat(real))
            if publisher.ledger.is_known(real, sig):
                return  # this content was handed over already
            all_aliases = version_aliases(epoch, step, publisher.aliases, extra)
            score_for_best = value if self.monitor is not None else None
            publisher.stage_and_submit(
                str(path), real, sig, self.collection_name, score_for_best, meta, all_aliases, is_folder=folder
            )
        except Exception as err:  # a hand-over problem never stops training
            warn(f"{type(self).__name__}: could not hand over {path} ({type(err).__name__}: {err}).")

    def training_done(self, fabric: Any) -> None:
        """Flush pending uploads and share what was logged with every rank (a broadcast: call on every rank).

        Under several processes rank 0 flushes for at most half the process group's timeout (or
        ``flush_timeout``, if shorter), so no rank waits in the broadcast longer than the group
        allows; what is left goes on in the background and ``wandb.finish()`` waits for it.
        """
        publisher = self.publisher
        world_size, strategy = getattr(fabric, "world_size", 1), getattr(fabric, "strategy", None)
        publisher.flush("training ended", flush_limit(publisher.flush_timeout, world_size, strategy))
        publisher.share_logged(fabric.global_rank == 0, fabric.broadcast)

    def training_failed(self, fabric: Any = None, exception: BaseException | None = None) -> None:
        """Flush pending uploads after a failure, with no collective (call it from ``except``)."""
        why = f"training stopped with {type(exception).__name__}" if exception is not None else "training stopped"
        self.publisher.flush(why)
        self.publisher.keep_logged()

    def state_dict(self) -> dict[str, Any]:
        """The ledger of handed-over files, to save with the checkpoint for a resume."""
        return _state.save(self.publisher.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.publisher.load_state_dict(_state.load(type(self).__name__, state_dict))


# ------------------------------------------------------------------------------------ run dir


class FabricShareRunDir:
    r"""Make rank 0's W&B run folder, id, name and config known on every rank of a Fabric job.

    :meth:`share_run_dir` starts the run on global rank 0 (if it has not started), broadcasts its
    folder, id, name and config with one ``fabric.broadcast`` (every rank calls it), and sets the
    attributes below and ``os.environ["WANDB_DIR"]`` on every rank, exactly as
    :class:`~lw_callbacks.ShareRunDir` does (it is that callback's core). Under a W&B sweep,
    ``config`` holds the sweep's values on every rank: build the model from it after the hook.

    Attributes (``None`` before :meth:`share_run_dir` and under ``WANDB_MODE=disabled``):
        run_dir, files_dir, wandb_dir, run_id, run_name: as ``ShareRunDir``.
        config: the run's config, the same plain ``dict`` on every rank (``{}`` before the hook
            and when W&B is disabled).

    Args:
        set_env: set ``os.environ["WANDB_DIR"]`` on every rank.

    Raises:
        ConfigurationError: in ``__init__``, when ``set_env`` is not a ``bool``; from the hook,
            when the Fabric has no W&B logger.

    Example::

        >>> import lightning as L
        >>> from lightning.pytorch.loggers import WandbLogger
        >>> from lw_callbacks.fabric import FabricShareRunDir
        >>> share = FabricShareRunDir()
        >>> fabric = L.Fabric(accelerator="cpu", devices=1, callbacks=[share],  # e.g. strategy="ddp", devices=2
        ...                   loggers=[WandbLogger(project="digits", config={"hidden": 64})])
        >>> fabric.launch()
        >>> fabric.call("share_run_dir", fabric)
        >>> share.run_dir.name  # the same path on every rank
        'offline-run-...'
        >>> share.config  # a sweep's values, on every rank: build the model from them
        {'hidden': 64}
    """

    def __init__(self, set_env: bool = True) -> None:
        self._set_env = check_flag("set_env", set_env, type(self).__name__)
        self.core = SharedRun(type(self).__name__)

    set_env = Option[bool]("Whether ``WANDB_DIR`` is set on every rank to rank 0's W&B folder.")

    def share_run_dir(self, fabric: Any) -> Path | None:
        """Broadcast rank 0's run folder to every rank; returns it (``None`` when W&B is disabled)."""
        logger = require_fabric_wandb_logger(fabric, type(self).__name__)
        info = describe_run(run_of(logger, 0), logger, type(self).__name__) if fabric.global_rank == 0 else None
        info = fabric.broadcast(info, src=0)  # every rank enters it
        self.core.adopt(info, fabric.global_rank, self._set_env)
        return self.core.run_dir

    @property
    def run_dir(self) -> Path | None:
        """The run's own folder."""
        return self.core.run_dir

    @property
    def files_dir(self) -> Path | None:
        """``run_dir / "files"``: files there are uploaded with the run."""
        return self.core.files_dir

    @property
    def wandb_dir(self) -> Path | None:
        """The root W&B writes under; the value ``WANDB_DIR`` gets."""
        return self.core.wandb_dir

    @property
    def run_id(self) -> str | None:
        """The run's id."""
        return self.core.run_id

    @property
    def run_name(self) -> str | None:
        """The run's display name."""
        return self.core.run_name

    @property
    def config(self) -> dict[str, Any]:
        """The run's config, the same plain ``dict`` on every rank (a sweep's values included)."""
        return self.core.config
