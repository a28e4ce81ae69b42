"""Fixtures for the linear-probe, weight-loading and conversion tests."""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def require(condition: bool, reason: str):
    """Skip with a reason when a prerequisite is absent; CI (SIMSIAM_REQUIRE_ALL=1) fails instead."""
    if condition:
        return
    if os.environ.get("SIMSIAM_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (SIMSIAM_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def torch():
    try:
        import torch as torch_module
        import torchvision  # noqa: F401
    except ImportError:
        require(False, "torch/torchvision not installed (pip install '.[torch]')")
    torch_module.set_num_threads(1)
    return torch_module
