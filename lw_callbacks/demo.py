"""A tiny real model and data module on scikit-learn's bundled handwritten digits.

1,797 real 8x8 grayscale digits ship inside scikit-learn, so examples, tests and benchmarks train on
real images with no download. Needs scikit-learn (``pip install "lw-callbacks[examples]"``).

Example::

    from lightning.pytorch import Trainer
    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

    Trainer(max_epochs=2).fit(DigitsClassifier(), DigitsDataModule())
"""

from __future__ import annotations

import netrc
import os

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["CLASS_NAMES", "DigitsClassifier", "DigitsDataModule", "load_digits_tensors", "offline_unless_logged_in"]

CLASS_NAMES = [str(i) for i in range(10)]
Batch = tuple[Tensor, Tensor]  # images (N, 1, 8, 8) and labels (N,)


def offline_unless_logged_in() -> str:
    """Set ``WANDB_MODE=offline`` unless it is set or a W&B API key is configured; return the mode.

    A key counts when ``WANDB_API_KEY`` is set or ``wandb login`` wrote it to ``~/.netrc``.
    """
    if "WANDB_MODE" not in os.environ:
        try:
            key = os.environ.get("WANDB_API_KEY")
            logged_in = bool(key) or netrc.netrc().authenticators("api.wandb.ai") is not None
        except (FileNotFoundError, netrc.NetrcParseError):
            logged_in = False
        if not logged_in:
            os.environ["WANDB_MODE"] = "offline"
    return os.environ.get("WANDB_MODE", "online")


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``(N, 1, 8, 8)`` float images in ``[0, 1]`` and ``(N,)`` int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lw_callbacks.demo needs scikit-learn for its digits data: pip install 'lw-callbacks[examples]'"
        ) from err
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    return images, labels


class DigitsDataModule(LightningDataModule):
    """Train / validation / test split of the digits, the same split every time.

    Args:
        batch_size: examples per batch.
        val_size: examples held out for validation (the test loader uses the same set).
        train_size: cap on training examples (``None``: every example not held out).
        seed: seed of the split.
        num_workers: ``DataLoader`` workers.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_size: int = 360,
        train_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_size = val_size
        self.train_size = train_size
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_size is not None:
            train_idx = train_idx[: self.train_size]
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None, "call setup() first"
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class DigitsClassifier(LightningModule):
    """The W&B guide's MNIST classifier sized for 8x8 digits: three linear layers.

    ``validation_step`` returns the predicted labels, as the guide's module does. It logs
    ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``.

    Args:
        hidden: width of the two hidden layers.
        lr: Adam learning rate.
        n_classes: number of classes.
    """

    def __init__(self, hidden: int = 64, lr: float = 1e-2, n_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer_1 = nn.Linear(64, hidden)
        self.layer_2 = nn.Linear(hidden, hidden)
        self.layer_3 = nn.Linear(hidden, n_classes)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        x = F.relu(self.layer_1(x))
        x = F.relu(self.layer_2(x))
        return self.layer_3(x)

    def _step(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(dim=1)
        acc = (preds == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=not on_step)
        self.log(f"{stage}_acc", acc, on_step=on_step, on_epoch=not on_step)
        return loss, preds

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")[1]

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")[1]

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
