"""Suite-wide hooks and fixtures: the automatic ``cluster`` marker, and the fixtures every area uses.

A test that needs the local Slurm cluster or the Kubernetes test cluster (marked ``slurm``, ``k8s``
or ``k8s_nodes``) is also marked ``cluster``, so ``-m "not cluster"`` (make test-fast) leaves out
every test that needs a cluster without each file having to say so twice.

Helpers that are not fixtures live in tests/helpers/ (``from helpers.cli import run_cli``).
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.prereqs import unavailable

CLUSTER_MARKERS = ("slurm", "k8s", "k8s_nodes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in CLUSTER_MARKERS):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> Path:
    """The one small real data set of the end-to-end tests: a Fashion-MNIST ImageFolder with 64
    train images (train/<class>/) and 16 validation images (val/<class>/), balanced over the
    classes. (Every area sees it: defined here.)"""
    from trainer.data import fashion_mnist

    if not all((fashion_mnist.source_dir() / f"{split}-images-idx3-ubyte.gz").is_file()
               for split in ("train", "t10k")):
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 64, 16, seed=0)


@pytest.fixture
def shared_dir():
    """A folder every user of the machine can enter and list (0755, under the system's temporary
    folder), standing in for a shared filesystem or an output volume."""
    path = Path(tempfile.mkdtemp(prefix="simsiam-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
