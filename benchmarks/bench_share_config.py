"""ShareRunDir's one broadcast, now carrying the run's config, under ``ddp`` with 2 CPU processes.

A: one broadcast of the run folder, id and name alone (the payload before the config was shared).
B: a whole ``ShareRunDir.setup`` with the run started: describe, pack the config, the broadcast, adopt.
Measured without a sweep and in a simulated sweep run (``WANDB_SWEEP_PARAM_PATH``), each in one
2-process launch (``share_config_ddp.py``); the absolute B median is in the note (budget: 50 ms).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Result

HERE = Path(__file__).resolve().parent
SWEEP = "lr:\n  value: 0.03\nhidden:\n  value: 128\n"


def _launch(rounds: int, sweep: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="lwbench-share-") as tmp:
        env = dict(os.environ)
        env.pop("WANDB_SERVICE", None)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
        if sweep:
            (Path(tmp) / "params.yaml").write_text(SWEEP)
            env["WANDB_SWEEP_PARAM_PATH"] = str(Path(tmp) / "params.yaml")
        else:
            env.pop("WANDB_SWEEP_PARAM_PATH", None)
        proc = subprocess.run([sys.executable, str(HERE / "share_config_ddp.py"), str(rounds)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        line = next(x for x in proc.stdout.splitlines() if x.startswith("{"))
        return json.loads(line)


def cases(rounds: int) -> None:
    for sweep in (False, True):
        data = _launch(max(rounds, 20), sweep)
        result = Result(
            f"ShareRunDir.setup / run-dir broadcast alone (ddp, 2 CPU processes, {'sweep' if sweep else 'no sweep'})",
            ratios=data["ratios"],
            a=[data["a_median_ms"] / 1000],
            b=[data["b_median_ms"] / 1000],
            note=f"B median {data['b_median_ms']:.2f} ms, max {data['b_max_ms']:.2f} ms; config {data['config']}",
        )
        print(result.row(), flush=True)
