"""Kill one run again and again at random moments, resuming it each time, then let it finish.

Usage: python kill_loop.py ROOT RUN_ID KILLS SEED [--staging DIR]

The torch, Lightning and W&B imports are paid once: each fit runs in a child forked from this
process, in a session of its own (with the W&B service it starts). A first child fits 2 epochs to
the end; it takes D seconds. Then each child resumes the run from ``last.ckpt`` and SIGKILL goes to
its whole session at a random moment, 0.3 s to 2 D (at most 12 s) after the fork: before, during or after the
resumed fit's comparison of the disk with the run's records, a save, a hand-over, an upload. One
kill in five is made inside that comparison (``Publisher.recover``), the resume itself. After KILLS
kills, a last child fits two more epochs to the end.

Writes ROOT/loop.json: the kills made and the exit status of the last fit. The witness journal
(ROOT/witness.jsonl) and the warnings (ROOT/report/warnings.txt) come from checkpoint_faults.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    root, run_id, kills, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    extra = sys.argv[5:]
    os.environ["LW_WITNESS"] = str(root / "witness.jsonl")
    os.environ["LW_REPORT_DIR"] = str(root / "report")
    sys.path.insert(0, str(Path(__file__).parent))
    import checkpoint_faults
    import lightning.pytorch  # noqa: F401
    import torch
    import wandb  # noqa: F401

    import lw_callbacks.checkpoints  # noqa: F401

    rng = random.Random(seed)
    made = []

    def fit(fault: str, epochs: str = "100000") -> int:  # never reached: each fit is killed
        pid = os.fork()
        if pid == 0:
            os.setsid()
            code = 1
            try:
                sys.argv = ["checkpoint_faults.py", str(root / "runs"), str(root / "ckpts"), run_id, fault, "0",
                            "--resume", "--epochs", epochs, *extra]
                checkpoint_faults.main()
                code = 0
            finally:
                os._exit(code)
        return pid

    began = time.monotonic()
    os.waitpid(fit("none", "2"), 0)
    calibration = time.monotonic() - began
    for i in range(kills):
        in_resume = i % 5 == 4 and (root / "ckpts" / "last.ckpt").exists()
        pid = fit("resume" if in_resume else "none")
        delay = rng.uniform(0.3, min(2.0 * calibration, 12.0))
        deadline = time.monotonic() + (60.0 if in_resume else delay)
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            with_kill = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                with_kill = False
            _, status = os.waitpid(pid, 0)
            made.append({"after_s": round(delay, 2), "in_resume": in_resume, "killed": with_kill})
            continue
        made.append({"after_s": round(delay, 2), "in_resume": in_resume,
                     "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                     "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
    last = root / "ckpts" / "last.ckpt"
    epochs = torch.load(last, map_location="cpu", weights_only=False)["epoch"] + 2 if last.exists() else 3
    pid = fit("none", str(epochs))
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    (root / "loop.json").write_text(json.dumps({"kills": made, "last_exit": code, "calibration_s": calibration}))


if __name__ == "__main__":
    main()
