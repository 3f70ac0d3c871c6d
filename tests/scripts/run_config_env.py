"""shared_run_config under a plain env:// launch (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by the
launcher, as SLURM jobs and hand-written launchers do; no torchrun agent store): rank 0 hosts the
rendezvous store, then the process group binds the same port.

usage: run_config_env.py PORT [slow]   (starts its 2 ranks itself; each rank reports). ``slow``: rank 0
takes 3 s between every rank's having read the config and closing its store (a fault: a descheduled
rank 0), in which rank 1 is already on its way to the process group's rendezvous on the same port.
"""

from __future__ import annotations

import os
import subprocess
import sys


def rank_main(slow: bool) -> None:
    import time
    from datetime import timedelta

    import torch.distributed as dist
    from _report import report
    from lightning.pytorch.loggers import WandbLogger

    from lw_callbacks import run_dir
    from lw_callbacks.run_dir import shared_run_config

    if slow and os.environ["RANK"] == "0":
        unpack = run_dir.unpack_config

        def late(*args, **kwargs):  # rank 0 runs it after every rank read, before its store closes
            time.sleep(3)
            return unpack(*args, **kwargs)

        run_dir.unpack_config = late

    logger = WandbLogger(project="lw-tests", save_dir=os.path.abspath("runs"), config={"lr": 0.01, "hidden": 64})
    config = shared_run_config(logger, timeout=60)
    # env://: binds MASTER_PORT again, after the rendezvous store closed
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
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
        procs.append(subprocess.Popen([sys.executable, __file__, "rank", *sys.argv[2:]], env=env))
    codes = [p.wait(timeout=150) for p in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    if sys.argv[1] == "rank":
        rank_main(sys.argv[2:] == ["slow"])
    else:
        main()
