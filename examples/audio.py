"""Audio samples: waveforms you can play in the W&B table, beside the model's predictions.

A small classifier tells low tones (220-440 Hz) from high ones (1-2 kHz) in noisy 0.25 s clips at
8 kHz. ``LogPredictionSamples(sample_rate=8000)`` puts each chosen clip in the inputs table's
``audio`` column as ``wandb.Audio`` (once), and each epoch's table holds the ground truth, the
prediction and the class scores. Batches are dicts with the waveforms ``(N, 1, T)`` under
``"audio"``. Offline by default; ``--online`` logs to W&B, ``--fast`` (or ``LW_EXAMPLE_FAST=1``)
runs fewer epochs.

    python examples/audio.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import torch
import wandb
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lw_callbacks import LogPredictionSamples
from lw_callbacks.records import read_run

RATE = 8000


def tones(n: int, seed: int) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(RATE // 4) / RATE
    clips = []
    for i in range(n):
        high = i % 2
        low_hz, high_hz = (1000.0, 2000.0) if high else (220.0, 440.0)
        freq = float(torch.empty(1).uniform_(low_hz, high_hz, generator=g))
        wave = 0.5 * torch.sin(2 * math.pi * freq * t) + 0.05 * torch.randn(len(t), generator=g)
        clips.append({"audio": wave[None], "label": torch.tensor(high)})
    return clips


class ToneClassifier(LightningModule):
    """Log-magnitude spectrum in 32 bands, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(32, 2)

    def forward(self, audio: Tensor) -> Tensor:
        spectrum = torch.fft.rfft(audio[:, 0]).abs()[:, : 32 * 31].reshape(len(audio), 32, -1).mean(dim=2)
        return self.out(torch.log1p(spectrum))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["audio"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch["audio"])

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 5)

    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    callback = LogPredictionSamples(num_samples=6, sample_rate=RATE, class_names=["low", "high"], key="tones")
    trainer = Trainer(
        logger=logger,
        callbacks=[callback],
        max_epochs=epochs,
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    train = DataLoader(tones(256, seed=1), batch_size=32, shuffle=True)
    trainer.fit(ToneClassifier(), train, DataLoader(tones(64, seed=2), batch_size=32))
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"audio samples logged in {run_dir}:")
    (inputs,) = records.tables("tones/inputs")
    clips = [e for e in inputs.entries if e.path.endswith(".wav")]
    print(f"  inputs table (once): {len(clips)} WAV clips at {RATE} Hz")
    for table in records.tables("tones/table"):
        right = sum(row["ground truth"] == row["prediction"] for row in table.rows)
        print(f"  epoch table: {right}/{len(table.rows)} right")


if __name__ == "__main__":
    main()
