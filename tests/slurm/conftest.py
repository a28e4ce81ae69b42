"""Fixtures for the Slurm backend tests.

Render tests need nothing but the launcher (and Debian's shellcheck). End-to-end tests (marker
``slurm``) run on a real two-node Slurm cluster that ``tests/cluster/slurm.sh up`` starts on this
machine (root and network namespaces needed); without it they skip, or fail when
SIMSIAM_REQUIRE_ALL=1 (CI). The CLI runs as a user runs it: ``simsiam-job ...`` in a fresh process.
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers.slurm import slurm_test_cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """The two-node cluster (node1, node2); yields the environment for Slurm's commands."""
    with slurm_test_cluster() as env:
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]
        yield env


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
