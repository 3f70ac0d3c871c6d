"""Timed under ``ddp`` with 2 CPU processes: what ``ShareRunDir.setup`` costs once the run exists.

usage: share_config_ddp.py ROUNDS   (set WANDB_SWEEP_PARAM_PATH for a sweep run)

Rank 0 prints one JSON line: median and max milliseconds, over ROUNDS alternating rounds, of
(A) one strategy broadcast of the run folder, id and name alone (what ShareRunDir sent before it
shared the config) and (B) a whole ``ShareRunDir.setup`` (describe on rank 0, pack the config, the
one broadcast, adopt on every rank). Run by ``bench_share_config.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from lw_callbacks import ShareRunDir
from lw_callbacks._wandb import run_of
from lw_callbacks.core.run_info import describe_run


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TimeIt(Callback):
    def __init__(self, share: ShareRunDir, rounds: int) -> None:
        self.share, self.rounds = share, rounds

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # after ShareRunDir's
        strategy = trainer.strategy
        old = None
        if trainer.global_rank == 0:
            info = describe_run(run_of(trainer.logger, 0), trainer.logger)
            old = {k: v for k, v in (info or {}).items() if k not in ("config", "sweep_keys")}
        a, b = [], []
        for i in range(self.rounds):
            for arm in ("ab" if i % 2 == 0 else "ba"):
                strategy.barrier()
                start = time.perf_counter()
                if arm == "a":
                    strategy.broadcast(old, src=0)
                else:
                    self.share.setup(trainer, pl_module, stage)
                elapsed = time.perf_counter() - start
                # the slowest rank's time: a collective costs what its last rank waits
                elapsed = float(strategy.reduce(torch.tensor(elapsed), reduce_op="max"))
                (a if arm == "a" else b).append(elapsed * 1000)
        if trainer.global_rank == 0:
            print(json.dumps({
                "config": self.share.config,
                "a_median_ms": statistics.median(a), "a_max_ms": max(a),
                "b_median_ms": statistics.median(b), "b_max_ms": max(b),
                "ratios": [y / x for x, y in zip(a, b, strict=True)],
            }), flush=True)


def main() -> None:
    rounds = int(sys.argv[1])
    share = ShareRunDir(apply_config_to_hparams=False)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=1, limit_train_batches=1,
        logger=WandbLogger(project="lw-bench", save_dir=os.path.abspath(".")),
        callbacks=[share, TimeIt(share, rounds)], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer.fit(Tiny(), train_dataloaders=data)


if __name__ == "__main__":
    main()
