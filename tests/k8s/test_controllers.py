"""Kueue and JobSet in the test cluster, with plain manifests through kubectl, as a cluster admin
checks an install (the launcher's own queue and JobSet options are tested where they live).

tests/cluster/k8s.sh up runs both managers on the host without their webhooks (docs/kubernetes.md),
so these manifests write out what the webhooks would set: a queued Job or JobSet is created
suspended, and a JobSet carries its success, startup, failure and network policies and
completionMode Indexed in every replicated job. Kueue's queues: LocalQueue `simsiam` in namespace
default (ClusterQueue kwok-gpus, 16 GPUs) and in simsiam-e2e (ClusterQueue real-nodes, 4 cpu).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers.k8s import E2E_NAMESPACE, wait_until
from helpers.prereqs import unavailable

QUEUE = {"kueue.x-k8s.io/queue-name": "simsiam"}
IMAGE = "localhost/simsiam:test-cpu"
# What the "restricted" Pod Security level of namespace simsiam-e2e asks of every container.
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
              "readOnlyRootFilesystem": True}


@pytest.fixture(scope="module")
def env(cluster):
    return {**os.environ, **cluster}


@pytest.fixture(scope="module")
def kueue(env):
    """The cluster's environment, once Kueue runs (it needs root: docs/kubernetes.md)."""
    active = kubectl(env, "get", "clusterqueue", "kwok-gpus", "-o",
                     'jsonpath={.status.conditions[?(@.type=="Active")].status}', check=False).stdout
    if active != "True":
        unavailable("Kueue is not running: tests/cluster/k8s.sh up starts it only as root")
    return env


@pytest.fixture
def name(request):
    return f"{request.node.name[5:18].replace('_', '-').strip('-')}-{uuid.uuid4().hex[:4]}"


def kubectl(env, *args, input=None, check=True):
    return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, input=input,
                          check=check, timeout=120)


def apply(env, *objects):
    kubectl(env, "apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))


def get(env, namespace, kind, name=None, selector=None) -> dict:
    args = ["-n", namespace, "get", kind, *([name] if name else []), *(["-l", selector] if selector else [])]
    return json.loads(kubectl(env, *args, "-o", "json").stdout)


def condition(obj, kind) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def workload_condition(env, namespace, kind, owner, condition_type) -> dict:
    """A condition of Kueue's Workload for a Job or JobSet (the Workload it owns); {} if none yet."""
    for wl in get(env, namespace, "workloads.kueue.x-k8s.io")["items"]:
        if any(o["kind"] == kind and o["name"] == owner for o in wl["metadata"].get("ownerReferences", [])):
            return condition(wl, condition_type)
    return {}


def job_pods(env, namespace, job) -> list[dict]:
    return get(env, namespace, "pods", selector=f"batch.kubernetes.io/job-name={job}")["items"]


def running(pods: list[dict], count: int) -> list[dict] | None:
    return pods if len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods) else None


def queued_job(name, namespace, pods, container, priority=None) -> dict:
    """An Indexed Job for LocalQueue `simsiam`, created suspended: Kueue unsuspends it on admission."""
    labels = {**QUEUE, **({"kueue.x-k8s.io/priority-class": priority} if priority else {})}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"suspend": True, "completionMode": "Indexed", "completions": pods, "parallelism": pods,
                     "backoffLimit": 0,
                     "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                           "automountServiceAccountToken": False,
                                           "containers": [container]}}}}


# ---- Kueue on the kwok nodes -----------------------------------------------------------------------

def gpu_job(name, pods) -> dict:
    container = {"name": "trainer", "image": "registry.example.com/simsiam:0.1",
                 "resources": {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "8"},
                               "limits": {"nvidia.com/gpu": "8"}}}
    return queued_job(name, "default", pods, container)


@pytest.mark.k8s
def test_a_job_beyond_the_gpu_quota_waits_suspended_until_the_first_one_is_gone(kueue, name):
    env, first, second = kueue, f"{name}-2x8", f"{name}-1x8"
    try:
        apply(env, gpu_job(first, 2))
        pods = wait_until(lambda: running(job_pods(env, "default", first), 2), what="the 2 x 8 job's pods")
        assert get(env, "default", "job", first)["spec"]["suspend"] is False
        assert {p["spec"]["nodeName"] for p in pods} <= {"a100-0", "a100-1", "a100-2"}
        assert all(p["spec"]["nodeSelector"] == {"type": "kwok"} for p in pods)   # flavor kwok's label

        apply(env, gpu_job(second, 1))      # 8 GPUs: more than the none left of the queue's 16
        waiting = wait_until(lambda: (c := workload_condition(env, "default", "Job", second, "QuotaReserved"))
                             .get("reason") == "Pending" and c, what="the 1 x 8 job's workload pending")
        message = waiting["message"]
        assert "insufficient unused quota for nvidia.com/gpu in flavor kwok" in message, message
        assert get(env, "default", "job", second)["spec"]["suspend"] is True
        assert job_pods(env, "default", second) == []

        kubectl(env, "-n", "default", "delete", "job", first)
        wait_until(lambda: running(job_pods(env, "default", second), 1), what="the 1 x 8 job's pods")
        assert get(env, "default", "job", second)["spec"]["suspend"] is False
    finally:
        kubectl(env, "-n", "default", "delete", "job", first, second, "--ignore-not-found", check=False)


