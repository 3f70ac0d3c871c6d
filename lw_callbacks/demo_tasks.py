"""Small synthetic data and models for the segmentation and detection examples: no download, CPU-fast.

Each image of :class:`Shapes` holds one disc (class 1) and one square (class 2) on a noisy
background (class 0), placed from the index, so an example's masks and boxes are known exactly and
the data set holds nothing in memory (examples are drawn when asked for).

Example::

    from torch.utils.data import DataLoader
    from lw_callbacks.demo_tasks import Shapes, ShapesSegmenter

    loader = DataLoader(Shapes(256, mode="segmentation"), batch_size=32)
    Trainer(max_epochs=2).fit(ShapesSegmenter(), loader, loader)
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

__all__ = ["SHAPE_NAMES", "Shapes", "ShapesDetector", "ShapesSegmenter", "detection_collate"]

SHAPE_NAMES = ["background", "disc", "square"]
_TARGET_OF = {"segmentation": "mask", "detection": "boxes"}  # mode -> the method giving an example's target


class Shapes(Dataset):
    """``n`` RGB float images ``(3, size, size)`` with a disc and a square, drawn from the index.

    ``mode="segmentation"`` yields ``(image, mask)`` with ``mask`` ``(size, size)`` int64 class ids;
    ``mode="detection"`` yields ``(image, {"boxes": (2, 4) xyxy pixels, "labels": (2,)})``.
    """

    def __init__(self, n: int, size: int = 32, mode: str = "segmentation", seed: int = 0) -> None:
        if mode not in _TARGET_OF:
            raise ValueError(f"Shapes(mode={mode!r}): mode is 'segmentation' or 'detection'.")
        self.n, self.size, self.mode, self.seed = n, size, mode, seed

    def __len__(self) -> int:
        return self.n

    def layout(self, i: int) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
        """``(cx, cy, r)`` of the disc and ``(x0, y0, w, h)`` of the square of example ``i``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        s = self.size
        r = int(torch.randint(s // 10, s // 6 + 1, (1,), generator=g))
        cx = int(torch.randint(r, s // 2 - r, (1,), generator=g))
        cy = int(torch.randint(r, s - r, (1,), generator=g))
        w, h = (int(v) for v in torch.randint(s // 6, s // 3, (2,), generator=g))
        x0 = int(torch.randint(s // 2, s - w, (1,), generator=g))
        y0 = int(torch.randint(0, s - h, (1,), generator=g))
        return (cx, cy, r), (x0, y0, w, h)

    def mask(self, i: int) -> Tensor:
        (cx, cy, r), (x0, y0, w, h) = self.layout(i)
        s = self.size
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        mask = torch.zeros(s, s, dtype=torch.long)
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1
        mask[y0 : y0 + h, x0 : x0 + w] = 2
        return mask

    def boxes(self, i: int) -> dict[str, Tensor]:
        (cx, cy, r), (x0, y0, w, h) = self.layout(i)
        xyxy = [[cx - r, cy - r, cx + r + 1, cy + r + 1], [x0, y0, x0 + w, y0 + h]]
        return {"boxes": torch.tensor(xyxy, dtype=torch.float32), "labels": torch.tensor([1, 2])}

    def __getitem__(self, i: int) -> tuple[Tensor, Any]:
        mask = self.mask(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        noise = 0.15 * torch.rand(3, self.size, self.size, generator=g)
        image = torch.stack([(mask == 1).float() * 0.8, (mask == 2).float() * 0.7, 0.2 + 0.3 * (mask > 0).float()])
        image = (image + noise).clamp(0, 1)
        target = mask if _TARGET_OF[self.mode] == "mask" else self.boxes(i)
        return image, target


def detection_collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Images stacked ``(N, 3, H, W)``, targets kept as a list of dicts (torchvision style)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]


class ShapesSegmenter(LightningModule):
    """Two conv layers giving per-pixel logits ``(N, 3, H, W)``; ``validation_step`` returns them."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, mask = batch
        loss = F.cross_entropy(self(x), mask)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, mask = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, mask))
        return logits

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ShapesDetector(ShapesSegmenter):
    """A detector on top of the segmenter: for each class, the box around the pixels it assigns to
    that class, scored by their mean probability; returns torchvision-style ``boxes`` / ``labels`` /
    ``scores`` dicts. Trained on masks drawn from the target boxes."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, targets = batch
        loss = F.cross_entropy(self(x), _boxes_to_masks(targets, x.shape[-2:]))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> list[dict[str, Tensor]]:  # type: ignore[override]
        x, targets = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, _boxes_to_masks(targets, x.shape[-2:])))
        return _detect(logits)


def _boxes_to_masks(targets: list[dict[str, Tensor]], hw: Any) -> Tensor:
    masks = torch.zeros(len(targets), int(hw[0]), int(hw[1]), dtype=torch.long)
    for m, t in zip(masks, targets, strict=True):
        for (x0, y0, x1, y1), label in zip(t["boxes"].long().tolist(), t["labels"].tolist(), strict=True):
            m[y0:y1, x0:x1] = label
    return masks


def _detect(logits: Tensor) -> list[dict[str, Tensor]]:
    probs = logits.detach().softmax(dim=1)
    ids = probs.argmax(dim=1)
    out = []
    for p, m in zip(probs, ids, strict=True):
        boxes, labels, scores = [], [], []
        for c in range(1, p.shape[0]):
            ys, xs = torch.nonzero(m == c, as_tuple=True)
            if len(xs):
                boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
                labels.append(c)
                scores.append(float(p[c][m == c].mean()))
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.long),
                "scores": torch.tensor(scores, dtype=torch.float32),
            }
        )
    return out
