"""Every lw_callbacks feature in a Lightning Fabric loop, one line each, with wandb's Fabric logger.

Runs offline by default (no account needed) on scikit-learn's digits; ``--fast`` (or
``LW_EXAMPLE_FAST=1``) trains for a few batches only. ``--devices 2`` runs it under ddp on the CPU.

    python examples/fabric_digits.py [--fast] [--epochs N] [--devices N]
"""

from __future__ import annotations

import argparse
import os

import lightning as L
import torch
import torch.nn.functional as F
import wandb
from wandb.integration.lightning.fabric import WandbLogger

from lw_callbacks.demo import CLASS_NAMES, DigitsClassifier, load_digits_tensors, offline_unless_logged_in
from lw_callbacks.fabric import (
    FabricMetricSummaries,
    FabricPredictionSamples,
    FabricShareRunDir,
    FabricUploadCheckpoints,
    FabricWatchModel,
    restore_checkpoint,
)
from lw_callbacks.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("LW_EXAMPLE_FAST") == "1")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    epochs = args.epochs or (2 if args.fast else 10)
    mode = offline_unless_logged_in()

    share = FabricShareRunDir()
    upload = FabricUploadCheckpoints(monitor="val_acc", mode="max")
    fabric = L.Fabric(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        loggers=[WandbLogger(project="lw-callbacks-examples", save_dir=os.path.abspath("."))],
        callbacks=[
            FabricPredictionSamples(num_samples=16, class_names=CLASS_NAMES),
            FabricMetricSummaries({"val_acc": "max", "train/loss": ["min", "last"]}),
            FabricWatchModel(log="all", log_freq=5),
            upload,
            share,
        ],
    )
    fabric.launch()
    fabric.seed_everything(0)
    fabric.call("share_run_dir", fabric)  # rank 0's run folder on every rank
    fabric.call("define_summaries", fabric)  # val_acc: max, train/loss: min and last

    images, labels = load_digits_tensors()
    x_train, y_train, x_val, y_val = images[:1400], labels[:1400], images[1400:], labels[1400:]
    if args.fast:
        x_train, y_train = x_train[:256], y_train[:256]
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("watch", fabric, model, optimizer)  # histograms every 5 optimizer steps

    assert share.run_dir is not None
    ckpt_dir = share.run_dir / "checkpoints"
    step = 0
    shard = slice(fabric.global_rank, None, fabric.world_size)
    for epoch in range(epochs):
        model.train()
        for i in range(0, len(x_train[shard]), 64):
            loss = F.cross_entropy(model(x_train[shard][i:i + 64]), y_train[shard][i:i + 64])
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            fabric.log_dict({"train/loss": loss.item()}, step=step)
            fabric.call("observe_metrics", fabric, {"train/loss": loss.item()}, step=step, epoch=epoch)
            step += 1
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        val_acc = (logits.argmax(1) == y_val).float().mean().item()
        fabric.log_dict({"val_acc": val_acc}, step=step)
        fabric.call("observe_metrics", fabric, {"val_acc": val_acc}, step=step, epoch=epoch)
        fabric.call("log_prediction_samples", fabric, (x_val, y_val), logits, step=step)
        path = ckpt_dir / f"epoch{epoch}.ckpt"
        fabric.save(path, {"model": model, "optimizer": optimizer, "epoch": epoch})
        fabric.call("upload_checkpoint", fabric, path, step=step, epoch=epoch, score=val_acc)
        fabric.print(f"epoch {epoch}: val_acc {val_acc:.3f}")
    fabric.call("training_done", fabric)  # flush uploads, unwatch, write best steps

    best = restore_checkpoint(f"{upload.collection_name}:best")
    state = fabric.load(best, {"model": model})
    fabric.print(f"restored {upload.collection_name}:best (epoch {state['epoch']}) from {best}")
    if fabric.global_rank == 0:
        run_dir = share.run_dir
        wandb.finish()
        if mode == "offline":
            run = read_run(run_dir)
            logged = sorted(run.keys())
            shown = [k for k in logged if not k.startswith(("gradients/", "parameters/"))]
            fabric.print(f"logged: {shown} and {len(logged) - len(shown)} histogram keys")
            best_step = run.summary.get("val_acc.best_step")
            fabric.print(f"summary val_acc: {run.summary.get('val_acc')}, best step {best_step}")
            fabric.print(f"upload with: wandb sync {run_dir}")


if __name__ == "__main__":
    main()
