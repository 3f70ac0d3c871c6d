"""Every Fabric entry point in one small Fabric loop; each rank reports what it saw.

usage: fabric_all.py DEVICES LOGGER SAVE_DIR   (LOGGER: fabric | lightning | pytorch_lightning; the last runs
the standalone packages: a `lightning_fabric.Fabric` with a `pytorch_lightning` WandbLogger)
Also imported by tests/test_fabric.py to run the same loop in-process with one device.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lw_callbacks.demo import DigitsClassifier, load_digits_tensors
from lw_callbacks.fabric import (
    FabricMetricSummaries,
    FabricPredictionSamples,
    FabricShareRunDir,
    FabricUploadCheckpoints,
    FabricWatchModel,
    restore_checkpoint,
)


def make_logger(kind: str, save_dir: str) -> Any:
    os.makedirs(save_dir, exist_ok=True)
    if kind == "fabric":
        from wandb.integration.lightning.fabric import WandbLogger

        return WandbLogger(project="lw-tests", save_dir=save_dir)
    if kind == "pytorch_lightning":
        from pytorch_lightning.loggers import WandbLogger as StandaloneWandbLogger

        return StandaloneWandbLogger(project="lw-tests", save_dir=save_dir)
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    return LightningWandbLogger(project="lw-tests", save_dir=save_dir)


def train(devices: int, kind: str, save_dir: str, epochs: int = 3) -> dict[str, Any]:
    share = FabricShareRunDir()
    upload = FabricUploadCheckpoints(monitor="val_acc", mode="max", aliases=["fabric"])
    watch = FabricWatchModel(log="all", log_freq=2, log_graph=True)
    callbacks = [FabricPredictionSamples(num_samples=6, class_names=[str(i) for i in range(10)]),
                 FabricMetricSummaries({"val_acc": "max", "train/*": ["mean", "last"]}), watch, upload, share]
    if kind == "pytorch_lightning":
        import lightning_fabric

        fabric_class: Any = lightning_fabric.Fabric
    else:
        fabric_class = L.Fabric
    fabric = fabric_class(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                      loggers=[make_logger(kind, os.path.abspath(save_dir))], callbacks=callbacks)
    fabric.launch()
    fabric.seed_everything(0)
    run_dir = fabric.call("share_run_dir", fabric) or share.run_dir
    fabric.call("define_summaries", fabric)

    x, y = load_digits_tensors()
    x_train, y_train, x_val, y_val = x[:512], y[:512], x[1500:1564], y[1500:1564]
    hparams = {"hidden": 64, "lr": 1e-2, **share.config}  # a sweep's values, on every rank
    model = DigitsClassifier(hidden=hparams["hidden"])
    optimizer = torch.optim.Adam(model.parameters(), lr=hparams["lr"])
    trains_with = {"lr": optimizer.param_groups[0]["lr"], "hidden": model.layer_1.out_features,
                   "parameters": sum(p.numel() for p in model.parameters())}
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("watch", fabric, model, optimizer)
    watched = list(watch.watched_names)
    step = 0
    scores = []
    ckpt_dir = os.path.join(str(share.run_dir), "checkpoints")
    for epoch in range(epochs):
        model.train()
        shard = slice(fabric.global_rank, None, fabric.world_size)
        for i in range(0, len(x_train[shard]), 128):
            xb, yb = x_train[shard][i:i + 128], y_train[shard][i:i + 128]
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            metrics = {"train/loss": loss.item()}
            fabric.log_dict(metrics, step=step)
            fabric.call("observe_metrics", fabric, metrics, step=step, epoch=epoch)
            step += 1
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        acc = (logits.argmax(1) == y_val).float().mean().item()
        scores.append(acc)
        fabric.log_dict({"val_acc": acc}, step=step)
        fabric.call("observe_metrics", fabric, {"val_acc": acc}, step=step, epoch=epoch)
        fabric.call("log_prediction_samples", fabric, (x_val, y_val), logits, step=step)
        path = os.path.join(ckpt_dir, f"epoch{epoch}.ckpt")
        fabric.save(path, {"model": model, "optimizer": optimizer, "epoch": epoch})
        fabric.call("upload_checkpoint", fabric, path, step=step, epoch=epoch, score=acc, metadata={"lr": 1e-2})
    fabric.call("training_done", fabric)
    restored = restore_checkpoint(f"{upload.collection_name}:best", timeout=60)
    state = {"model": model, "optimizer": optimizer}
    remainder = fabric.load(restored, state)
    return {
        "rank": fabric.global_rank,
        "world_size": fabric.world_size,
        "run_dir": str(run_dir),
        "share_run_dir": str(share.run_dir),
        "run_id": share.run_id,
        "wandb_dir_env": os.environ.get("WANDB_DIR"),
        "collection": upload.collection_name,
        "restored": str(restored),
        "restored_epoch": remainder.get("epoch"),
        "scores": scores,
        "watched": watched,
        "hooks_left": len(optimizer.optimizer._optimizer_step_pre_hooks),
        "config": share.config,
        "trains_with": trains_with,
    }


def main() -> None:
    from _report import report

    devices, kind, save_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    data = train(devices, kind, save_dir)
    report(data.pop("rank"), **data)


if __name__ == "__main__":
    main()
