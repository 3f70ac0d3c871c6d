"""shared_run_config under a plain env:// launch (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the
launcher, as SLURM jobs and hand-written launchers do; no torchrun agent store): rank 0 hosts the
rendezvous store, then the process group binds the same port.

usage: run_config_env.py PORT   (starts its 2 ranks itself; each rank reports)
"""

from __future__ import annotations

import os
import subprocess
import sys


def rank_main() -> None:
    import torch.distributed as dist
    from _report import report
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks.run_dir import shared_run_config

    logger = WandbLogger(project="lw-tests", save_dir=os.path.abspath("runs"), config={"lr": 0.01, "hidden": 64})
    config = shared_run_config(logger, timeout=60)
    dist.init_process_group("gloo")  # env://: binds MASTER_PORT again, after the rendezvous store closed
    gathered: list = [None, None]
    dist.all_gather_object(gathered, config)
    dist.destroy_process_group()
    report(int(os.environ["RANK"]), config=config, gathered=gathered)


def main() -> None:
    port = sys.argv[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   LOCAL_RANK="0")
        procs.append(subprocess.Popen([sys.executable, __file__, "rank"], env=env))
    codes = [p.wait(timeout=150) for p in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    if sys.argv[1:] == ["rank"]:
        rank_main()
    else:
        main()
