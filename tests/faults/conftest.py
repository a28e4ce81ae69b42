"""Fixtures for the fault tests: real processes, real paddle on CPU, tiny runs."""
import os
import sys
from pathlib import Path

import pytest

# the trainer tests' helpers (tiny runs of the shipped CPU config, tiny image folders)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    from trainer_helpers import write_pngs
    return write_pngs(tmp_path_factory.mktemp("images") / "train")
