"""LightningCLI with every callback configured in YAML (``examples/config.yaml``).

    python examples/cli.py fit --config examples/config.yaml
    python examples/cli.py                     # the same, with that config

Offline unless you are logged in to W&B or set ``WANDB_MODE=online``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lw_callbacks.demo import offline_unless_logged_in

CONFIG = Path(__file__).with_name("config.yaml")


def main() -> None:
    offline_unless_logged_in()
    args = sys.argv[1:] or ["fit", "--config", str(CONFIG)]
    if os.environ.get("LW_EXAMPLE_FAST") == "1":
        args += ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5"]
    LightningCLI(args=args, save_config_callback=None)


if __name__ == "__main__":
    main()
