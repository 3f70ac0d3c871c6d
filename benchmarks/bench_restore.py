"""restore_checkpoint of an offline run: the verified copy it returns vs the hard link it used to return.

For a 256 MiB and a 1 GiB checkpoint logged to an offline run, each round restores the version into
a fresh folder. A is the former way: md5 of W&B's staged file, then a hard link to it (the returned
file shared storage with what ``wandb sync`` uploads). B is ``restore_checkpoint`` now: a copy (a
reflink where the filesystem offers one), whose md5 is then checked. Both read the whole file once;
B also writes it once, unless the filesystem can reflink.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import compare

SIZES = {"256 MiB": 256 * 2**20, "1 GiB": 2**30}


def _logged_run(root: Path, size: int) -> tuple[str, Path]:
    import wandb

    run = wandb.init(project="lw-bench", dir=str(root), mode="offline")
    source = root / "model.ckpt"
    block = os.urandom(2**20)
    with open(source, "wb") as fh:
        for i in range(size // len(block)):
            fh.write(block[:-8] + i.to_bytes(8, "little"))
    name = f"model-{run.id}"
    artifact = wandb.Artifact(name, type="model")
    artifact.add_file(str(source), name="model.ckpt")
    run.log_artifact(artifact, aliases=["latest"])
    run.finish()
    source.unlink()
    return name, Path(run.settings.sync_dir)


def _case(label: str, size: int, rounds: int) -> None:
    from lw_callbacks.checkpoints import restore_checkpoint
    from lw_callbacks.core import files as _files
    from lw_callbacks.records import read_run

    root = Path(tempfile.mkdtemp(prefix="lwbench-restore-"))
    name, run_dir = _logged_run(root, size)
    entry = read_run(run_dir).resolve_artifact(name, "v0").entry("model.ckpt")
    assert entry.local_path is not None
    staged = entry.local_path
    counter = {"n": 0}

    def fresh() -> Path:
        counter["n"] += 1
        return root / f"restored-{counter['n']}"

    def run_a() -> float:
        out = fresh()
        start = time.perf_counter()
        assert _files.md5_b64(staged) == entry.digest
        target = out / f"{name}-v0" / "model.ckpt"
        target.parent.mkdir(parents=True)
        os.link(staged, target)
        elapsed = time.perf_counter() - start
        shutil.rmtree(out)
        return elapsed

    def run_b() -> float:
        out = fresh()
        start = time.perf_counter()
        path = restore_checkpoint(f"{name}:v0", run_dir=run_dir, root=out)
        elapsed = time.perf_counter() - start
        assert os.stat(path).st_nlink == 1
        shutil.rmtree(out)
        return elapsed

    compare(f"restore_checkpoint copy / former hard link (offline, {label})", run_a, run_b,
            rounds=rounds, warmup=1, note="B: verified copy of the staged file; A: md5 + hard link")
    shutil.rmtree(root, ignore_errors=True)


def cases(rounds: int) -> None:
    for label, size in SIZES.items():
        _case(label, size, rounds)