@pytest.mark.k8s
def test_the_rdma_node_takes_only_pods_that_tolerate_its_taint(env, name):
    def pod(pod_name, tolerate):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "registry.example.com/simsiam:0.1",
                                         "resources": {"limits": {"rdma/hca_shared_devices_a": "1"}}}],
                         "tolerations": [{"key": "simsiam-test/rdma", "operator": "Exists",
                                          "effect": "NoSchedule"}] if tolerate else []}}
    try:
        apply(env, pod(f"{name}-tolerates", True), pod(f"{name}-does-not", False))
        placed = wait_until(lambda: (p := get(env, "default", "pod", f"{name}-tolerates"))["status"]
                            .get("phase") == "Running" and p, what="the tolerating pod running")
        assert placed["spec"]["nodeName"] == "rdma-0"
        refused = wait_until(lambda: condition(get(env, "default", "pod", f"{name}-does-not"), "PodScheduled")
                             .get("reason") == "Unschedulable"
                             and condition(get(env, "default", "pod", f"{name}-does-not"), "PodScheduled"),
                             what="the other pod unschedulable")
        # the scheduler counts the taints it met, and the other nodes' lack of the device
        assert re.search(r"\d+ node\(s\) had untolerated taint", refused["message"]), refused["message"]
        assert "Insufficient rdma/hca_shared_devices_a" in refused["message"], refused["message"]
    finally:
        kubectl(env, "-n", "default", "delete", "pod", f"{name}-tolerates", f"{name}-does-not",
                "--ignore-not-found", "--grace-period=0", check=False)


# ---- Kueue and JobSet on the real nodes -------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(real_cluster, kueue):
    return real_cluster["env"]


# Leader and worker of a JobSet meet over TCP: the worker resolves the leader's DNS name and both
# tell each other their restart attempt (the pod label jobset.sigs.k8s.io/restart-attempt). After a
# restart the name may still resolve to the previous attempt's leader for a moment: the worker
# retries until a leader of its own attempt answers. With FAIL_FIRST the worker of attempt 0 exits 1.
MEET = r"""
import os, socket, sys, time
role, attempt = os.environ["ROLE"], os.environ["ATTEMPT"]
if role == "leader":
    server = socket.create_server(("", 7777))
    server.settimeout(300)
    while True:
        conn, _ = server.accept()
        with conn:
            theirs = conn.recv(16).decode()
            conn.sendall(attempt.encode())
        if theirs == attempt:
            print(f"leader of attempt {attempt} met its worker", flush=True)
            sys.exit(0)
if os.environ.get("FAIL_FIRST") and attempt == "0":
    sys.exit(1)
deadline = time.time() + 300
while time.time() < deadline:
    try:
        address = socket.gethostbyname(os.environ["LEADER"])
        with socket.create_connection((address, 7777), timeout=3) as conn:
            conn.sendall(attempt.encode())
            if conn.recv(16).decode() == attempt:
                print(f"worker of attempt {attempt} met the leader at {address}", flush=True)
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(3)
"""


def meeting_jobset(name, fail_first=False) -> dict:
    """Leader 1 pod + worker 1 pod on the real nodes, queued in LocalQueue `simsiam`; every field
    JobSet's defaulting webhook would set is written out."""
    def replicated_job(role):
        env = [{"name": "ROLE", "value": role}, {"name": "LEADER", "value": f"{name}-leader-0-0.{name}"},
               {"name": "ATTEMPT", "valueFrom": {"fieldRef": {
                   "fieldPath": "metadata.labels['jobset.sigs.k8s.io/restart-attempt']"}}}]
        if fail_first:
            env.append({"name": "FAIL_FIRST", "value": "1"})
        container = {"name": role, "image": IMAGE, "imagePullPolicy": "Never",
                     "command": ["python", "-c", MEET], "env": env, "securityContext": RESTRICTED,
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                   "limits": {"memory": "128Mi"}}}
        return {"name": role, "replicas": 1,
                "template": {"spec": {
                    "completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": 0,
                    "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                          "automountServiceAccountToken": False,
                                          "containers": [container]}}}}}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": E2E_NAMESPACE, "labels": QUEUE},
            "spec": {"suspend": True,
                     "network": {"enableDNSHostnames": True, "subdomain": name,
                                 "publishNotReadyAddresses": True},
                     "successPolicy": {"operator": "All", "targetReplicatedJobs": []},
                     "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
                     "failurePolicy": {"maxRestarts": 1, "restartStrategy": "Recreate", "rules": []},
                     "replicatedJobs": [replicated_job("leader"), replicated_job("worker")]}}


