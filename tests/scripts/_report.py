"""Imported by multi-process test scripts: each rank writes what it saw to LW_REPORT_DIR/rank<N>.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def report(rank: int, **data: Any) -> None:
    out = Path(os.environ["LW_REPORT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, **data}, default=str))
