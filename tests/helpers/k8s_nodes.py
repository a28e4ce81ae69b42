"""Jobs on the Kubernetes test cluster's two real nodes (test_nodes*.py, test_jobset_nodes.py,
test_kueue_nodes.py): nodes is the ``nodes`` fixture of tests/k8s/conftest.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from helpers.cli import run_cli
from helpers.k8s import E2E_NAMESPACE

IMAGE = "localhost/simsiam:test-cpu"
# Small requests: the nodes share two cores.
ON_REAL_NODES = ["--backend", "kubernetes", "--set", f"namespace={E2E_NAMESPACE}", "--gpus", "0",
                 "--image", IMAGE, "--data", "pvc:data", "--output", "pvc:output",
                 "--set", "cpu=500m", "--set", "memory=3Gi"]


def kubectl(nodes, *args, check=True, input=None):
    return subprocess.run(["kubectl", *args], env=nodes["env"], capture_output=True, text=True,
                          check=check, input=input, timeout=120)


def pods_labelled(nodes, selector: str) -> list[dict]:
    out = kubectl(nodes, "-n", E2E_NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout
    return json.loads(out)["items"]


def step_records(metrics: Path) -> list[dict]:
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return [r for r in map(json.loads, lines) if r.get("type") == "step"]


def wait_for_steps(metrics: Path, count: int, ref, env, timeout: float = 600) -> None:
    """Until rank 0 has written `count` step records; on timeout the job's last log lines fail the test."""
    deadline = time.monotonic() + timeout
    while len(step_records(metrics)) < count:
        assert time.monotonic() < deadline, run_cli(["logs", "--all", "--tail", "40", ref], env).stdout
        time.sleep(0.5)


def lose_pod(nodes, pod_name: str, how: str) -> None:
    """`how`: "evicted" through the Eviction API (as a node drain does), or "deleted"."""
    if how == "evicted":
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": pod_name, "namespace": E2E_NAMESPACE}}
        kubectl(nodes, "create", "--raw", f"/api/v1/namespaces/{E2E_NAMESPACE}/pods/{pod_name}/eviction",
                "-f", "-", input=json.dumps(eviction))
    else:
        kubectl(nodes, "-n", E2E_NAMESPACE, "delete", "pod", pod_name, "--wait=false")


def indexed_pod(nodes, job, index: int) -> dict:
    """The Indexed Job's one running pod for completion index `index`."""
    (pod,) = [p for p in pods_labelled(nodes, f"batch.kubernetes.io/job-name={job}")
              if p["status"].get("phase") == "Running"
              and p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(index)]
    return pod


def signal_trainers(nodes, pod_name: str, signal_name: str) -> None:
    """Send every ``simsiam-train`` process in the pod SIGKILL or SIGSTOP ("KILL", "STOP"): only
    the trainer ends (or freezes), its pod and node live on."""
    script = ("import os, signal\n"
              "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
              "    try:\n"
              "        if int(pid) != os.getpid() and "
              "b'simsiam-train' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
              f"            os.kill(int(pid), signal.SIG{signal_name})\n"
              "    except OSError:\n"
              "        pass\n")
    kubectl(nodes, "-n", E2E_NAMESPACE, "exec", pod_name, "--", "python", "-c", script)
