"""Job specs and names of the Kubernetes tests, render and cluster alike."""

from __future__ import annotations

import time
from collections.abc import Callable

from helpers.paths import REPO
from simsiam_job.backends.kubernetes import Options
from simsiam_job.spec import JobSpec, Phase

CLUSTER_SCRIPT = REPO / "tests" / "cluster" / "k8s.sh"
RECIPE = REPO / "trainer" / "configs" / "simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml"
# Set up by tests/cluster/k8s.sh up on the real nodes: the namespace of the end-to-end jobs, and the
# label of the real (kubelet + containerd) nodes.
E2E_NAMESPACE = "simsiam-e2e"
REAL_NODE_LABEL = "simsiam-test/real-node=true"
# Kueue and JobSet (tests/cluster/k8s.sh up): the ClusterQueue, the LocalQueue of the real-node
# namespace, and its ReadWriteOnce output claim (a volume on one real node).
CLUSTER_QUEUE = "kwok-gpus"          # the ClusterQueue of the kwok GPU nodes (k8s.sh)
E2E_QUEUE = "simsiam"
RWO_CLAIM = "output-rwo"


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


def wait_until(fn: Callable, *, timeout: float = 60, what: str = "condition"):
    """fn()'s first true value; an exception counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
            last = value
        except Exception as err:  # not there yet
            last = err
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


# The claim every test namespace gets for job output (the ns fixture makes it).
OUTPUT_CLAIM = "results"
