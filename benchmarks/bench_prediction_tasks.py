"""LogPredictionSamples on segmentation: peak memory of ``validate`` on 20,000 256x256 masks, and time.

``python benchmarks/run.py --only bench_prediction_tasks [--rounds N]``, or run this file directly.

* peak RSS: ``trainer.validate`` on 20,000 synthetic 3x256x256 images with 256x256 class-id masks
  (4 classes; the step returns ``(N, 4, 256, 256)`` logits), batch 8, with the callback
  (``num_samples=16``, images + tables) and without, each in a fresh subprocess after a warm-up
  validate on 64 examples (imports, first run start, PNG and table code paths). The data set draws
  each example from its index and holds nothing, so what grows is the loop's and the callback's.
  A thread samples ``VmRSS`` every 2 ms during the measured ``validate``; growth = its peak - RSS
  just before. The callback's share = median(with) - median(without); the target is < 50 MB for the
  total growth with the callback.
* validation time: the same ``validate`` on 2,000 examples, with (B) vs without (A), alternating.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import compare, rss_kib, validate_seconds  # noqa: E402

SIZE = 256
CLASSES = 4


def _dataset(n: int) -> Any:
    import torch
    from torch.utils.data import Dataset

    class Masks(Dataset):
        """``n`` images ``(3, 256, 256)`` float and masks ``(256, 256)`` int64: a rectangle per class,
        placed from the index. O(1) memory: nothing is stored."""

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
            for c in range(1, CLASSES):
                x0, y0 = (i * 37 * c) % (SIZE - 64), (i * 53 * c) % (SIZE - 64)
                mask[y0 : y0 + 48 + 4 * c, x0 : x0 + 40 + 8 * c] = c
            image = torch.stack([(mask == 1).float(), (mask == 2).float(), (mask == 3).float()]) * 0.8 + 0.1
            return image, mask

    return Masks()


def _model() -> Any:
    import torch
    from lightning.pytorch import LightningModule

    class Pixelwise(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, CLASSES, 1)

        def forward(self, x: Any) -> Any:
            return self.conv(x)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch[0])

    return Pixelwise()


def _validate(with_callback: bool, n: int, batch_size: int = 8) -> float:
    from torch.utils.data import DataLoader

    from lw_callbacks.predictions import LogPredictionSamples

    callbacks = [LogPredictionSamples(num_samples=16, class_names=["bg", "a", "b", "c"])] if with_callback else []
    return validate_seconds(_model(), DataLoader(_dataset(n), batch_size=batch_size), callbacks, "lwbench-tasks-")[0]


def _rss_child(with_callback: bool, n: int) -> dict[str, int]:
    """In a fresh process: peak RSS growth (KiB) during one validate on ``n`` examples."""
    import torch

    torch.set_num_threads(1)
    _validate(with_callback, 64)  # warm-up
    base = rss_kib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _validate(with_callback, n)
    done.set()
    thread.join()
    return {"peak": peak[0] - base, "kept": rss_kib() - base}


def cases(rounds: int) -> None:
    n_rss = 20_000
    grow: dict[bool, list[dict[str, int]]] = {False: [], True: []}
    for i in range(max(3, rounds)):
        for flag in ((False, True) if i % 2 == 0 else (True, False)):
            out = subprocess.run(
                [sys.executable, __file__, "--rss", "with" if flag else "without", str(n_rss)],
                capture_output=True, text=True, check=True,
            )
            grow[flag].append(json.loads(out.stdout.strip().splitlines()[-1]))
    mib = {flag: [round(g["peak"] / 1024, 1) for g in runs] for flag, runs in grow.items()}
    kept = {flag: [round(g["kept"] / 1024, 1) for g in runs] for flag, runs in grow.items()}
    med_a, med_b = statistics.median(mib[False]), statistics.median(mib[True])
    print(
        f"segmentation, validate on {n_rss:,} 256x256 masks (batch 8, 4 classes, num_samples=16): peak RSS growth "
        f"(MiB, per round) without the callback {mib[False]}, with {mib[True]}; callback's share (median with - "
        f"median without) {med_b - med_a:.1f} MiB; RSS kept after validate: without {kept[False]}, with {kept[True]}",
        flush=True,
    )
    n_time = 2_000
    compare(
        f"LogPredictionSamples(segmentation) / none (validate, {n_time:,} 256x256 masks, batch 8)",
        lambda: _validate(False, n_time),
        lambda: _validate(True, n_time),
        rounds=rounds,
        note="masks, images, inputs table + predictions table logged inside the timed region",
    )


if __name__ == "__main__":
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    if len(sys.argv) > 1 and sys.argv[1] == "--rss":
        print(json.dumps(_rss_child(sys.argv[2] == "with", int(sys.argv[3]))))
    else:
        cases(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
