"""The two-node Slurm test cluster (tests/cluster/slurm.sh) and its commands."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from helpers.paths import REPO
from helpers.prereqs import unavailable

CLUSTER = REPO / "tests" / "cluster" / "slurm.sh"


@contextlib.contextmanager
def slurm_test_cluster():
    """The two-node Slurm test cluster (tests/cluster/slurm.sh; root and network namespaces
    needed): yields the environment Slurm's commands need. A cluster that was up before (someone
    is using it) stays up after; one started here is stopped again."""
    cluster = CLUSTER
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster needs root (network namespaces, slurmd)")
    conf = subprocess.run(["bash", str(cluster), "env"], capture_output=True, text=True, check=True)
    slurm_conf = conf.stdout.strip().split("=", 1)[1]
    was_up = shutil.which("scontrol") is not None and os.path.isfile(slurm_conf) and subprocess.run(
        ["scontrol", "ping"], env={**os.environ, "SLURM_CONF": slurm_conf}, capture_output=True,
        timeout=30).returncode == 0
    try:
        up = subprocess.run(["bash", str(cluster), "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        unavailable("tests/cluster/slurm.sh up did not finish in 600 s")
    if up.returncode != 0:
        unavailable(f"tests/cluster/slurm.sh up failed: {up.stderr.strip().splitlines()[-1:]}")
    try:
        yield {"SLURM_CONF": slurm_conf}
    finally:
        if not was_up:
            subprocess.run(["bash", str(cluster), "down"], capture_output=True, text=True, timeout=120)


def scontrol(*args, env):
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, env=env, check=True)
