"""Suite-wide hooks: the automatic ``cluster`` marker.

A test that needs the local Slurm cluster or the Kubernetes test cluster (marked ``slurm``, ``k8s``
or ``k8s_nodes``) is also marked ``cluster``, so ``-m "not cluster"`` (make test-fast) leaves out
every test that needs a cluster without each file having to say so twice.
"""

import pytest

CLUSTER_MARKERS = ("slurm", "k8s", "k8s_nodes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in CLUSTER_MARKERS):
            item.add_marker(pytest.mark.cluster)


# Fixtures shared across directories: defined once here, so test files need not import them.
from testlib import fmnist, shared_dir  # noqa: E402, F401, I001
