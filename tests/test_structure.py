"""The package's structure, as a maintainer relies on it.

* One doorway to W&B: outside ``lw_callbacks/_wandb.py`` no module logs, defines metrics, logs or
  uses artifacts on a run, writes a run's summary, or builds ``wandb.Api()``.
* No module uses another module's ``_``-prefixed names: neither imports them nor touches the
  ``_``-prefixed members of a class defined in another file (the Fabric classes and the Trainer
  callbacks share cores through their public API, so renaming a private member breaks nothing).
* Cores import no Trainer: ``lw_callbacks/core/`` uses nothing of ``lightning.pytorch`` but its
  utilities.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lw_callbacks"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
DOORWAY = PACKAGE / "_wandb.py"

# Writes to W&B, as they appear in source: a call on a run (or on wandb), a summary write, the API.
WRITES = {
    "log": re.compile(r"\b(run|wandb|experiment|self\._run|self\.run)\.log\("),
    "log_artifact": re.compile(r"\.log_artifact\("),
    "use_artifact": re.compile(r"\.use_artifact\("),
    "define_metric": re.compile(r"\b(run|wandb|experiment|self\._run|self\.run)\.define_metric\("),
    "summary write": re.compile(r"\.summary(\[[^\]]*\]\s*=(?!=)|\.update\(|\.__setitem__\()"),
    "wandb.Api()": re.compile(r"\bwandb\.Api\("),
    "wandb.Artifact()": re.compile(r"\bwandb\.Artifact\("),
}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Source lines that are code: docstrings and comments blanked, so documentation may name the calls."""
    source = path.read_text()
    tree = ast.parse(source)
    blank: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                blank.update(range(value.lineno, (value.end_lineno or value.lineno) + 1))
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number in blank:
            continue
        lines.append((number, line.split("#", 1)[0] if "#" in line and '"' not in line else line))
    return lines


@pytest.mark.parametrize("module", [m for m in MODULES if m != DOORWAY], ids=_rel)
def test_only_the_doorway_writes_to_wandb(module: Path) -> None:
    found = [
        f"{_rel(module)}:{number}: {what}: {line.strip()}"
        for number, line in _code_lines(module)
        for what, pattern in WRITES.items()
        if pattern.search(line)
    ]
    assert not found, "writes to W&B outside lw_callbacks/_wandb.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("what", "line"),
    [
        ("log", "run.log({'a': 1})"),
        ("log_artifact", "logged = self.run.log_artifact(artifact, aliases=aliases)"),
        ("use_artifact", "run.use_artifact('model-x:best')"),
        ("define_metric", "experiment.define_metric('val_acc', summary='max')"),
        ("summary write", "self._run.summary[GRAPH_KEY] = graph"),
        ("summary write", "run.summary.update(payload)"),
        ("wandb.Api()", "api = wandb.Api()"),
        ("wandb.Artifact()", "artifact = wandb.Artifact(name=name, type='model')"),
    ],
)
def test_the_write_patterns_find_writes(what: str, line: str) -> None:
    """Each pattern finds the write it stands for (so an empty result elsewhere means something)."""
    assert WRITES[what].search(line)
    assert not any(p.search("self.log(f'{stage}_loss', loss)") for p in WRITES.values())


