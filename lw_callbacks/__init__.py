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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lw_callbacks._errors import ConfigurationError, LWCallbacksWarning
    from lw_callbacks.checkpoints import UploadCheckpoints, restore_checkpoint
    from lw_callbacks.predictions import LogPredictionSamples
    from lw_callbacks.run_dir import ShareRunDir
    from lw_callbacks.summaries import MetricSummaries
    from lw_callbacks.watch import WatchModel

# Imported on first use, so that ``python -m lw_callbacks inspect`` and ``lw_callbacks.records``
# do not pay for importing lightning and torch.
_EXPORTS = {
    "ConfigurationError": "lw_callbacks._errors",
    "LWCallbacksWarning": "lw_callbacks._errors",
    "LogPredictionSamples": "lw_callbacks.predictions",
    "MetricSummaries": "lw_callbacks.summaries",
    "ShareRunDir": "lw_callbacks.run_dir",
    "UploadCheckpoints": "lw_callbacks.checkpoints",
    "WatchModel": "lw_callbacks.watch",
    "restore_checkpoint": "lw_callbacks.checkpoints",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lw_callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "LWCallbacksWarning",
    "LogPredictionSamples",
    "MetricSummaries",
    "ShareRunDir",
    "UploadCheckpoints",
    "WatchModel",
    "__version__",
    "restore_checkpoint",
]
