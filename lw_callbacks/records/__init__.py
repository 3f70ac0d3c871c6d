"""Read what a W&B run recorded, from the run's own transaction log (``run-<id>.wandb``).

An offline run keeps everything it logged (history, summary, config, metric definitions,
artifacts) only in that log; there is no summary or config JSON beside it. This module decodes the
log so that you can check a run before ``wandb sync`` (for example on an air-gapped cluster), and
so that :func:`lw_callbacks.restore_checkpoint` can give back an artifact of an offline run.

Example::

    from lw_callbacks.records import read_run

    run = read_run("wandb/offline-run-20260101_120000-abc123")
    run.summary["val_acc"]                     # {"max": 0.97}
    run.series("val_acc")                      # [(step, value), ...] at trainer/global_step
    run.resolve_artifact("model-abc123-val_acc", "best").metadata["score"]

The same reader backs ``python -m lw_callbacks inspect RUN_DIR``.
"""

from __future__ import annotations

from lw_callbacks.records._log import iter_records, scan_artifact_digests, scan_log
from lw_callbacks.records.run import (  # noqa: F401  (names not in __all__: for the package's other modules)
    STEP_KEY,
    ArtifactEntry,
    ArtifactVersion,
    IncompleteRunError,
    LoggedTable,
    MetricDefinition,
    RunRecords,
    find_runs,
    log_file_of,
    read_resumed,
    read_run,
    read_segments,
    run_id_of,
    segments_of,
    summarize,
)

__all__ = [
    "ArtifactEntry",
    "ArtifactVersion",
    "IncompleteRunError",
    "LoggedTable",
    "MetricDefinition",
    "RunRecords",
    "find_runs",
    "iter_records",
    "read_resumed",
    "read_run",
    "scan_artifact_digests",
    "scan_log",
    "segments_of",
    "summarize",
]
