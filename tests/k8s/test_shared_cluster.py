"""Shared-cluster features against the real control plane with Kueue and the JobSet controller
(tests/cluster/k8s.sh up), on kwok's fake GPU nodes: a job queued in Kueue, JobSets followed and
stopped through the CLI, the RDMA node that only takes the pods that ask for it, the rdma profile
refused by Pod Security, and kubectl apply/delete of a rendered file.

Containers do not run on kwok nodes: a test ends a pod by annotating it (test_cluster.end_pod).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from helpers.k8s import CLUSTER_QUEUE, OUTPUT_CLAIM, wait_until
from helpers.k8s_control_plane import end_pod, run_cli, status, submit

pytestmark = pytest.mark.k8s

JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


def local_queue(kube, ns, name="team") -> str:
    """A LocalQueue of the test's namespace in the cluster's ClusterQueue (16 GPUs of quota)."""
    from kubernetes import client

    _, _, api = kube
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "kueue.x-k8s.io", "v1beta2", ns, "localqueues",
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": name, "namespace": ns},
         "spec": {"clusterQueue": CLUSTER_QUEUE}})
    # A workload submitted before Kueue has taken the queue in is set aside and retried later,
    # with a back-off longer than these tests wait: wait until the queue says it is active.
    wait_until(lambda: any(c["type"] == "Active" and c["status"] == "True" for c in
                           (custom.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns,
                                                                "localqueues", name)
                            .get("status") or {}).get("conditions") or []),
               what=f"LocalQueue {name} active")
    return name


def pods_with(kube, ns, selector):
    core, _, _ = kube
    return core.list_namespaced_pod(ns, label_selector=selector).items


def running(kube, ns, selector, count):
    pods = [p for p in pods_with(kube, ns, selector) if p.status.phase == "Running"]
    return pods if len(pods) == count else None


@pytest.mark.parametrize("workload", ["job", "jobset"])
def test_a_queued_job_waits_with_no_pod_and_kueues_reason_until_the_job_ahead_is_cancelled(cluster, kube, ns,
                                                                                          workload):
    queue = local_queue(kube, ns)
    label = JOBSET_LABEL if workload == "jobset" else "batch.kubernetes.io/job-name"
    ahead = submit(cluster, ns, "ahead", "--nodes", "2", "--gpus", "8", "--set", f"queue={queue}",
                   "--set", f"workload={workload}").stdout.strip()
    wait_until(lambda: running(kube, ns, f"{label}=ahead", 2), what="the job ahead admitted and running")
    ref = submit(cluster, ns, "behind", "--nodes", "2", "--gpus", "8", "--set", f"queue={queue}",
                 "--set", f"workload={workload}").stdout.strip()
    queued = wait_until(lambda: ((s := status(cluster, ref))["state"] == "QUEUED"
                                 and "quota" in (s["reason"] or "") and s),
                        what="QUEUED with Kueue's reason")
    assert "insufficient unused quota for nvidia.com/gpu" in queued["reason"], queued["reason"]
    assert pods_with(kube, ns, f"{label}=behind") == []              # nothing holds a GPU
    listed = run_cli(cluster, "list", "--backend", "kubernetes",
                     extra_env={"SIMSIAM_JOB_KUBERNETES_NAMESPACE": ns}).stdout
    assert [ref, "pretrain", "QUEUED"] in [line.split()[:3] for line in listed.splitlines()], listed
    said = run_cli(cluster, "logs", ref)
    assert said.stdout == "" and f"{ref} is QUEUED" in said.stderr and "no pod has started" in said.stderr

    assert "cancelled" in run_cli(cluster, "cancel", ahead).stdout
    wait_until(lambda: running(kube, ns, f"{label}=behind", 2), what="admitted once the quota is free",
               timeout=120)
    assert status(cluster, ref)["state"] == "RUNNING"


def test_cancel_works_on_a_queued_job(cluster, kube, ns):
    queue = local_queue(kube, ns)
    ref = submit(cluster, ns, "never", "--nodes", "3", "--gpus", "8",
                 "--set", f"queue={queue}").stdout.strip()
    wait_until(lambda: status(cluster, ref)["state"] == "QUEUED", what="QUEUED")
    assert run_cli(cluster, "cancel", ref).stdout.startswith(f"cancelled {ref}")
    gone = run_cli(cluster, "status", ref, check=False)
    assert gone.returncode == 1 and "no job 'never'" in gone.stderr


def test_a_jobset_is_followed_restarted_and_failed_through_the_cli(cluster, kube, ns):
    """On kwok: the JobSet's pods get their ranks, a disruption restarts the group without
    counting, exit 2 of a worker fails it at once with the rank named."""
    # auto: this cluster serves jobset.x-k8s.io, so submit makes a JobSet
    ref = submit(cluster, ns, "js", "--nodes", "3", "--gpus", "8", "--set", "workload=auto").stdout.strip()
    pods = wait_until(lambda: running(kube, ns, f"{JOBSET_LABEL}=js", 3), what="3 pods running")
    first = status(cluster, ref)
    assert first["state"] == "RUNNING" and first["detail"]["kind"] == "JobSet"
    assert sorted(first["detail"]["pods"]) == ["0", "1", "2"]
    assert first["detail"]["pods"]["0"].startswith("js-leader-0-0-")
    listed = run_cli(cluster, "list", "--backend", "kubernetes",
                     extra_env={"SIMSIAM_JOB_KUBERNETES_NAMESPACE": ns}).stdout
    assert [ref, "pretrain", "RUNNING"] in [line.split()[:3] for line in listed.splitlines()], listed
    assert len([line for line in listed.splitlines() if "kubernetes://" in line]) == 1   # not its child Jobs

    worker = next(p for p in pods if p.metadata.name.startswith("js-worker-0-1-"))
    end_pod(kube, worker, "disrupt")                       # evicted: restarts, not counted
    again = wait_until(lambda: (s := status(cluster, ref))["state"] == "RUNNING"
                       and s["detail"]["group_restarts"] == 1 and s, what="the group restarted", timeout=120)
    assert again["detail"]["counted_restarts"] == 0 and again["detail"]["preempted"] == 1
    assert "preempted 1 time" in again["reason"]
    new = wait_until(lambda: running(kube, ns, f"{JOBSET_LABEL}=js,jobset.sigs.k8s.io/restart-attempt=1", 3),
                     what="the new group running")
    end_pod(kube, next(p for p in new if p.metadata.name.startswith("js-worker-0-0-")), "2")
    failed = wait_until(lambda: (s := status(cluster, ref))["state"] == "FAILED" and s, what="FAILED",
                        timeout=120)
    assert "FailJobSet" in failed["reason"] and "rank 1: " in failed["reason"], failed["reason"]
    shown = run_cli(cluster, "status", ref).stdout
    assert "FAILED" in shown and "group restarted 1 time (0 counted, at most 3); preempted 1 time" in shown


def test_the_rdma_node_takes_a_pod_only_when_the_options_ask_for_it(cluster, kube, ns):
    """rdma-0 advertises rdma/hca_shared_devices_a and carries a taint and a label of its own."""
    asks = ["--gpus", "8", "--set", "extra_resources=rdma/hca_shared_devices_a=1"]
    # The resource without the toleration: no node has both.
    ref = submit(cluster, ns, "no-toleration", *asks).stdout.strip()
    pending = wait_until(lambda: (s := status(cluster, ref))["reason"] and s, what="unschedulable")
    assert (pending["state"] == "PENDING"
            and "rdma/hca_shared_devices_a" in pending["reason"]), pending["reason"]
    placed = submit(cluster, ns, "tolerates", *asks, "--set", "tolerations=simsiam-test/rdma=true:NoSchedule",
                    "--set", "node_selector=simsiam-test/rdma=true").stdout.strip()
    result = wait_until(lambda: (s := status(cluster, placed))["state"] == "RUNNING" and s, what="RUNNING")
    assert result["nodes"][0]["host"] == "rdma-0"
    # A toleration alone does not send a pod there (the node selector or affinity does).
    plain = submit(cluster, ns, "plain", "--gpus", "8",
                   "--set", "node_affinity=!simsiam-test/rdma").stdout.strip()
    result = wait_until(lambda: (s := status(cluster, plain))["state"] == "RUNNING" and s, what="RUNNING")
    assert result["nodes"][0]["host"] != "rdma-0"


def test_the_rdma_profile_is_refused_in_one_line_where_pod_security_forbids_it(cluster, kube, ns):
    core, batch, _ = kube
    core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    refused = submit(cluster, ns, "ib", "--gpus", "8", "--set", "rdma=true", check=False)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"error: the rdma profile needs the IPC_LOCK capability, which namespace {ns} "
                           "does not allow: ") and "violates PodSecurity" in line, line
    assert batch.list_namespaced_job(ns).items == []                  # nothing was created
    core.patch_namespace(ns, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    ok = submit(cluster, ns, "ib", "--gpus", "8", "--set", "rdma=true",
                "--set", "tolerations=simsiam-test/rdma=true:NoSchedule").stdout.strip()
    assert wait_until(lambda: status(cluster, ok)["state"] == "RUNNING", what="RUNNING")


@pytest.mark.parametrize("workload", ["job", "jobset"])
def test_kubectl_delete_of_a_rendered_file_removes_what_apply_created(cluster, kube, ns, workload, tmp_path):
    rendered = run_cli(cluster, "render", "pretrain", "--backend", "kubernetes", "--name", "filed",
                       "--nodes", "2", "--gpus", "8", "--image", "registry.example.com/simsiam:test",
                       "--set", f"namespace={ns}", "--output", OUTPUT_CLAIM,
                       "--set", f"workload={workload}", "--set", "labels=team=vision").stdout
    path = tmp_path / "filed.yaml"
    path.write_text(rendered)
    kubectl = lambda *args: subprocess.run(["kubectl", *args], capture_output=True, text=True,  # noqa: E731
                                           env=cluster, timeout=120)
    applied = kubectl("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    label = JOBSET_LABEL if workload == "jobset" else "batch.kubernetes.io/job-name"
    wait_until(lambda: running(kube, ns, f"{label}=filed", 2), what="pods running")
    assert status(cluster, f"kubernetes://{ns}/filed")["state"] == "RUNNING"
    deleted = kubectl("delete", "-f", str(path), "--wait=true")
    assert deleted.returncode == 0, deleted.stderr
    assert len(deleted.stdout.strip().splitlines()) == len(kinds)

    def left():
        shown = kubectl("-n", ns, "get", "all,configmaps,jobsets", "-l", "team=vision", "-o", "json")
        return json.loads(shown.stdout)["items"]
    wait_until(lambda: left() == [], what="everything gone", timeout=120)
