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
    import wandb

    # A service started for an earlier test resolves relative folders against that test's folder, and
    # older wandb releases cannot start a run on a service whose last run finished in another test:
    # each example starts its own, as a reader's fresh interpreter would.
    wandb.teardown()
    with isolated_wandb(tmp_path):
        try:
            yield
        finally:
            wandb.finish()
            wandb.teardown()
