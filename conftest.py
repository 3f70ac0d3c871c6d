"""The docstring examples of ``lw_callbacks`` run as doctests, offline, in their own W&B folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import isolated_wandb


@pytest.fixture(autouse=True)
def _doctest_wandb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Doctests get what every test gets (tests/conftest.py): offline W&B in a folder of their own."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    with isolated_wandb(tmp_path):
        yield
