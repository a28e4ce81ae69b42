"""Helpers of the Slurm tests; the ones every area uses live in tests/testlib.py."""

from __future__ import annotations

import subprocess

from testlib import CPU_CONFIG, REPO

CLUSTER = REPO / "tests" / "cluster" / "slurm.sh"
# A seconds-long model; the real trainer, the real data pipeline.
TINY = ["-c", str(CPU_CONFIG), "-o", "Model.width=4", "-o", "Model.dim=16", "-o", "Model.pred_dim=8",
        "-o", "DataLoader.Train.sampler.batch_size=8", "-o", "Global.print_batch_step=1"]


def scontrol(*args, env):
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, env=env, check=True)
