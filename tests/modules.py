"""LightningModules written the way users write them, for the tests of every callback, in both namespaces.

Each class here is plain user code (no import of this package's callbacks, no ``wandb``). Tests take
them from :func:`of`, which gives this module as written (``lightning.pytorch``) or its twin for the
standalone ``pytorch_lightning`` package: the same source compiled with the other package's imports
(``lightning.pytorch`` -> ``pytorch_lightning``, ``lightning.fabric`` -> ``lightning_fabric``, and
``lw_callbacks.demo`` twinned the same way), so a ``pytorch_lightning`` Trainer gets modules it accepts.
:func:`api` gives the Trainer-side classes of a namespace (``Trainer``, ``ModelCheckpoint``,
``WandbLogger``, ...), so a test is written once and parametrized over :data:`NAMESPACES`.

Add a module by writing a class below; keep it tiny (the digits model, a few batches).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lw_callbacks import demo_tasks  # a plain Dataset (Shapes): the same in both namespaces, never twinned
from lw_callbacks.demo import DigitsClassifier, DigitsDataModule

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")

__all__ = [
    "NAMESPACES",
    "DictBatches",
    "DictOutputs",
    "EpochEndMetrics",
    "LitAutoEncoder",
    "LitAutoEncoderWithPredictStep",
    "LogDictTorchmetrics",
    "ManualTwoOptimizers",
    "OnStepOnEpoch",
    "PerStepGAN",
    "SlashNames",
    "Tunable",
    "TwoValLoaders",
    "TwoValModel",
    "TwoValOnStepOnEpoch",
    "UNetLike",
    "UNetLikeReturnsLogits",
    "VoidShapes",
    "VoidShapesData",
    "api",
    "of",
    "reconstruct",
]


# ---------------------------------------------------------------------- batch and output shapes
class DictBatches(DigitsDataModule):
    """Batches as dicts ``{"image": x, "label": y}``."""

    @staticmethod
    def _collate(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        return {"image": torch.stack([x for x, _ in items]), "label": torch.stack([y for _, y in items])}

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=self._collate)


class DictOutputs(DigitsClassifier):
    """Dict batches in, dict step outputs out (``{"loss", "logits"}``)."""

    def _dict_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=stage != "train")
        self.log(f"{stage}_acc", (logits.argmax(1) == batch["label"]).float().mean(), on_epoch=stage != "train")
        return {"loss": loss, "logits": logits.detach()}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self._dict_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return self._dict_step(batch, "val")


class TwoValModel(DigitsClassifier):
    """Two validation dataloaders: Lightning adds ``/dataloader_idx_N`` to the keys."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "val")[1]


class TwoValLoaders(DigitsDataModule):
    def val_dataloader(self) -> list[DataLoader]:  # type: ignore[override]
        return [super().val_dataloader(), super().val_dataloader()]


