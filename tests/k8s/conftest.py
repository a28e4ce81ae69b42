"""Fixtures for the Kubernetes backend tests.

Render/validate tests need nothing. Tests marked ``k8s`` run against a real control plane
(etcd, kube-apiserver, controller-manager, scheduler, kwok) started by ``tests/cluster/k8s.sh up``
from binaries built by ``tests/cluster/k8s.sh build``; they skip when those are not built, and
fail instead when SIMSIAM_REQUIRE_ALL=1 (CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simsiam_job.backends.kubernetes import KubernetesBackend, Options
from simsiam_job.spec import JobSpec, Phase

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "tests" / "cluster" / "k8s.sh"
RECIPE = REPO / "trainer" / "configs" / "simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml"


def make_spec(name: str = "demo", *, nodes: int = 2, gpus: int = 8, data: str | None = "imagenet",
              output: str | None = "results", phase: Phase = Phase.PRETRAIN,
              env: tuple = (), **options) -> JobSpec:
    import yaml

    text = RECIPE.read_text()
    return JobSpec(
        name=name, phase=phase, backend="kubernetes", nodes=nodes, gpus=gpus,
        image="registry.example.com/simsiam:0.1", config_source=str(RECIPE),
        config=yaml.safe_load(text), config_yaml=text, data=data, output=output, env=env,
        options=Options(**options),
    )


def docs_by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture
def render():
    def _render(spec: JobSpec) -> list[dict]:
        return KubernetesBackend(spec.options).render(spec).payload
    return _render


def _unavailable(reason: str):
    if os.environ.get("SIMSIAM_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (SIMSIAM_REQUIRE_ALL=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> dict[str, str]:
    """The running control plane: {"KUBECONFIG": path, "PATH": with kubectl first}."""
    built = subprocess.run([str(CLUSTER_SCRIPT), "built"], capture_output=True, text=True)
    if built.returncode != 0:
        _unavailable("Kubernetes binaries are not built: run tests/cluster/k8s.sh build")
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
