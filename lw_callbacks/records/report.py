"""What a run's records show, as a user looks for it in the W&B UI: :func:`summarize` (a dict, or the
text report of ``python -m lw_callbacks inspect``)."""

from __future__ import annotations

import json
from typing import Any

from lw_callbacks.records.run import STEP_KEY, RunRecords


def summarize(run: RunRecords, text: bool = False) -> Any:
    """What a user would look for in the W&B UI: keys with their steps, summary, metric
    definitions, artifact versions with aliases, and files. A dict, or with ``text`` a report."""
    keys: dict[str, dict[str, Any]] = {}
    for row in run.history:
        step = row.get(STEP_KEY)
        for key, value in row.items():
            if key.startswith("_") or key == STEP_KEY:
                continue
            if isinstance(value, dict):
                kind = value.get("_type", "dict")
            else:
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                kind = "number" if number else type(value).__name__
            info = keys.setdefault(key, {"rows": 0, "type": kind, "first_step": step, "last_step": step})
            info["rows"] += 1
            info["last_step"] = step
    info_dict: dict[str, Any] = {
        "run_id": run.run_id,
        "project": run.project,
        "run_dir": str(run.run_dir),
        "complete": run.complete,
        "exit_code": run.exit_code,
        "keys": keys,
        "summary": {
            k: v
            for k, v in run.summary.items()
            if not k.startswith("_") and not (isinstance(v, dict) and "_type" in v)  # media: see history
        },
        "metrics": [
            {"key": m.key, "summary": sorted(m.summary), "step_metric": m.step_metric, "hidden": m.hidden}
            for m in run.metrics
            if m.key not in ("*", STEP_KEY)
        ],
        "artifacts": [
            {"name": a.name, "type": a.type, "version": f"v{a.version}", "aliases": sorted(a.aliases),
             "files": [e.path for e in a.entries], "metadata": a.metadata}
            for a in run.artifact_log
        ],
        "files": len(run.files),
        "segments": [str(p) for p in run.segments],
        "cut_segments": [str(p) for p in run.cut_segments],
        "damaged": [{"log": str(log), "start": start, "end": end} for log, start, end in run.damaged],
    }
    if not text:
        return info_dict
    if run.complete:
        state = f"finished, exit code {run.exit_code}"
    elif run.cut_segments and run.cut_segments[-1] == run.run_dir:
        state = ("no exit record: still running, or its process was killed (what was written is shown; "
                 "a resume with the same run id continues it)")
    else:
        state = "still running"
    lines = [f"run {run.run_id} ({run.project}) at {run.run_dir}", f"  state: {state}"]
    if run.damaged:
        lines.append(f"  damaged ({len(run.damaged)} ranges skipped; the records there are lost, the rest is below):")
        for log, start, end in run.damaged:
            lines.append(f"    {log}: bytes {start}..{end} ({end - start} bytes)")
    if len(run.segments) > 1:
        lines.append(f"  segments ({len(run.segments)}, merged in start order):")
        for segment in run.segments:
            lines.append(f"    {segment}" + ("  [cut: no exit record]" if segment in run.cut_segments else ""))
    lines.append(f"  history keys ({len(keys)}):")
    for key, info in sorted(keys.items()):
        lines.append(f"    {key:<40} {info['type']:<18} {info['rows']:>4} rows, "
                     f"steps {info['first_step']}..{info['last_step']}")
    if info_dict["summary"]:
        lines.append("  summary:")
        for key, value in sorted(info_dict["summary"].items()):
            lines.append(f"    {key:<40} {json.dumps(value, default=str, sort_keys=True)[:80]}")
    if info_dict["metrics"]:
        lines.append("  metric definitions:")
        for m in info_dict["metrics"]:
            lines.append(f"    {m['key']:<40} summary={','.join(m['summary']) or '-'} x-axis={m['step_metric'] or '-'}"
                         + (" hidden" if m["hidden"] else ""))
    if run.artifact_log:
        lines.append("  artifacts:")
        for a in info_dict["artifacts"]:
            lines.append(f"    {a['name']}:{a['version']:<5} ({a['type']}) aliases={','.join(a['aliases']) or '-'}"
                         f" files={_short_list(a['files'])}")
    lines.append(f"  files: {len(run.files)}")
    if run.run_dir.name.startswith("offline-run-"):
        lines.append(f"  upload it with: wandb sync {run.run_dir}")
    return "\n".join(lines)


def _short_list(items: list[str], keep: int = 3) -> str:
    shown = ",".join(items[:keep])
    return shown if len(items) <= keep else f"{shown},... ({len(items)} files)"
