"""Jobs on the Kubernetes test cluster's two real nodes (test_nodes*.py, test_jobset_nodes.py,
test_kueue_nodes.py): nodes is the ``nodes`` fixture of tests/k8s/conftest.py."""

from __future__ import annotations

import subprocess

from helpers.k8s import E2E_NAMESPACE

IMAGE = "localhost/simsiam:test-cpu"
# Small requests: the nodes share two cores.
ON_REAL_NODES = ["--backend", "kubernetes", "--set", f"namespace={E2E_NAMESPACE}", "--gpus", "0",
                 "--image", IMAGE, "--data", "pvc:data", "--output", "pvc:output",
                 "--set", "cpu=500m", "--set", "memory=3Gi"]


def kubectl(nodes, *args, check=True, input=None):
    return subprocess.run(["kubectl", *args], env=nodes["env"], capture_output=True, text=True,
                          check=check, input=input, timeout=120)
