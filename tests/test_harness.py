"""The multi-process harness fails fast on a hang and leaves no process behind."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from harness import run_ranks


def test_a_hang_fails_fast_and_kills_every_process(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"hang\.py did not finish in 3s"):
        run_ranks("hang.py", out_dir=tmp_path / "reports", timeout=3)
    assert time.monotonic() - start < 60
    time.sleep(0.5)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "hang.py" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers
