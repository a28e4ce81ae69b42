"""Shared-cluster options, rendered without a cluster: the Kueue queue and priority, the scheduling
knobs sites require and the rdma profile; every mistake is one line at render time."""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
from helpers.cli import assert_one_line_error, run_cli
from helpers.k8s import docs_by_kind, make_spec

KNOBS = dict(tolerations=("ib=true:NoSchedule", "spot"), node_selector=("topology.kubernetes.io/zone=eu-1a",),
             node_affinity=("kubernetes.io/arch=amd64|arm64", "example.com/gen!=a100-40g",
                            "!example.com/drain"),
             labels=("team=vision", "example.com/cost-center=4711"),
             annotations=("example.com/owner=a b, c",),
             scheduler_name="gang-scheduler", extra_resources=("example.com/fpga=2",))


def pod_of(doc: dict) -> dict:
    """The pod template of a Job, or of a JobSet's leader."""
    if doc["kind"] == "Job":
        return doc["spec"]["template"]
    return doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]


@pytest.mark.parametrize("workload", ["job", "jobset"])
def test_kueue_queue_and_priority_label_the_job_which_is_created_suspended(render, workload):
    docs = docs_by_kind(render(make_spec("pt", workload=workload, queue="team-a", workload_priority="low")))
    kind = "Job" if workload == "job" else "JobSet"
    job = docs[kind]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    # Kueue admits it by unsuspending it; the client does not count on Kueue's webhook for that.
    assert job["spec"]["suspend"] is True
    plain = docs_by_kind(render(make_spec("pt", workload=workload)))[kind]
    assert ("suspend" not in plain["spec"]
            and not any(k.startswith("kueue") for k in plain["metadata"]["labels"]))


@pytest.mark.parametrize("workload", ["job", "jobset"])
@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_scheduling_knobs_reach_every_pod(render, workload, version):
    docs = render(make_spec("pt", nodes=2, gpus=8, workload=workload, **KNOBS))
    by_kind = docs_by_kind(docs)
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "vision"
    template = pod_of(by_kind["Job" if workload == "job" else "JobSet"])
    assert template["metadata"]["labels"]["example.com/cost-center"] == "4711"
    assert template["metadata"]["annotations"] == {"example.com/owner": "a b, c"}
    pod = template["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "ib", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                                   "topology.kubernetes.io/zone": "eu-1a"}
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]},
            {"key": "example.com/gen", "operator": "NotIn", "values": ["a100-40g"]},
            {"key": "example.com/drain", "operator": "DoesNotExist"}]}]}
    assert pod["schedulerName"] == "gang-scheduler"
    (container,) = pod["containers"]
    assert (container["resources"]["requests"]["example.com/fpga"] == "2"
            == container["resources"]["limits"]["example.com/fpga"])
    job = by_kind["Job"] if workload == "job" else {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pt-leader-0", "namespace": "x"},
        "spec": by_kind["JobSet"]["spec"]["replicatedJobs"][0]["template"]["spec"]}
    kubernetes_validate.validate(job, version, strict=True)


def test_the_rdma_profile(render):
    docs = docs_by_kind(render(make_spec("pt", nodes=2, gpus=8, rdma=True, rdma_network="ib-sriov",
                                         env=(("NCCL_IB_HCA", "mlx5_0"), ("NCCL_NET", "Socket")))))
    template = docs["Job"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "ib-sriov"}
    (container,) = template["spec"]["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert container["resources"]["limits"]["rdma/hca_shared_devices_a"] == "1"
    env = [(v["name"], v.get("value")) for v in container["env"]]
    assert ("NCCL_IB_DISABLE", "0") in env
    # the user's own --env wins over the profile's, and each name appears once
    assert ([e for e in env if e[0] == "NCCL_NET"] == [("NCCL_NET", "Socket")]
            and ("NCCL_IB_HCA", "mlx5_0") in env)
    kubernetes_validate.validate(docs["Job"], "1.33.0", strict=True)
    # without the profile: nothing added, every capability dropped
    plain = docs_by_kind(render(make_spec("pt", nodes=2, gpus=8)))["Job"]["spec"]["template"]
    assert plain["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "annotations" not in plain["metadata"]


@pytest.mark.parametrize("setting,complaint", [
    ("tolerations=ib=true:Sometimes", "the effect must be one of NoSchedule, PreferNoSchedule, NoExecute"),
    ("tolerations=Bad Key", "toleration key 'Bad Key' is not a valid name"),
    ("node_selector=zone", "node_selector 'zone': expected KEY=VALUE"),
    ("node_selector=zone=a b", "is not a label value"),
    ("node_affinity=-zone", "is not a valid name"),
    ("labels=app.kubernetes.io/instance=x", "label app.kubernetes.io/instance is set by simsiam-job itself"),
    ("labels=kueue.x-k8s.io/queue-name=q", "use --set queue"),
    ("labels=a=1,a=2", "label a is given twice"),
    ("extra_resources=cpu=4", "set it with --set cpu/memory or --gpus"),
    ("extra_resources=fpga=1", "an extended resource needs a vendor prefix"),
    ("extra_resources=example.com/fpga=0.5", "extended resources are whole numbers"),
    ("extra_resources=example.com/fpga=lots", "is not a Kubernetes quantity"),
    ("queue=Team_A", "queue 'Team_A' is not a DNS-1123 name"),
    ("workload_priority=High", "is not a DNS-1123 name"),
    ("scheduler_name=My Scheduler", "is not a DNS-1123 name"),
    ("start_timeout=0", "start_timeout must be at least 1 second"),
    ("rdma_resource=rdma", "rdma_resource 'rdma': expected KEY=VALUE"),
])
def test_mistakes_are_one_line_at_render(tmp_path, setting, complaint):
    env = {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}
    extra = ["--set", "rdma=true"] if setting.startswith("rdma") else []
    out = run_cli(["render", "pretrain", "-b", "kubernetes", "--gpus", "8", "--image", "x", "--set", setting,
                   *extra], env)
    assert_one_line_error(out, 2, complaint)


def test_render_shows_every_knob_in_what_it_prints(tmp_path):
    """`render` prints exactly what submit sends: the knobs are in it, in kubectl's form."""
    env = {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}
    out = run_cli(["render", "pretrain", "-b", "kubernetes", "--gpus", "8", "--image", "x",
                   "--set", "queue=team-a",
                   "--set", "workload_priority=high", "--set", "tolerations=ib=true:NoSchedule",
                   "--set", "scheduler_name=gang", "--set", "rdma=true"], env, check=True).stdout
    for text in ("kueue.x-k8s.io/queue-name: team-a", "kueue.x-k8s.io/priority-class: high", "suspend: true",
                 "key: ib", "schedulerName: gang", "- IPC_LOCK", "rdma/hca_shared_devices_a: '1'",
                 "NCCL_IB_DISABLE"):
        assert text in out, text
