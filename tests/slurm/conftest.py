"""Fixtures for the Slurm backend tests.

Render tests need nothing but the launcher (and Debian's shellcheck). End-to-end tests (marker
``slurm``) run on a real two-node Slurm cluster that ``tests/cluster/slurm.sh up`` starts on this
machine (root and network namespaces needed); without it they skip, or fail when
SIMSIAM_REQUIRE_ALL=1 (CI). The CLI runs as a user runs it: ``simsiam-job ...`` in a fresh process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from slurm_util import CLUSTER
from testlib import fmnist, unavailable  # noqa: F401  (fmnist: a fixture)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The two-node cluster (node1, node2); yields the environment for Slurm's commands."""
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster needs root (network namespaces, slurmd)")
    conf = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True, check=True)
    slurm_conf = conf.stdout.strip().split("=", 1)[1]
    # A cluster that was up before the tests (someone is using it) stays up after them.
    was_up = shutil.which("scontrol") is not None and os.path.isfile(slurm_conf) and subprocess.run(
        ["scontrol", "ping"], env={**os.environ, "SLURM_CONF": slurm_conf}, capture_output=True,
        timeout=30).returncode == 0
    try:
        up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        unavailable("tests/cluster/slurm.sh up did not finish in 600 s")
    if up.returncode != 0:
        unavailable(f"tests/cluster/slurm.sh up failed: {up.stderr.strip().splitlines()[-1:]}")
    os.environ["SLURM_CONF"] = slurm_conf
    yield {"SLURM_CONF": slurm_conf}
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True, timeout=120)


@pytest.fixture
def user_env(tmp_path, slurm_cluster):
    """A user's environment: jobs under tmp_path/jobs, the trainer from this venv on the nodes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(slurm_cluster, HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               OMP_NUM_THREADS="1", SIMSIAM_JOB_BACKEND="slurm",
               SIMSIAM_JOB_SLURM_JOB_ROOT=str(tmp_path / "jobs"),
               SIMSIAM_JOB_SLURM_VENV=sys.prefix, SIMSIAM_JOB_SLURM_CANCEL_GRACE="60")
    (tmp_path / "home").mkdir()
    return env
