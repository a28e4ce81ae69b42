"""Fixtures for the fault tests: real processes, real paddle on CPU, tiny runs."""
import os

import pytest
from helpers.trainer import write_pngs

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("images") / "train")
