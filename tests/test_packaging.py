"""What the package declares agrees with what the README promises and with what is installed."""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from harness import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _min_constraints() -> ModuleType:
    spec = importlib.util.spec_from_file_location("min_constraints", REPO / ".ci" / "min_constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release(text: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``: enough to order the plain releases used here."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _compatibility_table() -> dict[str, tuple[str, str]]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- compatibility -->\n(.*?)<!-- /compatibility -->", readme, re.S)
    assert match, "README.md has no <!-- compatibility --> table"
    rows: dict[str, tuple[str, str]] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("dependency", "") or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_readme_table_matches_the_declared_minimums() -> None:
    declared = _min_constraints().lower_bounds(REPO / "pyproject.toml")
    table = _compatibility_table()
    assert {name: low for name, (low, _) in table.items()} == declared
    for name, (low, newest) in table.items():
        assert _release(newest) >= _release(low), f"{name}: newest tested {newest} is below the minimum {low}"


def test_readme_states_the_declared_python() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lowest = project["requires-python"].removeprefix(">=")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Compatibility") :]
    assert f"Python {lowest} or newer" in section


def test_installed_versions_meet_the_declared_minimums() -> None:
    for name, low in _min_constraints().lower_bounds(REPO / "pyproject.toml").items():
        assert _release(version(name)) >= _release(low), f"{name} {version(name)} is older than the declared {low}"


def test_every_dependency_has_a_lower_bound_and_the_pins_follow_them(tmp_path: Path) -> None:
    module = _min_constraints()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["a-b>=1.2", "c[x] >= 3.0, <4; python_version>\'3\'"]\n')
    assert module.lower_bounds(pyproject) == {"a-b": "1.2", "c": "3.0"}
    pyproject.write_text('[project]\ndependencies = ["d"]\n')
    try:
        module.lower_bounds(pyproject)
    except ValueError as err:
        assert "'d'" in str(err) and ">=" in str(err)
    else:
        raise AssertionError("a dependency without a lower bound was accepted")
