"""WatchModel under 2-process DDP on CPU: rank 0 logs one set of histograms, nobody hangs.

Usage: python watch_ddp.py SAVE_DIR
"""

from __future__ import annotations

import sys

from _report import report


def main(save_dir: str) -> None:
    import wandb
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.demo import DigitsClassifier, DigitsDataModule
    from lw_callbacks.records import find_runs, read_run
    from lw_callbacks.watch import WatchModel

    class Probe(Callback):
        """Sees, on each rank, whether WatchModel would log and what it watches."""

        def __init__(self, watch: WatchModel) -> None:
            self.watch = watch
            self.has_run: list[bool] = []
            self.watched: list[str] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.has_run.append(self.watch.core.run is not None)
            self.watched = self.watch.watched_names

    watch = WatchModel(log="all", log_freq=2)
    probe = Probe(watch)
    trainer = Trainer(
        logger=WandbLogger(save_dir=save_dir, project="lw-tests"),
        callbacks=[watch, probe],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=6,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=save_dir,
    )
    model = DigitsClassifier()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    rank = trainer.global_rank
    data: dict = {
        "global_step": trainer.global_step,
        "has_run": probe.has_run,
        "watched": probe.watched,
        "param_names": [n for n, _ in model.named_parameters()],
    }
    if rank == 0:
        wandb.finish()
        runs = find_runs(save_dir)
        data["runs"] = [str(r) for r in runs]
        records = read_run(runs[0])
        data["series"] = {
            k: [step for step, _ in records.series(k)]
            for k in sorted(records.keys())
            if k.startswith(("gradients/", "parameters/"))
        }
    report(rank, **data)


if __name__ == "__main__":
    main(sys.argv[1])