def completed(env, name) -> dict | None:
    js = get(env, E2E_NAMESPACE, "jobset", name)
    assert condition(js, "Failed").get("status") != "True", js["status"]
    return js if condition(js, "Completed").get("status") == "True" else None


def worker_log(env, name) -> str:
    return kubectl(env, "-n", E2E_NAMESPACE, "logs", "-l",
                   f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=worker").stdout


@pytest.mark.k8s_nodes
@pytest.mark.slow
def test_a_queued_jobset_worker_reaches_its_leader_by_name_and_completes(nodes, name):
    try:
        apply(nodes, meeting_jobset(name))
        js = wait_until(lambda: completed(nodes, name), timeout=240, what="JobSet Completed")
        assert js["spec"]["suspend"] is False                        # Kueue admitted it
        assert workload_condition(nodes, E2E_NAMESPACE, "JobSet", name, "Finished")["status"] == "True"
        assert js["status"].get("restarts", 0) == 0
        assert "worker of attempt 0 met the leader at 10.214." in worker_log(nodes, name)
    finally:
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "jobset", name, "--ignore-not-found", check=False)


@pytest.mark.k8s_nodes
@pytest.mark.slow
def test_a_jobset_whose_worker_fails_once_restarts_the_group_and_completes(nodes, name):
    try:
        apply(nodes, meeting_jobset(name, fail_first=True))
        js = wait_until(lambda: completed(nodes, name), timeout=300, what="JobSet Completed")
        assert js["status"]["restarts"] == 1
        assert "worker of attempt 1 met the leader" in worker_log(nodes, name)
    finally:
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "jobset", name, "--ignore-not-found", check=False)


def sleeper_job(name, priority) -> dict:
    """Two pods of the launcher's default CPU request (2 cpu each): one such job fills the real
    nodes' ClusterQueue (4 cpu)."""
    container = {"name": "trainer", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "600"],
                 "securityContext": RESTRICTED,
                 "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}}
    return queued_job(name, E2E_NAMESPACE, 2, container, priority)


@pytest.mark.k8s_nodes
@pytest.mark.slow
def test_a_high_priority_job_preempts_a_low_one_on_the_real_nodes(nodes, name):
    low, high = f"{name}-low", f"{name}-high"
    suspended = lambda job: get(nodes, E2E_NAMESPACE, "job", job)["spec"]["suspend"]  # noqa: E731
    try:
        apply(nodes, sleeper_job(low, "low"))
        pods = wait_until(lambda: running(job_pods(nodes, E2E_NAMESPACE, low), 2), timeout=120,
                          what="the low-priority job's pods")
        assert {p["spec"]["nodeName"] for p in pods} <= {"worker-1", "worker-2"}

        apply(nodes, sleeper_job(high, "high"))
        wait_until(lambda: running(job_pods(nodes, E2E_NAMESPACE, high), 2), timeout=180,
                   what="the high-priority job's pods")
        assert suspended(low)
        # its pods get their grace period (sleep as PID 1 ignores SIGTERM), then go
        wait_until(lambda: job_pods(nodes, E2E_NAMESPACE, low) == [], timeout=120,
                   what="the low-priority job's pods gone")
        evicted = workload_condition(nodes, E2E_NAMESPACE, "Job", low, "Evicted")
        assert evicted["reason"] == "Preempted", evicted

        # Preemption is not the end of the low one: it waits in the queue and runs again.
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "job", high)
        wait_until(lambda: running(job_pods(nodes, E2E_NAMESPACE, low), 2), timeout=180,
                   what="the low-priority job admitted again")
        assert not suspended(low)
    finally:
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "job", low, high, "--ignore-not-found", check=False)


@pytest.mark.k8s_nodes
@pytest.mark.slow
def test_the_rwo_output_claim_lives_on_one_node_and_uid_1000_writes_it(nodes, name):
    claim = get(nodes, E2E_NAMESPACE, "pvc", "output-rwo")
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volume = json.loads(kubectl(nodes, "get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    (term,) = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-1"]}]

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": E2E_NAMESPACE},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                    "containers": [{"name": "writer", "image": IMAGE, "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", f"id -u > /out/{name}"],
                                    "securityContext": RESTRICTED,
                                    "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
                    "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "output-rwo"}}]}}
    try:
        apply(nodes, pod)
        done = wait_until(lambda: (p := get(nodes, E2E_NAMESPACE, "pod", name))["status"].get("phase")
                          in ("Succeeded", "Failed") and p, timeout=120, what="the writer pod to end")
        assert done["status"]["phase"] == "Succeeded" and done["spec"]["nodeName"] == "worker-1"
        written = Path(volume["spec"]["local"]["path"]) / name
        assert written.read_text() == "1000\n" and written.stat().st_uid == 1000
    finally:
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "pod", name, "--ignore-not-found", check=False)
