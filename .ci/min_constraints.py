"""Print pip constraints that pin every runtime dependency to the lower bound pyproject.toml declares.

    python .ci/min_constraints.py --extra test --skip torch > min.txt
    pip install -r min.txt torch==2.13.0 && pip install -c min.txt -e ".[test]"

Every entry of ``[project] dependencies`` (and of each ``--extra``) must have a ``>=`` lower bound:
a dependency without one has no minimum to test, and is an error. ``--skip`` leaves one unpinned
(torch, where the machine has only one build of it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds(pyproject: Path, extras: tuple[str, ...] = ()) -> dict[str, str]:
    """``{name: lowest version}`` of ``[project] dependencies`` and of the optional ``extras``
    (a reference to the project itself, such as ``lw-callbacks[test]``, is skipped);
    ``ValueError`` for a dependency without a ``>=`` bound."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project.get("optional-dependencies", {})[extra]
    bounds: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name, _extras, specifiers, _marker = match.groups()
        if _canonical(name) == _canonical(project.get("name", "")):
            continue
        lows = [s.strip()[2:].strip() for s in specifiers.split(",") if s.strip().startswith(">=")]
        if len(lows) != 1:
            raise ValueError(f"{requirement!r} needs exactly one '>=' lower bound")
        if bounds.setdefault(_canonical(name), lows[0]) != lows[0]:
            raise ValueError(f"{name} has two different lower bounds")
    return bounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    parser.add_argument("--extra", action="append", default=[], help="pin this optional group's bounds too")
    parser.add_argument("--skip", action="append", default=[], help="a dependency to leave unpinned")
    args = parser.parse_args()
    skip = {_canonical(s) for s in args.skip}
    for name, version in lower_bounds(args.pyproject, tuple(args.extra)).items():
        if name not in skip:
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
