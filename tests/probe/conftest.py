"""Fixtures for the linear-probe, weight-loading and conversion tests."""
import os

import pytest
from helpers.prereqs import unavailable

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def torch():
    try:
        import torch as torch_module
        import torchvision  # noqa: F401
    except ImportError:
        unavailable("torch/torchvision not installed (pip install '.[torch]')")
    torch_module.set_num_threads(1)
    return torch_module
