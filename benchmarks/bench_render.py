"""LogPredictionSamples: milliseconds per logged epoch for 16 MNIST-sized samples, first and later.

``python benchmarks/run.py --only bench_render [--rounds N]``. One offline run; ``trainer.validate``
of a small classifier on 64 synthetic 1x28x28 images runs ``rounds + 1`` times, and each time the
callback's ``on_validation_epoch_end`` (where it builds and logs the images and tables) is timed,
wall and training-thread CPU: the first logged epoch (which encodes the PNGs and logs the inputs
table), then the later ones, with the image panel on and off; and the bytes each one wrote to the
run's media folder.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: F401  (offline W&B in temporary folders)


def _bytes(folder: Path | None) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder and folder.exists() else 0


def _epoch_ends(rounds: int, log_images: bool) -> list[tuple[float, float, int]]:
    import torch
    import wandb
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.loggers import WandbLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lw_callbacks import LogPredictionSamples

    class Small(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0])

    gen = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,))),
                      batch_size=16)
    callback = LogPredictionSamples(num_samples=16, log_images=log_images)
    timings: list[tuple[float, float, int]] = []
    original = callback.on_validation_epoch_end

    def timed(*args: Any) -> None:
        media = Path(wandb.run.dir) / "media" if wandb.run is not None else None
        before = _bytes(media)
        c0, t0 = time.thread_time(), time.perf_counter()
        original(*args)
        timings.append((time.perf_counter() - t0, time.thread_time() - c0, _bytes(media) - before))

    callback.on_validation_epoch_end = timed  # type: ignore[method-assign]
    save_dir = tempfile.mkdtemp(prefix="lwbench-render-")
    trainer = Trainer(logger=WandbLogger(save_dir=save_dir, project="lw-bench"), callbacks=[callback],
                      accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=save_dir)
    model = Small()
    for _ in range(rounds + 1):
        trainer.validate(model, dataloaders=data, verbose=False)
    wandb.finish()
    return timings


def cases(rounds: int) -> None:
    for log_images in (True, False):
        timings = _epoch_ends(max(rounds, 5), log_images)
        first, later = timings[0], timings[1:]
        walls = [1000 * w for w, _, _ in later]
        cpus = [1000 * c for _, c, _ in later]
        written = [b for _, _, b in later]
        print(f"LogPredictionSamples(num_samples=16, log_images={log_images}), 1x28x28 samples, epoch end: first "
              f"{1000 * first[0]:.1f} ms wall / {1000 * first[1]:.1f} ms CPU, {first[2]:,} media bytes; later "
              f"{len(later)}: wall min / median / max {min(walls):.1f} / {statistics.median(walls):.1f} / "
              f"{max(walls):.1f} ms, training-thread CPU {min(cpus):.1f} / {statistics.median(cpus):.1f} / "
              f"{max(cpus):.1f} ms, media bytes {statistics.median(written):,.0f}", flush=True)


if __name__ == "__main__":
    cases(5)
