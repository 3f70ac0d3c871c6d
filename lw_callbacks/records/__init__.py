"""Read what a W&B run recorded, from the run's own transaction log (``run-<id>.wandb``).

An offline run keeps everything it logged (history, summary, config, metric definitions,
artifacts) only in that log; there is no summary or config JSON beside it. This module decodes the
log so that you can check a run before ``wandb sync`` (for example on an air-gapped cluster), and
so that :func:`lw_callbacks.restore_checkpoint` can give back an artifact of an offline run.

Pass :func:`read_run` a run's folder (``wandb/offline-run-20260101_120000-abc123``), its log, or a
folder holding one run. For example, a small offline run and what its log holds:

    >>> from pathlib import Path
    >>> import wandb
    >>> from lw_callbacks.records import read_run
    >>> run = wandb.init(project="demo", mode="offline")
    >>> _ = run.define_metric("val_acc", summary="max", step_metric="trainer/global_step", step_sync=True)
    >>> for step, acc in [(0, 0.5), (10, 0.9), (20, 0.7)]:
    ...     run.log({"val_acc": acc, "trainer/global_step": step})
    >>> _ = Path("model.ckpt").write_bytes(b"weights")
    >>> artifact = wandb.Artifact("model-demo", type="model", metadata={"score": 0.9})
    >>> _ = artifact.add_file("model.ckpt")
    >>> _ = run.log_artifact(artifact, aliases=["latest", "best"])
    >>> folder = Path(run.dir).parent
    >>> run.finish()
    >>> records = read_run(folder)
    >>> records.summary["val_acc"]
    {'max': 0.9}
    >>> records.series("val_acc")  # (step, value) at trainer/global_step
    [(0, 0.5), (10, 0.9), (20, 0.7)]
    >>> records.resolve_artifact("model-demo", "best").metadata["score"]
    0.9

The same reader backs ``python -m lw_callbacks inspect RUN_DIR`` and ``python -m lw_callbacks export``.
With the ``pandas`` extra (``pip install "lw-callbacks[pandas]"``), the records come as DataFrames
shaped as W&B's public API gives them online: :meth:`RunRecords.history_frame`,
:meth:`RunRecords.table_frame`, :func:`samples_frame` and :func:`runs_frame`.
"""

from __future__ import annotations

from lw_callbacks.records._log import iter_records, scan_artifact_digests, scan_log
from lw_callbacks.records.frames import runs_frame, samples_frame
from lw_callbacks.records.report import summarize
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
    "runs_frame",
    "samples_frame",
    "scan_artifact_digests",
    "scan_log",
    "segments_of",
    "summarize",
]
