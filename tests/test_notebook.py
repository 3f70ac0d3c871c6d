"""examples/quickstart.ipynb in a real Jupyter kernel: a fit interrupted from the client, then another fit.

A user in Jupyter runs the fit cell, presses the stop button during the fit, and runs the cell
again. Checked from the runs' own records: the checkpoints saved before the interrupt are uploaded
to the first run, the first run is finished, and the second fit is a new run with nothing of the
first one in it, and no error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lw_callbacks.records import find_runs, read_run

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"
FIT_CELL = "trainer.fit("


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def outputs_text(cell: Any) -> str:
    """Everything a cell printed: streams, results and errors."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}")
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


def errors(cell: Any) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def test_quickstart_interrupted_in_a_kernel_then_fit_again(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup, make, fit, report = code  # the notebook's four code cells, in order
    assert FIT_CELL in fit.source
    # the kernel starts its own W&B service, as in a Jupyter session (not this process's, which an
    # earlier test may have started in another folder: it resolves the relative save_dir there)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent.parent), env.get("PYTHONPATH")) if p)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel(env=env, cwd=str(tmp_path)):
        def run(source: str) -> Any:
            cell = nbformat.v4.new_code_cell(source)
            nb.cells.append(cell)
            return client.execute_cell(cell, len(nb.cells) - 1)

        for cell in (setup, make):
            client.execute_cell(cell, nb.cells.index(cell))
            assert not errors(cell), errors(cell)
        # a long fit, interrupted once its first checkpoints are on disk
        run("EPOCHS = 1000")
        pid = int(outputs_text(run("import os\nprint(os.getpid())")).strip())  # the kernel's process
        interrupted = threading.Event()

        def interrupt_after_two_checkpoints() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if len(list(tmp_path.rglob("*.ckpt"))) >= 3:  # two epochs' files and last.ckpt
                    time.sleep(0.5)  # into the next epoch's batches
                    os.kill(pid, signal.SIGINT)  # what the stop button does
                    interrupted.set()
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=interrupt_after_two_checkpoints, daemon=True)
        watcher.start()
        first = nbformat.v4.new_code_cell(fit.source)
        nb.cells.append(first)
        client.execute_cell(first, len(nb.cells) - 1)
        watcher.join(timeout=5)
        assert interrupted.is_set(), "the fit ended before it could be interrupted"
        assert "Detected KeyboardInterrupt" in outputs_text(first) or errors(first), outputs_text(first)[-2000:]
        kept_before = {p: md5_b64(p) for p in tmp_path.rglob("*.ckpt")}
        assert len(kept_before) >= 2

        state = run("import signal as _s, wandb as _w\n"
                    "print(_w.run is None, _s.getsignal(_s.SIGINT) is _s.default_int_handler)")
        assert outputs_text(state).split() == ["True", "True"], outputs_text(state)

        # the same cells again, as a user re-runs them: a short, clean second fit
        run("EPOCHS = 1")
        second = nbformat.v4.new_code_cell(fit.source)
        nb.cells.append(second)
        client.execute_cell(second, len(nb.cells) - 1)
        assert not errors(second), errors(second)
        printed = outputs_text(second)
        for needle in ("watch", "already in progress", "Traceback", "LWCallbacksWarning"):
            assert needle not in printed, printed[-3000:]
        client.execute_cell(report, nb.cells.index(report))
        assert not errors(report), errors(report)

    runs = sorted(find_runs(tmp_path / "runs"), key=lambda p: p.name)
    assert len(runs) == 2, runs
    first_run, second_run = (read_run(r) for r in runs)
    # every checkpoint kept before the interrupt is in the first run's artifacts
    uploaded = {digest for _, digest in first_run.digests()}
    first_dir = runs[0]
    # (a last.ckpt saved at the step of an uploaded top-k file holds the same weights: not uploaded)
    mine = {p: d for p, d in kept_before.items() if first_dir.name in str(p) and p.name != "last.ckpt"}
    assert mine, (kept_before, runs)
    missing = {str(p.relative_to(tmp_path)) for p, d in mine.items() if d not in uploaded}
    assert not missing, f"saved before the interrupt, not uploaded: {missing}; uploaded: {first_run.artifacts()}"
    assert first_run.complete, "the interrupted run was not finished"
    # the second run: its own history from step 0, its own checkpoints, none of the first run's
    assert second_run.complete
    assert not set(mine.values()) & {digest for _, digest in second_run.digests()}
    steps = [int(s) for s, _ in second_run.series("train_loss")]
    assert steps and steps[0] < 10 and steps == sorted(steps), steps
    assert second_run.artifact_names(type="model") and all(
        first_run.run_dir.name not in n for n in second_run.artifact_names(type="model"))
