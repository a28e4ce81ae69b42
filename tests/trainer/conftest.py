"""Fixtures for the trainer tests: real paddle on CPU, tiny models and tiny image folders."""
import os

import pytest
from helpers.trainer import write_pngs

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("images") / "train")
