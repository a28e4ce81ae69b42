"""The ``simsiam-job`` CLI against the kwok control plane (test_cluster.py, test_shared_cluster.py):
cluster is the ``cluster`` fixture's environment, kube the ``kube`` fixture's clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.k8s import OUTPUT_CLAIM

CLI = str(Path(sys.executable).parent / "simsiam-job")
# The CLI runs the code under test, wherever pytest found it.
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def run_cli(cluster, *args, input: str | None = None, check: bool = True, extra_env=None):
    env = {**cluster, "SIMSIAM_JOB_CONFIG": "/dev/null", **PYTHONPATH, **(extra_env or {})}
    out = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, input=input,
                         timeout=120)
    if check:
        assert out.returncode == 0, f"simsiam-job {' '.join(args)}: {out.stderr}"
    return out


def submit(cluster, ns, name, *args, **kw):
    return run_cli(cluster, "submit", "pretrain", "--backend", "kubernetes", "--name", name,
                   "--image", "registry.example.com/simsiam:test", "--set", f"namespace={ns}",
                   "--set", f"output_pvc={OUTPUT_CLAIM}", *args, **kw)


def status(cluster, ref) -> dict:
    return json.loads(run_cli(cluster, "status", ref, "--json").stdout)


def end_pod(kube, pod, outcome: str):
    """Play the kubelet: the pod's container exits with `outcome` (a code) or it is disrupted."""
    core, _, _ = kube
    core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                              {"metadata": {"annotations": {"simsiam-test/exit": outcome}}})
