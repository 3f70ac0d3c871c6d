"""The documentation runs: every Python block of README.md and docs/*.md is executed, offline.

Blocks run in document order in one working folder and one namespace per document, as a reader
would paste them one after the other. The few names a block assumes (``model``, ``dm``,
``LitModule``, ``run_id``) come from :func:`reader_namespace`. Trainers get short settings through
Lightning's own ``PL_TRAINER_*`` defaults (an argument written in the block still wins). A block
that is only a fragment (it needs several processes, a W&B server, or the reader's own loop)
carries ``<!-- fragment: <reason> -->`` on the line before it and is counted, not run. YAML blocks
that configure a Trainer are built with LightningCLI.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import wandb
import yaml
from harness import REPO, build_with_cli

from lw_callbacks.records import find_runs

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
README_MAX_LINES = 300  # the rest belongs in docs/
FRAGMENT = re.compile(r"<!--\s*fragment:\s*(?P<why>.+?)\s*-->")
FAST_TRAINER = {
    "PL_TRAINER_MAX_EPOCHS": "2",
    "PL_TRAINER_LIMIT_TRAIN_BATCHES": "4",
    "PL_TRAINER_LIMIT_VAL_BATCHES": "2",
    "PL_TRAINER_LIMIT_TEST_BATCHES": "2",
    "PL_TRAINER_LIMIT_PREDICT_BATCHES": "2",
    "PL_TRAINER_ACCELERATOR": "cpu",
    "PL_TRAINER_DEVICES": "1",
    "PL_TRAINER_ENABLE_PROGRESS_BAR": "0",
    "PL_TRAINER_ENABLE_MODEL_SUMMARY": "0",
}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    fragment: str | None  # the reason, for a block that is not meant to run alone

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


def blocks_of(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w+)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        previous = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = FRAGMENT.search(previous)
        code = "\n".join(lines[start + 1 : j])
        found.append(Block(doc, start + 1, match.group(1), code, marker["why"] if marker else None))
        i = j + 1
    return found


ALL = [b for doc in DOCS for b in blocks_of(doc)]
PYTHON = [b for b in ALL if b.lang == "python"]
YAML = [b for b in ALL if b.lang == "yaml" and "trainer:" in b.code]
COUNTS = {
    "run": sum(1 for b in PYTHON if b.fragment is None),
    "fragments": sum(1 for b in PYTHON if b.fragment is not None),
    "yaml": len(YAML),
}


def reader_namespace() -> dict[str, Any]:
    """The names a block assumes: the user's model, data module and module class, and a run id."""
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(  # the imports every block of the README starts from, as in its first block
        "from lightning.pytorch import Trainer\n"
        "from lightning.pytorch.callbacks import ModelCheckpoint\n"
        "from lightning.pytorch.loggers import WandbLogger\n"
        "from lw_callbacks import (LogPredictionSamples, MetricSummaries, ShareRunDir,\n"
        "                          UploadCheckpoints, WatchModel, restore_checkpoint)\n",
        namespace,
    )
    namespace.update(model=DigitsClassifier(), dm=DigitsDataModule(batch_size=64), LitModule=DigitsClassifier)
    return namespace


def guide_namespace() -> dict[str, Any]:
    """For the page on moving from the W&B guide: the guide's own module, ``My_LitModule``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("from_the_guide", REPO / "examples" / "from_the_guide.py")
    assert spec is not None and spec.loader is not None
    guide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guide)
    namespace = reader_namespace()
    namespace.update(My_LitModule=guide.My_LitModule, model=guide.My_LitModule(), LitModule=guide.My_LitModule)
    return namespace


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, tuple[Path, dict[str, Any]]]:
    """One working folder and one namespace per document, shared by its blocks in order."""
    return {
        doc: (tmp_path_factory.mktemp(doc.stem.lower()), guide_namespace() if doc.stem == "migrating" else
              reader_namespace())
        for doc in DOCS
    }


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(
    block: Block, reader: dict[Path, tuple[Path, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.fragment is not None:
        pytest.skip(f"fragment: {block.fragment}")
    folder, namespace = reader[block.doc]
    monkeypatch.chdir(folder)
    # W&B's service process resolves a relative `dir` (WandbLogger's default save_dir ".") against its
    # own working folder, the one the first test of the session ran in: start a new service here, so
    # the runs a block makes land in the reader's folder, as they would for the reader.
    wandb.teardown()
    for name, value in FAST_TRAINER.items():
        monkeypatch.setenv(name, value)
    runs = find_runs(folder)
    if runs and "run_id" not in namespace:
        namespace["run_id"] = runs[-1].name.rsplit("-", 1)[-1]
    try:
        exec(compile(textwrap.dedent(block.code), block.id, "exec"), namespace)
    finally:
        if wandb.run is not None:
            wandb.finish()


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_yaml_block_builds_with_lightning_cli(block: Block, tmp_path: Path) -> None:
    config = yaml.safe_load(block.code)
    callbacks = config["trainer"]["callbacks"]
    cli = build_with_cli(yaml.safe_dump(callbacks), tmp_path)
    built = {type(cb).__name__ for cb in cli.trainer.callbacks}
    for entry in callbacks:
        assert entry["class_path"].rsplit(".", 1)[-1] in built


def anchors_of(doc: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub and mkdocs' ``toc`` spell them."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_stays_short_and_links_only_to_pages_and_sections_that_exist() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is too long: move prose to a page of docs/"
    for target, anchor in re.findall(r"\]\(((?:docs/[^)#]+)?)(?:#([^)]+))?\)", text):
        page = REPO / target if target else readme
        assert page.is_file(), f"README.md links to {target}, which does not exist"
        assert not anchor or anchor in anchors_of(page), f"README.md links to {target}#{anchor}: no such heading"


def test_readme_argument_tables_match_the_constructors() -> None:
    """Each callback's table names every keyword argument of its constructor, with its default."""
    import ast
    import inspect

    import lw_callbacks

    sections = re.split(r"^### ", (REPO / "README.md").read_text(), flags=re.M)[1:]
    checked = 0
    for section in sections:
        cls = getattr(lw_callbacks, section.split()[0])
        table = section[section.index("| argument | default | meaning |") :].split("\n\n")[0]
        documented: dict[str, str] = {}
        for line in table.splitlines()[2:]:
            names_cell, default_cell = (c.strip() for c in line.strip("|").split("|")[:2])
            names = re.findall(r"`([^`]+)`", names_cell)
            defaults = re.findall(r"`([^`]+)`", default_cell)
            for i, name in enumerate(names):
                documented[name] = defaults[min(i, len(defaults) - 1)]
        parameters = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
        assert set(documented) == set(parameters), f"{cls.__name__}: the README's table and the constructor differ"
        for name, parameter in parameters.items():
            default = parameter.default
            shown = ast.literal_eval(documented[name])
            if isinstance(default, tuple):
                shown = tuple(shown)
            assert shown == default, f"{cls.__name__}({name}=...): README {documented[name]}, default {default!r}"
        checked += 1
    assert checked == 5


def test_every_python_block_runs_or_says_why_not() -> None:
    assert PYTHON, "no Python block found"
    for block in PYTHON:
        if block.fragment is not None:
            assert len(block.fragment) > 10, f"{block.id}: say why the block does not run alone"
    assert COUNTS["run"] >= len(PYTHON) // 2, "most blocks must run"
