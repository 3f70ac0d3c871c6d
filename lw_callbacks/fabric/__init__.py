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

from lw_callbacks.fabric.checkpoints import FabricUploadCheckpoints
from lw_callbacks.fabric.predictions import FabricPredictionSamples
from lw_callbacks.fabric.run_dir import FabricShareRunDir
from lw_callbacks.fabric.summaries import FabricMetricSummaries
from lw_callbacks.fabric.watch import FabricWatchModel
from lw_callbacks.restore import restore_checkpoint

__all__ = [
    "FabricMetricSummaries",
    "FabricPredictionSamples",
    "FabricShareRunDir",
    "FabricUploadCheckpoints",
    "FabricWatchModel",
    "restore_checkpoint",
]
