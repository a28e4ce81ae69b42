"""Fixtures for the Kubernetes backend tests.

Render/validate tests need nothing. Tests marked ``k8s`` run against a real control plane
(etcd, kube-apiserver, controller-manager, scheduler, kwok) started by ``tests/cluster/k8s.sh up``
from binaries built by ``tests/cluster/k8s.sh build``; they skip when those are not built, and
fail instead when SIMSIAM_REQUIRE_ALL=1 (CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from helpers.k8s import CLUSTER_SCRIPT, E2E_NAMESPACE, OUTPUT_CLAIM, REAL_NODE_LABEL, make_spec, wait_until
from helpers.prereqs import unavailable

from simsiam_job.backends.kubernetes import KubernetesBackend
from simsiam_job.spec import JobSpec


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
    # SIMSIAM_PYTHON writes the real nodes' data volume (Fashion-MNIST ImageFolder).
    up = subprocess.run([str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=600,
                        env={**os.environ, "SIMSIAM_PYTHON": sys.executable})
    if up.returncode != 0:
        pytest.fail(f"tests/cluster/k8s.sh up failed:\n{up.stdout}\n{up.stderr}")
    env = dict(line.removeprefix("export ").split("=", 1)
               for line in subprocess.run([str(CLUSTER_SCRIPT), "env"], capture_output=True,
                                          text=True, check=True).stdout.split("\n") if line)
    # kubectl keeps a discovery cache under $HOME/.kube: a scratch HOME keeps the user's untouched.
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    yield env
    subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def real_cluster(cluster) -> dict:
    """The cluster's two real worker nodes with the trainer image loaded (tests/cluster/k8s.sh
    image: built from docker/Dockerfile.cpu, or taken from its cache). Returns {"env": the CLI's
    environment, "data"/"output": where the claims `data` and `output` of namespace simsiam-e2e
    keep their files on this machine}."""
    kubectl = ["kubectl", "--kubeconfig", cluster["KUBECONFIG"]]
    env = {**os.environ, **cluster}
    nodes = subprocess.run([*kubectl, "get", "nodes", "-l", REAL_NODE_LABEL, "-o", "name"], env=env,
                           capture_output=True, text=True).stdout.split()
    if len(nodes) != 2:
        unavailable("the test cluster has no real nodes (tests/cluster/k8s.sh up needs root, "
                    "containerd, runc, buildah and the CNI plugins)")
    image = subprocess.run([str(CLUSTER_SCRIPT), "image"], capture_output=True, text=True, timeout=3600)
    if image.returncode != 0:
        pytest.fail(f"tests/cluster/k8s.sh image failed:\n{image.stderr[-3000:]}")
    paths = {}
    for claim in ("data", "output"):
        pv = json.loads(subprocess.run(
            [*kubectl, "get", "pv", f"{E2E_NAMESPACE}-{claim}", "-o", "json"], env=env,
            capture_output=True, text=True, check=True).stdout)
        paths[claim] = pv["spec"]["hostPath"]["path"]
    return {"env": env, **paths}


# The real-node tests' fixtures (test_nodes*.py, test_jobset_nodes.py, test_kueue_nodes.py);
# test_controllers.py defines its own.
@pytest.fixture(scope="module")
def nodes(real_cluster):
    return real_cluster


@pytest.fixture
def name(request, nodes):
    """A job name of this test, unique per run (the output claim outlives a job). Afterwards every
    Job and JobSet whose name starts with it is deleted and its pods waited for: a failed test
    must not leave pods holding the real nodes' CPU for the next one."""
    job = f"{request.node.name[5:20].replace('_', '-').strip('-')}-{uuid.uuid4().hex[:4]}"
    yield job

    def names(kind: str) -> list[str]:
        found = subprocess.run(["kubectl", "-n", E2E_NAMESPACE, "get", kind, "-o", "name"], env=nodes["env"],
                               capture_output=True, text=True, timeout=120).stdout.split()
        return [n for n in found if n.split("/", 1)[1].startswith(job)]

    for kind in ("jobsets.jobset.x-k8s.io", "jobs"):
        if mine := names(kind):
            subprocess.run(["kubectl", "-n", E2E_NAMESPACE, "delete", *mine, "--wait=false"],
                           env=nodes["env"], capture_output=True, timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and names("pods"):
        time.sleep(1)


# The control-plane tests' fixtures (test_cluster.py, test_shared_cluster.py): a client, and a
# fresh namespace per test with its output claim.
@pytest.fixture(scope="module")
def kube(cluster):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=cluster["KUBECONFIG"])
    return client.CoreV1Api(api), client.BatchV1Api(api), api


@pytest.fixture
def ns(kube, request):
    """A fresh namespace per test, deleted afterwards (its jobs and pods with it)."""
    from kubernetes import client

    core, _, _ = kube
    name = f"t-{request.node.name[5:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(lambda: core.read_namespaced_service_account("default", name), what="service account")
    # The output claim every multi-node job needs (its ranks share checkpoints there): a static
    # volume bound to a claim named OUTPUT_CLAIM.
    volume = f"{name}-output"
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=volume),
        spec=client.V1PersistentVolumeSpec(capacity={"storage": "1Gi"}, access_modes=["ReadWriteMany"],
                                           storage_class_name="",
                                           host_path={"path": f"/srv/simsiam-test/{volume}"})))
    core.create_namespaced_persistent_volume_claim(name, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=OUTPUT_CLAIM),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], storage_class_name="",
                                                volume_name=volume,
                                                resources={"requests": {"storage": "1Gi"}})))
    wait_until(lambda: core.read_namespaced_persistent_volume_claim(OUTPUT_CLAIM, name).status.phase
               == "Bound", what="output claim bound")
    yield name
    _, batch, _ = kube
    for job in batch.list_namespaced_job(name).items:
        batch.delete_namespaced_job(job.metadata.name, name, propagation_policy="Background")
    core.delete_namespace(name)
    core.delete_persistent_volume(volume)
