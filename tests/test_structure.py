"""The package's structure, as a maintainer relies on it.

* One doorway to W&B: outside ``lw_callbacks/_wandb.py`` no module logs, defines metrics, logs or
  uses artifacts on a run, writes a run's summary, or builds ``wandb.Api()``.
* No module uses another module's ``_``-prefixed names: neither imports them nor touches the
  ``_``-prefixed members of a class defined in another file (the Fabric classes and the Trainer
  callbacks share cores through their public API, so renaming a private member breaks nothing).
* Cores are framework-free: ``lw_callbacks/core/`` imports nothing of Lightning but its utilities
  (``lightning.pytorch.utilities``, ``lightning.fabric.utilities``, ``lightning_utilities``), so no
  core names a Trainer, LightningModule, Fabric or callback class. This is a claim about the code,
  not about import time: importing any ``lightning.*`` module (the package's ``ConfigurationError``
  is a Lightning ``MisconfigurationException``) runs ``lightning/__init__.py``, which imports the
  Trainer.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lw_callbacks"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
DOORWAY = PACKAGE / "_wandb.py"

def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


# W&B's own entry points that write to (or start, or query) a run: reached through the `wandb` module.
_WANDB_WRITES = {"log", "init", "Api", "Artifact", "define_metric", "save", "watch", "unwatch", "log_artifact",
                 "use_artifact", "log_model", "use_model", "link_model", "run", "summary", "config", "finish"}
# Methods of a Run (or an Artifact, or a logger's experiment) that write: flagged on any receiver,
# whatever the variable is called.
_RUN_WRITES = {"log_artifact", "use_artifact", "define_metric", "link_artifact", "log_code", "log_model",
               "use_model", "link_model", "upsert_artifact", "finish_artifact", "mark_preempting", "alert"}


def _wandb_writes(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of every write to W&B in ``source``, found by what is called, not by names.

    * the ``wandb`` module's write entry points, under any alias (``import wandb as w; w.Api()``,
      ``from wandb import Artifact``);
    * a run's write methods (``define_metric``, ``log_artifact``, ...) on any receiver;
    * ``.log(...)`` on any receiver but ``self`` (a LightningModule's own ``self.log``) or the doorway
      module (``_wandb.log``);
    * a write to any ``.summary`` (item assignment or deletion, ``update``, ``__setitem__``).
    """
    tree = ast.parse(source)
    wandb_names: set[str] = set()
    doorway_names: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "wandb" or alias.name.startswith("wandb."):
                    wandb_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "wandb":
                for alias in node.names:
                    if alias.name in _WANDB_WRITES:
                        found.append((node.lineno, f"from wandb import {alias.name}"))
            if node.module == "lw_callbacks":
                doorway_names |= {a.asname or a.name for a in node.names if a.name == "_wandb"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in wandb_names and node.attr in _WANDB_WRITES
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func, receiver = node.func, node.func.value
            run_write = func.attr in _RUN_WRITES
            log = func.attr == "log" and not (
                isinstance(receiver, ast.Name) and (receiver.id == "self" or receiver.id in doorway_names)
            )
            summary_write = func.attr in ("update", "__setitem__", "__delitem__", "setdefault", "pop", "clear") and (
                isinstance(receiver, ast.Attribute) and receiver.attr == "summary"
            )
            if run_write or log or summary_write:
                found.append((node.lineno, f"{ast.unparse(func)}()"))
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute) and (
                target.value.attr == "summary"
            ):
                found.append((target.lineno, f"{ast.unparse(target)} written"))
    return sorted(set(found))


@pytest.mark.parametrize("module", [m for m in MODULES if m != DOORWAY], ids=_rel)
def test_only_the_doorway_writes_to_wandb(module: Path) -> None:
    found = [f"{_rel(module)}:{line}: {what}" for line, what in _wandb_writes(module.read_text())]
    assert not found, "writes to W&B outside lw_callbacks/_wandb.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "r = get_run(trainer)\nr.log({'a': 1})",
        "handle = run_of(logger, 0)\nlogged = handle.log_artifact(artifact, aliases=aliases)",
        "x.use_artifact('model-x:best')",
        "thing.define_metric('val_acc', summary='max')",
        "self.core.current.summary[GRAPH_KEY] = graph",
        "box.summary.update(payload)",
        "del r.summary['k']",
        "import wandb as w\napi = w.Api()",
        "import wandb\nartifact = wandb.Artifact(name=name, type='model')",
        "from wandb import Artifact",
        "import wandb\nwandb.run.log({'a': 1})",
        "self.experiment.log({'a': 1})",
    ],
)
def test_the_doorway_check_finds_writes_whatever_the_names(source: str) -> None:
    """Each write is found under names the package does not use (so an empty result elsewhere means something)."""
    assert _wandb_writes(source), source


def test_the_doorway_check_leaves_reads_and_module_logs_alone() -> None:
    source = (
        "import wandb\nfrom lw_callbacks import _wandb\nimage = wandb.Image(x)\ntable = wandb.Table(columns=c)\n"
        "self.log('val_loss', loss)\n_wandb.log(run, payload, step, owner)\nvalue = run.summary['k']\n"
    )
    assert _wandb_writes(source) == []


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


