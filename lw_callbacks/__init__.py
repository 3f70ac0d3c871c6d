"""Composable PyTorch Lightning callbacks for Weights & Biases.

Each callback is one concern, works alone, and is safe beside the others on every rank:

- :class:`LogPredictionSamples`: the same validation samples every epoch, as captioned images and
  a W&B Table whose images are uploaded once.
- :class:`MetricSummaries`: ``define_metric`` min / max / mean / first / last summaries that keep the
  ``trainer/global_step`` x-axis, derived from ``ModelCheckpoint`` / ``EarlyStopping`` by default.
- :class:`WatchModel`: gradient and parameter histograms at optimizer steps, with a clean unwatch.
- :class:`UploadCheckpoints` and :func:`restore_checkpoint`: every checkpoint ``ModelCheckpoint``
  keeps, as a W&B artifact with ``latest`` / ``best`` aliases, and back as a local file.
- :class:`ShareRunDir`: rank 0's run folder, id and name known on every rank.

Fabric loops get the same features from :mod:`lw_callbacks.fabric`; :mod:`lw_callbacks.records`
reads what a run recorded from its own log.
"""

from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
from lw_callbacks.predictions import LogPredictionSamples
from lw_callbacks.run_dir import ShareRunDir
from lw_callbacks.summaries import MetricSummaries
from lw_callbacks.watch import WatchModel

__version__ = "0.1.0"

__all__ = [
    "LogPredictionSamples",
    "MetricSummaries",
    "ShareRunDir",
    "UploadCheckpoints",
    "WatchModel",
    "__version__",
    "restore_checkpoint",
]
