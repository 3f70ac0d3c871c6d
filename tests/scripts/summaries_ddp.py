"""MetricSummaries under 2-process DDP on CPU: rank 1 must run through every hook without error."""

from __future__ import annotations

import os
import warnings

import wandb
from _report import report
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
from lw_callbacks.records import find_runs, read_run
from lw_callbacks.summaries import MetricSummaries

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    os.makedirs("runs", exist_ok=True)
    summaries = MetricSummaries({"val_loss": "min", "train_*": "min"})
    trainer = Trainer(
        logger=WandbLogger(project="lw-tests", save_dir="runs"),
        callbacks=[ModelCheckpoint(monitor="val_acc", mode="max", dirpath="ckpt"), summaries],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule(batch_size=16))
    rank = trainer.global_rank
    data: dict = {"finished": True, "best": summaries.state_dict()["best"]}
    if rank == 0:
        wandb.finish()
        records = read_run(find_runs("runs")[0])
        data.update(
            summary={k: v for k, v in records.summary.items() if not k.startswith("_")},
            metrics={m.key: [sorted(m.summary), m.step_metric, m.step_sync] for m in records.metrics},
            series={k: records.series(k) for k in ("val_acc", "val_loss", "train_loss")},
        )
    report(rank, **data)