def _private_members() -> dict[str, set[Path]]:
    """``_name`` (not dunder) -> the files whose classes define it (methods, attributes set on self, fields)."""
    owners: dict[str, set[Path]] = defaultdict(set)
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in ast.walk(node):
                name = None
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = item.name
                elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                    name = item.attr
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    name = item.target.id
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            owners[target.id].add(path) if _private(target.id) else None
                if name and _private(name):
                    owners[name].add(path)
    return owners


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_module(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _module_of(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@pytest.mark.parametrize("module", MODULES, ids=_rel)
def test_no_module_uses_another_modules_private_names(module: Path) -> None:
    owners = _private_members()
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            source = _imported_module(module, node)
            if source.startswith("lw_callbacks"):
                found += [
                    f"{_rel(module)}:{node.lineno}: imports {source}.{alias.name}"
                    for alias in node.names
                    if _private(alias.name) and not _is_module(f"{source}.{alias.name}")
                ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            where = owners.get(node.attr, set())
            if where and module not in where:
                found.append(
                    f"{_rel(module)}:{node.lineno}: .{node.attr} of a class in "
                    + ", ".join(sorted(_rel(p) for p in where))
                )
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative).is_dir()


def test_the_private_name_check_finds_a_use() -> None:
    """A file that reaches into another module's class is reported (so a clean result means something)."""
    owners = _private_members()
    some = next(name for name, where in owners.items() if PACKAGE / "core" / "uploader.py" in where)
    probe = ast.parse(f"def f(x):\n    return x.{some}\n")
    uses = [n.attr for n in ast.walk(probe) if isinstance(n, ast.Attribute) and _private(n.attr)]
    assert uses == [some] and PACKAGE / "fabric.py" not in owners[some]


@pytest.mark.parametrize("module", sorted((PACKAGE / "core").glob("*.py")), ids=_rel)
def test_cores_import_no_trainer(module: Path) -> None:
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        found += [
            f"{_rel(module)}:{node.lineno}: imports {n}"
            for n in names
            if n.startswith(("lightning.pytorch", "pytorch_lightning", "lightning.fabric"))
            and not n.startswith(("lightning.pytorch.utilities", "lightning.fabric.utilities"))
        ]
    assert not found, "a core imports the framework:\n" + "\n".join(found)


# ---------------------------------------------------------------------- warnings: one category, one way out
_WARNING_CALLS = {"rank_zero_warn", "rank_zero_deprecation", "WarningCache", "showwarning"}


def _warning_exits(source: str) -> list[tuple[int, str]]:
    """``(line, call)`` of every warning emitted other than through ``lw_callbacks._errors``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            if any(n in _WARNING_CALLS or n == "warnings" for n in names):
                found.append((node.lineno, "imports " + ", ".join(names)))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if name in _WARNING_CALLS or (owner == "warnings" and name == "warn"):
                found.append((node.lineno, f"{owner + '.' if owner else ''}{name}()"))
    return found


@pytest.mark.parametrize("module", [m for m in MODULES if m.name != "_errors.py"], ids=_rel)
def test_every_warning_leaves_through_one_function(module: Path) -> None:
    """Outside ``lw_callbacks/_errors.py`` a warning is emitted only by ``warn`` / ``WarnOnce``, so it is
    an ``LWCallbacksWarning`` and each cause is said once."""
    found = [f"{_rel(module)}:{line}: {what}" for line, what in _warning_exits(module.read_text())]
    assert not found, "warnings emitted outside lw_callbacks._errors:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "import warnings\nwarnings.warn('x')",
        "from lightning.pytorch.utilities.rank_zero import rank_zero_warn\nrank_zero_warn('x')",
        "from lightning.pytorch.utilities import rank_zero\nrank_zero.rank_zero_warn('x')",
        "cache = WarningCache()",
    ],
)
def test_the_warning_check_finds_an_other_exit(line: str) -> None:
    assert _warning_exits(line)
    assert not _warning_exits("from lw_callbacks._errors import warn\nwarn('x')\nself._warnings.warn('y')")


def test_package_warnings_have_one_category_and_say_each_cause_once() -> None:
    import warnings

    from lw_callbacks import LWCallbacksWarning
    from lw_callbacks._errors import WarnOnce

    once = WarnOnce()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        once.warn("first at step 1", cause="first")
        once.warn("first at step 2", cause="first")
        once.warn("second")
        once.warn("second")
    assert [(w.category, str(w.message)) for w in caught] == [
        (LWCallbacksWarning, "first at step 1"), (LWCallbacksWarning, "second")
    ]
    assert issubclass(LWCallbacksWarning, UserWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=LWCallbacksWarning)
        WarnOnce().warn("filtered")
    assert caught == []  # one filter silences the package
