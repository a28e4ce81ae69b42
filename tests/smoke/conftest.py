"""Fixtures for the smoke-job tests: the CLI as a user runs it, in a fresh HOME; the Slurm test
cluster for the two-node run (marker ``slurm``: skipped without it, failed under
SIMSIAM_REQUIRE_ALL=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testlib import REPO, unavailable

CLUSTER = REPO / "tests" / "cluster" / "slurm.sh"


def _user(root) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(HOME=str(root / "home"), XDG_DATA_HOME=str(root / "data"),
               XDG_CONFIG_HOME=str(root / "config"), OMP_NUM_THREADS="1")
    (root / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def user_env(tmp_path):
    return _user(tmp_path)


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A user of the two-node Slurm test cluster. A cluster that was already up (other test areas
    share it) is left up; one this fixture started is stopped again."""
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster needs root (network namespaces, slurmd)")
    conf = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True, check=True)
    slurm_env = {"SLURM_CONF": conf.stdout.strip().split("=", 1)[1]}
    was_up = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                            env={**os.environ, **slurm_env}).returncode == 0 if _has("scontrol") else False
    if not was_up:
        try:
            up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            unavailable("tests/cluster/slurm.sh up did not finish in 600 s")
        if up.returncode != 0:
            unavailable(f"tests/cluster/slurm.sh up failed: {up.stderr.strip().splitlines()[-1:]}")
    root = tmp_path_factory.mktemp("smoke-slurm")
    env = _user(root)
    env.update(slurm_env, SIMSIAM_JOB_BACKEND="slurm", SIMSIAM_JOB_SLURM_JOB_ROOT=str(root / "jobs"),
               SIMSIAM_JOB_SLURM_VENV=sys.prefix)
    yield env, root
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True, timeout=120)


def _has(command: str) -> bool:
    import shutil
    return shutil.which(command) is not None
