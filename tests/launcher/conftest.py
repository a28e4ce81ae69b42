"""Fixtures for the launcher tests.

The CLI runs as a user runs it: ``simsiam-job ...`` in a fresh process, with HOME, XDG_DATA_HOME
and XDG_CONFIG_HOME pointing into the test's temporary directory so runs and the user config file
never touch the real ones. End-to-end tests run the real trainer (paddle, CPU) on a tiny
Fashion-MNIST folder; nothing is mocked.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def user_env(tmp_path):
    """Environment of a user whose home is empty: no config file, no runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), OMP_NUM_THREADS="1")
    (tmp_path / "home").mkdir()
    return env
