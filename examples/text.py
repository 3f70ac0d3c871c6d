"""Text samples: words as token ids, shown as text through the tokenizer's ``decode``.

A tiny character-level classifier learns which words name a fruit, an animal or something else.
The batches hold token ids; ``LogPredictionSamples(decode=tokenizer.decode)`` puts each sample's
text in the inputs table's ``text`` column (once), and each epoch's table holds the ground truth,
the prediction and the class scores. From LightningCLI YAML, ``decode`` is the dotted import path of
the tokenizer's ``decode`` (e.g. ``my_project.data.tokenizer.decode``). Offline by default;
``--online`` logs to W&B, ``--fast`` (or ``LW_EXAMPLE_FAST=1``) runs fewer epochs.

    python examples/text.py [--fast] [--online] [--epochs N]
"""

from __future__ import annotations

import argparse
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

FRUIT = ["apple", "lemon", "grape", "melon", "mango", "peach", "cherry", "banana", "plum", "kiwi"]
ANIMALS = ["tiger", "eagle", "zebra", "horse", "otter", "camel", "panda", "shark", "whale", "koala"]
OTHER = ["river", "stone", "cloud", "piano", "house", "chair", "table", "paper", "glass", "train"]
CLASSES = ["other", "fruit", "animal"]


class CharTokenizer:
    """One id per letter, 0 pads: ``encode("kiwi")``, ``decode([11, 9, 23, 9, 0, 0])``."""

    letters = "_abcdefghijklmnopqrstuvwxyz"

    def encode(self, word: str, length: int = 8) -> list[int]:
        return [self.letters.index(c) for c in word] + [0] * (length - len(word))

    def decode(self, ids: list[int]) -> str:
        return "".join(self.letters[i] for i in ids if i)


tokenizer = CharTokenizer()


class WordClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(len(CharTokenizer.letters), 16, padding_idx=0)
        self.out = nn.Linear(16, len(CLASSES))

    def forward(self, ids: Tensor) -> Tensor:
        return self.out(self.emb(ids))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["input_ids"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch["input_ids"])  # logits: the callback reads predictions and class scores

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--online", action="store_true", help="log to W&B instead of offline")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.fast else 30)

    words = [(w, c) for c, group in enumerate([OTHER, FRUIT, ANIMALS]) for w in group]
    data = [{"input_ids": torch.tensor(tokenizer.encode(w)), "label": c} for w, c in words]
    logger = WandbLogger(project="lw-callbacks-examples", save_dir=".", offline=not args.online)
    trainer = Trainer(
        logger=logger,
        callbacks=[LogPredictionSamples(num_samples=6, decode=tokenizer.decode, class_names=CLASSES, key="words")],
        max_epochs=epochs,
        check_val_every_n_epoch=max(1, epochs // 3),
        accelerator="cpu",
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(WordClassifier(), DataLoader(data, batch_size=10, shuffle=True), DataLoader(data, batch_size=10))
    run_dir = logger.experiment.settings.sync_dir
    wandb.finish()

    records = read_run(run_dir)  # what the run recorded, read back from its own log
    print(f"text samples logged in {run_dir}:")
    (inputs,) = records.tables("words/inputs")
    print(f"  inputs table (once): {[row['text'] for row in inputs.rows]}")
    for table in records.tables("words/table"):
        right = sum(row["ground truth"] == row["prediction"] for row in table.rows)
        print(f"  epoch table: {right}/{len(table.rows)} right, e.g. {table.rows[-1]['prediction']!r}")


if __name__ == "__main__":
    main()
