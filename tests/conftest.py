"""Every test runs W&B offline in its own folders, so nothing reaches the home directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ISOLATED, isolated_wandb

__all__ = ["ISOLATED"]


@pytest.fixture(scope="module")
def isolated_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same isolation for a module-scoped fixture that fits once for several tests."""
    with isolated_wandb(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as root:
        yield root


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path) -> Iterator[Path]:
    """Offline W&B with every W&B folder (and TMPDIR) under the test's tmp dir; cwd is tmp_path."""
    with isolated_wandb(tmp_path) as root:
        yield root


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how much of the documentation ran (set by test_readme.py when it was collected)."""
    import sys

    module = sys.modules.get("test_readme")
    counts = getattr(module, "COUNTS", None)
    if counts:
        terminalreporter.write_line(
            f"documentation: {counts['run']} Python blocks run, {counts['fragments']} fragments "
            f"(each with its reason), {counts['yaml']} YAML blocks built with LightningCLI"
        )
