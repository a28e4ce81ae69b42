"""Fixtures for the smoke-job tests: the CLI as a user runs it, in a fresh HOME; the Slurm test
cluster for the two-node run (marker ``slurm``: skipped without it, failed under
SIMSIAM_REQUIRE_ALL=1)."""

from __future__ import annotations

import os
import sys

import pytest
from helpers.slurm import slurm_test_cluster


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
    """A user of the two-node Slurm test cluster (shared with the other test areas)."""
    with slurm_test_cluster() as slurm:
        root = tmp_path_factory.mktemp("smoke-slurm")
        env = _user(root)
        env.update(slurm, SIMSIAM_JOB_BACKEND="slurm", SIMSIAM_JOB_SLURM_JOB_ROOT=str(root / "jobs"),
                   SIMSIAM_JOB_SLURM_VENV=sys.prefix)
        yield env, root