def _private_uses(module: Path, source: str, owners: dict[str, set[Path]]) -> list[str]:
    """Uses in ``source`` (the text of ``module``) of another module's ``_``-prefixed names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported = _imported_module(module, node)
            if imported.startswith("lw_callbacks"):
                found += [
                    f"{_rel(module)}:{node.lineno}: imports {imported}.{alias.name}"
                    for alias in node.names
                    if _private(alias.name) and not _is_module(f"{imported}.{alias.name}")
                ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            where = owners.get(node.attr, set())
            if where and module not in where:
                found.append(
                    f"{_rel(module)}:{node.lineno}: .{node.attr} of a class in "
                    + ", ".join(sorted(_rel(p) for p in where))
                )
    return found


@pytest.mark.parametrize("module", MODULES, ids=_rel)
def test_no_module_uses_another_modules_private_names(module: Path) -> None:
    found = _private_uses(module, module.read_text(), _private_members())
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative).is_dir()


def test_the_private_name_check_finds_a_use() -> None:
    """The detector reports a file that reaches into another module's class, or imports a private name
    (so a clean result means something); the same text in the owning file is fine."""
    owners = _private_members()
    uploader = PACKAGE / "core" / "uploader.py"
    some = next(name for name, where in owners.items() if where == {uploader})
    fabric = PACKAGE / "fabric" / "checkpoints.py"
    probe = f"def f(x):\n    return x.{some}\n"
    assert _private_uses(fabric, probe, owners) == [
        f"lw_callbacks/fabric/checkpoints.py:2: .{some} of a class in lw_callbacks/core/uploader.py"
    ]
    assert _private_uses(uploader, probe, owners) == []
    imports = "from lw_callbacks.core.files import _link\n"
    assert _private_uses(fabric, imports, owners) == [
        "lw_callbacks/fabric/checkpoints.py:1: imports lw_callbacks.core.files._link"
    ]


_FRAMEWORK = ("lightning", "pytorch_lightning", "lightning_fabric")
_UTILITIES = ("lightning.pytorch.utilities", "lightning.fabric.utilities", "pytorch_lightning.utilities",
              "lightning_fabric.utilities")


def _framework_imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of Lightning other than its utilities (relative imports are ours)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module not in _FRAMEWORK else [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            framework = name.split(".")[0] in _FRAMEWORK
            utility = any(name == u or name.startswith(u + ".") for u in _UTILITIES)
            if framework and not utility:
                found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("module", sorted((PACKAGE / "core").rglob("*.py")), ids=_rel)
def test_cores_use_only_lightnings_utilities(module: Path) -> None:
    found = [f"{_rel(module)}:{line}: imports {name}" for line, name in _framework_imports(module.read_text())]
    assert not found, "a core imports the framework:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import lightning.pytorch as pl",
        "import lightning as L",
        "from lightning import Trainer",
        "from lightning.pytorch.trainer.trainer import Trainer",
        "from lightning.pytorch.callbacks import Callback",
        "import pytorch_lightning",
        "from lightning_fabric import Fabric",
        "from lightning.fabric.strategies import DDPStrategy",
    ],
)
def test_the_core_import_check_finds_the_framework(source: str) -> None:
    assert _framework_imports(source), source


def test_the_core_import_check_accepts_the_utilities() -> None:
    source = ("from lightning.pytorch.utilities.rank_zero import rank_zero_only\n"
              "from lightning.fabric.utilities import rank_zero\nimport torch\nfrom lw_callbacks import _wandb\n")
    assert _framework_imports(source) == []


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


# ---------------------------------------------------------------------- prediction tasks: strategies, one module each
def _task_name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of every comparison (``==``, ``!=``, ``in``, ``not in``) with a task name written out:
    a string constant, or one inside a tuple / list / set compared against."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for operand in (node.left, *node.comparators):
            items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            found += [
                (node.lineno, item.value) for item in items
                if isinstance(item, ast.Constant) and isinstance(item.value, str) and item.value in names
            ]
    return found


@pytest.mark.parametrize("module", MODULES, ids=_rel)
def test_no_module_compares_a_task_name_but_that_tasks_own(module: Path) -> None:
    """The sampling, reading and table-building code asks the stage's task (``core/tasks/<name>.py``)
    and names none: a task's name is compared with only in its own module."""
    from lw_callbacks.core.tasks import TASKS

    names = set(TASKS) - {module.stem} if module.parent == PACKAGE / "core" / "tasks" else set(TASKS)
    found = [f"{_rel(module)}:{line}: {name!r}" for line, name in _task_name_comparisons(module.read_text(), names)]
    assert not found, "task names compared outside their task's module:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    ["if st.task == 'segmentation': pass", "x = task in ('detection', 'text')", "ok = 'audio' != kind",
     "if kind not in ['regression']: pass"],
)
def test_the_task_name_check_finds_a_comparison(source: str) -> None:
    assert _task_name_comparisons(source, {"segmentation", "detection", "text", "audio", "regression"})



def test_no_module_is_over_600_lines() -> None:
    """One job a module: none of the package's modules runs over 600 lines."""
    long = {_rel(m): n for m in MODULES if (n := len(m.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines (split them by job): {long}"
