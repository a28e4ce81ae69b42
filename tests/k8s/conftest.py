"""Fixtures for the Kubernetes backend tests.

Render/validate tests need nothing. Tests marked ``k8s`` run against a real control plane
(etcd, kube-apiserver, controller-manager, scheduler, kwok) started by ``tests/cluster/k8s.sh up``
from binaries built by ``tests/cluster/k8s.sh build``; they skip when those are not built, and
fail instead when SIMSIAM_REQUIRE_ALL=1 (CI).
"""

from __future__ import annotations

import subprocess

import pytest

from k8s_util import CLUSTER_SCRIPT, make_spec
from simsiam_job.backends.kubernetes import KubernetesBackend
from simsiam_job.spec import JobSpec
from testlib import unavailable


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture
def render():
    def _render(spec: JobSpec) -> list[dict]:
        return KubernetesBackend(spec.options).render(spec).payload
    return _render


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> dict[str, str]:
    """The running control plane: {"KUBECONFIG": path, "PATH": with kubectl first}."""
    built = subprocess.run([str(CLUSTER_SCRIPT), "built"], capture_output=True, text=True)
    if built.returncode != 0:
        unavailable("Kubernetes binaries are not built: run tests/cluster/k8s.sh build")
    up = subprocess.run([str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        pytest.fail(f"tests/cluster/k8s.sh up failed:\n{up.stdout}\n{up.stderr}")
    env = dict(line.removeprefix("export ").split("=", 1)
               for line in subprocess.run([str(CLUSTER_SCRIPT), "env"], capture_output=True,
                                          text=True, check=True).stdout.split("\n") if line)
    # kubectl keeps a discovery cache under $HOME/.kube: a scratch HOME keeps the user's untouched.
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    yield env
    subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True, timeout=120)
