r"""The package's features in a Lightning Fabric loop, one class per feature over the Trainer callback's core.

Fabric has no Trainer hooks, so each class has hooks you call from your loop with
``fabric.call(<hook>, fabric, ...)``; the first argument is the ``Fabric``, whose loggers hold a W&B
logger (wandb's Fabric ``WandbLogger`` or Lightning's). Hooks that broadcast (``share_run_dir``, the
uploader's ``training_done`` and first ``upload_checkpoint``) are called on every rank.

- :class:`FabricPredictionSamples`: ``log_prediction_samples(fabric, batch, outputs, step=...)``.
- :class:`FabricMetricSummaries`: ``define_summaries(fabric)``; optional ``observe_metrics``,
  ``training_done``.
- :class:`FabricWatchModel`: ``watch(fabric, model, optimizer)``, ``unwatch(fabric)``.
- :class:`FabricUploadCheckpoints`: ``upload_checkpoint(fabric, path, ...)`` after ``fabric.save``;
  ``training_done(fabric)`` flushes.
- :class:`FabricShareRunDir`: ``share_run_dir(fabric)``.

Example::

    upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
    fabric = L.Fabric(loggers=[WandbLogger(project="digits")],
                      callbacks=[FabricMetricSummaries({"val_acc": "max"}), FabricWatchModel(log_freq=50), upload])
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("define_summaries", fabric)
    fabric.call("watch", fabric, model, optimizer)
    for epoch in range(epochs):
        ...  # training steps, validation
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
