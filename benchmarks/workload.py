"""The benchmark's workloads: a small CNN on synthetic 3x32x32 images, the digits smoke case, and fast steps.

``SmallCNN`` has 321,290 parameters (three 3x3 convolutions 3-32-64-64, a 1,024-256 and a 256-10
linear layer). ``SyntheticImages`` draws fixed random images whose class shifts their mean, so
the model learns something and the metrics move; by default an epoch is 100 optimizer steps of 64
images and the validation 20 batches of 64. ``TinyLinear`` on ``TinyData`` is the fast-steps case:
about a millisecond a step, nearly all of it Lightning's own loop, so per-step costs show. Nothing is
downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class SmallCNN(LightningModule):
    """A CIFAR-sized CNN that returns its validation logits (``validation_step`` -> ``(N, 10)``)."""

    def __init__(self, lr: float = 1e-3, n_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, n_classes))
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(dim=1) == y).float().mean())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())
        return logits

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class SyntheticImages(LightningDataModule):
    """Fixed random 3x32x32 images in [0, 1]: ``train_steps`` and ``val_batches`` batches of ``batch_size``."""

    def __init__(self, train_steps: int = 100, val_batches: int = 20, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.train_steps, self.val_batches, self.batch_size, self.seed = train_steps, val_batches, batch_size, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @staticmethod
    def _make(n: int, gen: torch.Generator) -> TensorDataset:
        y = torch.randint(0, 10, (n,), generator=gen)
        x = torch.rand(n, 3, 32, 32, generator=gen) * 0.8 + (y.float() / 50.0).view(-1, 1, 1, 1)
        return TensorDataset(x.clamp_(0, 1), y)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            gen = torch.Generator().manual_seed(self.seed)
            self.train_set = self._make(self.train_steps * self.batch_size, gen)
            self.val_set = self._make(self.val_batches * self.batch_size, gen)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


class TinyLinear(LightningModule):
    """A model whose training step takes about a millisecond, almost all of it Lightning's own loop:
    ``Linear(8, 2)`` on 1x2x4 inputs (so the samples are images), batch size 2."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())
        return logits

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyData(LightningDataModule):
    """Fixed random 1x2x4 inputs of two classes: ``train_steps`` and ``val_batches`` batches of 2."""

    def __init__(self, train_steps: int = 400, val_batches: int = 10, batch_size: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.train_steps, self.val_batches, self.batch_size, self.seed = train_steps, val_batches, batch_size, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @staticmethod
    def _make(n: int, gen: torch.Generator) -> TensorDataset:
        y = torch.randint(0, 2, (n,), generator=gen)
        x = torch.rand(n, 1, 2, 4, generator=gen) * 0.8 + (y.float() / 5.0).view(-1, 1, 1, 1)
        return TensorDataset(x.clamp_(0, 1), y)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            gen = torch.Generator().manual_seed(self.seed)
            self.train_set = self._make(self.train_steps * self.batch_size, gen)
            self.val_set = self._make(self.val_batches * self.batch_size, gen)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def workload(case: str, quick: bool = False) -> tuple[LightningModule, LightningDataModule, int, int]:
    """``(module, datamodule, max_epochs, log_every_n_steps)`` of a case: ``"cnn"``, ``"digits"`` or ``"steps"``
    (4,000 steps of about a millisecond: 5 epochs of 800, 10 validation batches each)."""
    if case == "cnn":
        if quick:
            return SmallCNN(), SyntheticImages(train_steps=20, val_batches=4), 2, 10
        return SmallCNN(), SyntheticImages(), 3, 50
    if case == "digits":
        from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

        return DigitsClassifier(), DigitsDataModule(), 3, 10
    if case == "steps":
        if quick:
            return TinyLinear(), TinyData(train_steps=200), 5, 50
        return TinyLinear(), TinyData(train_steps=800), 5, 50
    raise ValueError(f"unknown case {case!r}")
