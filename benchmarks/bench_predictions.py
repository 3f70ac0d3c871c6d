"""LogPredictionSamples: validation time, peak memory on a 100k-example set, media bytes per epoch.

``python benchmarks/run.py --only bench_predictions [--rounds N]``, or run this file directly.

* validation time: ``trainer.validate`` on 20,000 synthetic 28x28 images, with the callback (B) vs
  without (A), alternating, fresh offline run each time (run start outside the timed region). The
  callback's epoch-end logging (PNG encoding, tables, artifact staging) is inside the timed region.
* peak RSS: the same on 100,000 synthetic examples generated from their index (the data set itself
  holds nothing), each measurement in a fresh subprocess; growth = peak RSS - RSS before validate;
  the callback's share = median(with) - median(without).
* media bytes: a 3-epoch fit with ``log_images=False``, read back from the run's records: bytes the
  run wrote per logged epoch (run files under media/ + artifact files staged for that epoch; a
  reference entry stages nothing); then with the image panel on, PNGs per epoch in the run files.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import compare, rss_kib, validate_seconds  # noqa: E402


def _dataset(n: int) -> Any:
    import torch
    from torch.utils.data import Dataset

    class Synthetic(Dataset):
        """``n`` 1x28x28 float images in [0, 1] and labels, made from the index: O(1) memory."""

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            return torch.rand(1, 28, 28, generator=g), torch.tensor(i % 10)

    return Synthetic()


def _model() -> Any:
    from lw_callbacks.demo import DigitsClassifier

    model = DigitsClassifier(hidden=128)
    import torch

    model.layer_1 = torch.nn.Linear(28 * 28, 128)
    return model


def _validate(with_callback: bool, n: int, batch_size: int = 256, **cb: Any) -> tuple[float, Any]:
    """Seconds of one ``trainer.validate`` and the run folder."""
    from torch.utils.data import DataLoader

    from lw_callbacks.predictions import LogPredictionSamples

    callbacks = [LogPredictionSamples(**cb)] if with_callback else []
    return validate_seconds(_model(), DataLoader(_dataset(n), batch_size=batch_size), callbacks, "lwbench-pred-")


def _rss_child(with_callback: bool, n: int) -> int:
    """In a fresh process: peak RSS growth (KiB) of one validate on ``n`` examples."""
    import resource

    import torch
    import wandb  # noqa: F401  (imported before the baseline, as in the measured run)

    torch.set_num_threads(1)
    _validate(with_callback, 512)  # warm: first run start, imports, PNG / table code paths
    base = rss_kib()
    _validate(with_callback, n)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base


def _media_bytes(log_images: bool, data: str = "digits", epochs: int = 3, num_samples: int = 16) -> dict[str, Any]:
    import wandb
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
    from lw_callbacks.predictions import LogPredictionSamples
    from lw_callbacks.records import find_runs, read_run

    save_dir = tempfile.mkdtemp(prefix="lwbench-media-")
    trainer = Trainer(
        logger=WandbLogger(save_dir=save_dir, project="lw-bench"),
        callbacks=[LogPredictionSamples(num_samples=num_samples, log_images=log_images)],
        max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=save_dir, limit_train_batches=5,
    )
    if data == "digits":  # real 8x8 digits: PNGs of ~100 bytes
        trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    else:  # 28x28 noise images, the size of MNIST
        from torch.utils.data import DataLoader

        loader = DataLoader(_dataset(512), batch_size=64)
        trainer.fit(_model(), train_dataloaders=loader, val_dataloaders=loader)
    wandb.finish()
    rec = read_run(find_runs(save_dir)[0])
    files = rec.run_dir / "files"
    steps = [s for s, _ in rec.series("predictions/table")]
    per_epoch: list[int] = []
    pngs: list[int] = []
    tables = rec.tables("predictions/table")
    inputs = rec.tables("predictions/inputs")
    for i, step in enumerate(steps):
        size, count = 0, 0
        for row in rec.history:
            if row.get("trainer/global_step") != step:
                continue
            for key in ("predictions/table", "predictions/inputs"):
                if key in row:
                    size += int(row[key]["size"])  # the run-file copy under media/table/
            if "predictions/images" in row:
                names = row["predictions/images"]["filenames"]
                size += sum((files / f).stat().st_size for f in names)
                count += sum(1 for f in names if f.endswith(".png"))
        arts = [tables[i]] + ([inputs[0]] if i == 0 else [])
        size += sum(e.size for t in arts for e in t.entries if e.local_path)  # staged copies; references: none
        per_epoch.append(size)
        pngs.append(count)
    return {"steps": steps, "bytes": per_epoch, "pngs": pngs}


def cases(rounds: int) -> None:
    n_time = 20_000
    compare(
        f"LogPredictionSamples / none (validate, {n_time:,} 28x28 images, batch 256, first logged epoch)",
        lambda: _validate(False, n_time)[0],
        lambda: _validate(True, n_time)[0],
        rounds=rounds,
        note="images + inputs table + predictions table logged inside the timed region",
    )
    compare(
        f"LogPredictionSamples(log_images=False) / none (validate, {n_time:,} images)",
        lambda: _validate(False, n_time)[0],
        lambda: _validate(True, n_time, log_images=False)[0],
        rounds=rounds,
    )
    n_rss = 100_000
    grow: dict[bool, list[int]] = {False: [], True: []}
    for i in range(max(3, rounds)):
        for flag in ((False, True) if i % 2 == 0 else (True, False)):
            out = subprocess.run(
                [sys.executable, __file__, "--rss", "with" if flag else "without", str(n_rss)],
                capture_output=True, text=True, check=True,
            )
            grow[flag].append(json.loads(out.stdout.strip().splitlines()[-1])["kib"])
    med_a, med_b = statistics.median(grow[False]), statistics.median(grow[True])
    print(
        f"peak RSS growth of validate on {n_rss:,} examples (KiB, per round): without {grow[False]}, "
        f"with {grow[True]}; callback's share (median with - median without): {(med_b - med_a) / 1024:.1f} MiB",
        flush=True,
    )
    for data, log_images in (("digits", False), ("digits", True), ("28x28", False), ("28x28", True)):
        m = _media_bytes(log_images, data)
        first = m["bytes"][0]
        later = ", ".join(f"{b} B ({100 * b / first:.1f} %)" for b in m["bytes"][1:])
        print(
            f"media bytes per logged epoch ({data}, log_images={log_images}, 16 samples, steps {m['steps']}): "
            f"first {first} B; later {later}; PNGs in run files per epoch {m['pngs']}",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss":
        os.environ.setdefault("WANDB_MODE", "offline")
        print(json.dumps({"kib": _rss_child(sys.argv[2] == "with", int(sys.argv[3]))}))
    else:
        cases(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