class ManualTwoOptimizers(DigitsClassifier):
    """Manual optimization with two optimizers: ``trainer.global_step`` grows by 2 per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt_a, opt_b = self.optimizers()  # type: ignore[misc]
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        opt_a.zero_grad()
        opt_b.zero_grad()
        self.manual_backward(loss)
        opt_a.step()
        opt_b.step()
        return loss

    def configure_optimizers(self) -> Any:
        first = list(self.layer_1.parameters())
        rest = [p for n, p in self.named_parameters() if not n.startswith("layer_1.")]
        return torch.optim.SGD(first, lr=0.05), torch.optim.SGD(rest, lr=0.05)


class EpochEndMetrics(DigitsClassifier):
    """Logs from ``on_train_epoch_end`` and ``on_validation_epoch_end``, as many modules do."""

    def on_train_epoch_end(self) -> None:
        self.log("train_epoch_score", float(self.current_epoch % 2) + 0.5 * self.current_epoch)

    def on_validation_epoch_end(self) -> None:
        self.log("val_epoch_score", torch.tensor(float(self.current_epoch)))


class Tunable(DigitsClassifier):
    """What ``Tuner.lr_find`` / ``scale_batch_size`` need: ``lr`` and ``batch_size`` attributes."""


# ---------------------------------------------------------------------- logging styles
class OnStepOnEpoch(DigitsClassifier):
    """Every metric logged with ``on_step=True, on_epoch=True`` (Lightning's image-classifier example):
    W&B receives ``<name>_step`` and ``<name>_epoch``, ``callback_metrics`` hold ``<name>``."""

    def _step(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(dim=1)
        self.log(f"{stage}_loss", loss, on_step=True, on_epoch=True)
        self.log(f"{stage}_acc", (preds == y).float().mean(), on_step=True, on_epoch=True)
        return loss, preds


class TwoValOnStepOnEpoch(OnStepOnEpoch):
    """``on_step`` and ``on_epoch`` with two validation dataloaders: W&B receives
    ``val_loss_epoch/dataloader_idx_0``, ``callback_metrics`` hold ``val_loss/dataloader_idx_0``."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "val")[1]


class LogDictTorchmetrics(DigitsClassifier):
    """``self.log_dict`` of torchmetrics ``Metric`` objects (Lightning computes and resets them)."""

    def __init__(self) -> None:
        super().__init__()
        import torchmetrics

        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
        self.val_loss = torchmetrics.MeanMetric()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train_loss": loss, "train_acc": self.train_acc}, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_loss(F.cross_entropy(logits, y))
        self.log_dict({"val_acc": self.val_acc, "val_loss": self.val_loss}, on_epoch=True, sync_dist=True)
        return logits.argmax(dim=1)


class SlashNames(DigitsClassifier):
    """Slash-separated names (``train/loss``, ``val/acc``): W&B groups them into sections."""

    def _step(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        preds = logits.argmax(dim=1)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step)
        self.log(f"{stage}/acc", (preds == y).float().mean(), on_step=on_step, on_epoch=not on_step)
        return loss, preds


class PerStepGAN(LightningModule):
    """A GAN's shape (an auxiliary-classifier GAN on the digits): manual optimization, a generator and a
    discriminator with one optimizer each, ``g_loss`` and ``d_loss`` logged on every step
    (``trainer.global_step`` grows by 2 per batch). The discriminator's auxiliary head classifies the
    digit; ``validation_step`` returns its logits on real images and logs its accuracy ``val_class_acc``."""

    def __init__(self, latent: int = 16) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())
        self.disc_body = nn.Sequential(nn.Linear(64, 32), nn.LeakyReLU(0.2))
        self.disc_real = nn.Linear(32, 1)
        self.disc_class = nn.Linear(32, 10)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z).reshape(-1, 1, 8, 8)

    def _discriminate(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        features = self.disc_body(flat)
        return self.disc_real(features), self.disc_class(features)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, labels = batch
        real = real.reshape(real.shape[0], -1)
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        fake = self.generator(torch.randn(real.shape[0], self.latent))
        ones = torch.ones(real.shape[0], 1)
        g_loss = F.binary_cross_entropy_with_logits(self._discriminate(fake)[0], ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        real_score, real_class = self._discriminate(real)
        fake_score = self._discriminate(fake.detach())[0]
        d_loss = (F.binary_cross_entropy_with_logits(real_score, ones)
                  + F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(ones))) / 2
        d_loss = d_loss + F.cross_entropy(real_class, labels)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self._discriminate(x.reshape(x.shape[0], -1))[1]
        self.log("val_class_acc", (logits.argmax(1) == y).float().mean())
        return logits

    def configure_optimizers(self) -> Any:
        discriminator = [*self.disc_body.parameters(), *self.disc_real.parameters(), *self.disc_class.parameters()]
        return torch.optim.Adam(self.generator.parameters(), lr=2e-3), torch.optim.Adam(discriminator, lr=2e-3)


# ---------------------------------------------------------------------- namespaces

# ---------------------------------------------------------------------- prediction samples
def reconstruct(module: Any, batch: Any) -> Tensor:
    """``LogPredictionSamples(predict=...)`` for :class:`LitAutoEncoder`: the step's own flattening, then
    ``forward``."""
    x, _ = batch
    out: Tensor = module(x.view(x.size(0), -1))
    return out


class LitAutoEncoder(LightningModule):
    """Shaped like Lightning's ``examples/pytorch/basics/autoencoder.py`` (8x8 digits instead of MNIST):
    the step flattens the batch before ``forward``, ``validation_step`` returns nothing, and (unlike the
    example) no ``predict_step``: ``forward`` cannot take the raw batch."""

    def __init__(self, hidden_dim: int = 32, learning_rate: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer_1 = nn.Linear(8 * 8, hidden_dim)  # named first: the gradient checks read layer_1.weight
        self.encoder = nn.Sequential(self.layer_1, nn.ReLU(), nn.Linear(hidden_dim, 3))
        self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 8 * 8))

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)
        out: Tensor = self.decoder(z)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._common_step(batch, batch_idx, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._common_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._common_step(batch, batch_idx, "test")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

    def _prepare_batch(self, batch: Any) -> Tensor:
        x, _ = batch
        return x.view(x.size(0), -1)

    def _common_step(self, batch: Any, batch_idx: int, stage: str) -> Tensor:
        x = self._prepare_batch(batch)
        loss = F.mse_loss(x, self(x))
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=stage != "train")
        return loss


class LitAutoEncoderWithPredictStep(LitAutoEncoder):
    """With the example's own ``predict_step``."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int | None = None) -> Tensor:
        x = self._prepare_batch(batch)
        out: Tensor = self(x)
        return out


VOID = 250  # the masks' label of unlabelled pixels, as in Lightning's semantic-segmentation example


class VoidShapes(demo_tasks.Shapes):
    """:class:`~lw_callbacks.demo_tasks.Shapes` masks with a 2-pixel border of void pixels (label 250)."""

    def mask(self, i: int) -> Tensor:
        mask = super().mask(i)
        mask[:2, :] = VOID
        mask[-2:, :] = VOID
        mask[:, :2] = VOID
        mask[:, -2:] = VOID
        return mask


class VoidShapesData(LightningDataModule):
    """:class:`VoidShapes` 16x16 images: 96 to train on, 64 to evaluate (unshuffled)."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(VoidShapes(96, size=16, seed=1), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(VoidShapes(64, size=16), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class UNetLike(LightningModule):
    """An encoder-decoder with one skip connection (per-pixel logits ``(N, 3, H, W)``), written like
    Lightning's semantic-segmentation example: its loss ignores the void label
    (``nn.CrossEntropyLoss(ignore_index=250)``) and ``validation_step`` returns nothing."""

    returns_logits = False

    def __init__(self, num_classes: int = 3, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.layer_1 = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(16, num_classes, 1)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=VOID)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.layer_1(x))
        b = F.relu(self.down(a))
        out: Tensor = self.head(torch.cat([a, F.relu(self.up(b))], dim=1))
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, mask = batch
        loss: Tensor = self.loss_fn(self(x), mask)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, mask = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, mask))
        valid = mask != VOID
        self.log("val_acc", (logits.argmax(dim=1) == mask)[valid].float().mean())
        return logits if self.returns_logits else None

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class UNetLikeReturnsLogits(UNetLike):
    """The same, its ``validation_step`` returning the logits."""

    returns_logits = True


_RENAMES = (
    ("lightning.pytorch", "pytorch_lightning"),
    ("lightning.fabric", "lightning_fabric"),
)


def _twin(name: str, path: Path, namespace: str, extra: tuple[tuple[str, str], ...] = ()) -> types.ModuleType:
    """Compile ``path``'s source as module ``name`` with the imports of ``namespace``'s packages."""
    if name in sys.modules:
        return sys.modules[name]
    source = path.read_text()
    if namespace == "pytorch_lightning":
        for old, new in (*_RENAMES, *extra):
            source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickle look classes up there
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def of(namespace: str = "lightning.pytorch") -> Any:
    """This module for ``namespace``: itself for ``"lightning.pytorch"``, its twin for ``"pytorch_lightning"``
    (with ``.DigitsClassifier`` and ``.DigitsDataModule`` of the twin of ``lw_callbacks.demo``)."""
    if namespace not in NAMESPACES:
        raise ValueError(f"namespace must be one of {NAMESPACES}, got {namespace!r}")
    if namespace == "lightning.pytorch":
        return sys.modules[__name__]
    demo = importlib.import_module("lw_callbacks.demo")
    assert demo.__file__ is not None
    twin_demo = "_twin_pytorch_lightning_demo"
    _twin(twin_demo, Path(demo.__file__), namespace)
    return _twin("_twin_pytorch_lightning_modules", Path(__file__), namespace, (("lw_callbacks.demo", twin_demo),))


def api(namespace: str = "lightning.pytorch") -> Any:
    """The Trainer-side classes of ``namespace`` as attributes: ``Trainer``, ``LightningModule``,
    ``Callback``, ``ModelCheckpoint``, ``EarlyStopping``, ``LearningRateMonitor``, ``RichProgressBar``,
    ``StochasticWeightAveraging``, ``WandbLogger``, ``CSVLogger``, ``Tuner``, and ``name`` (the namespace)."""
    if namespace not in NAMESPACES:
        raise ValueError(f"namespace must be one of {NAMESPACES}, got {namespace!r}")
    root = importlib.import_module(namespace)
    callbacks = importlib.import_module(f"{namespace}.callbacks")
    loggers = importlib.import_module(f"{namespace}.loggers")
    tuner = importlib.import_module(f"{namespace}.tuner")
    return types.SimpleNamespace(
        name=namespace,
        Trainer=root.Trainer,
        LightningModule=root.LightningModule,
        Callback=root.Callback,
        ModelCheckpoint=callbacks.ModelCheckpoint,
        EarlyStopping=callbacks.EarlyStopping,
        LearningRateMonitor=callbacks.LearningRateMonitor,
        RichProgressBar=callbacks.RichProgressBar,
        StochasticWeightAveraging=callbacks.StochasticWeightAveraging,
        WandbLogger=loggers.WandbLogger,
        CSVLogger=loggers.CSVLogger,
        Tuner=tuner.Tuner,
    )
