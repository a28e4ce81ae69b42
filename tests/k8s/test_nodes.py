"""End to end on real pods: two real worker nodes of the test cluster (a kubelet, containerd, runc
and CNI bridge networking each, every node in its own network namespace; CoreDNS for cluster DNS)
run the image built from docker/Dockerfile.cpu. Everything a user does goes through the
``simsiam-job`` CLI; the tests read what the jobs wrote where the output claim keeps its files.

Namespace simsiam-e2e (tests/cluster/k8s.sh up) enforces the "restricted" Pod Security level and
sends its pods to the real nodes; its claims are `data` (64 train / 16 val Fashion-MNIST images)
and `output`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.cli import TINY, run_cli, wait_for
from helpers.k8s import E2E_NAMESPACE, REAL_NODE_LABEL
from helpers.k8s_nodes import IMAGE, ON_REAL_NODES, kubectl
from helpers.paths import BIN, REPO

pytestmark = [pytest.mark.k8s_nodes, pytest.mark.slow]

REAL_NODES = {"worker-1", "worker-2"}


def pods(nodes, job) -> list[dict]:
    out = kubectl(nodes, "-n", E2E_NAMESPACE, "get", "pods", "-l", f"batch.kubernetes.io/job-name={job}",
                  "-o", "json").stdout
    return sorted(json.loads(out)["items"],
                  key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def rank_state_hook(nodes) -> list[str]:
    """Every rank's ``simsiam-train`` also saves its final parameters (the Slurm tests' hook): a
    sitecustomize module on PYTHONPATH loads the hook into each simsiam-train process of the pods
    (PATH is the image's own: --env may not set it). It lives on the data claim, which the pods
    mount read-only at /data."""
    hooks = Path(nodes["data"]) / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests" / "slurm" / "rank_state_train.py", hooks / "rank_state_train.py")
    (hooks / "sitecustomize.py").write_text(
        "import os\nimport sys\n\n"
        "if os.path.basename(sys.argv[0]) == 'simsiam-train':\n"
        "    import rank_state_train  # noqa: F401  (wraps the pretraining task)\n")
    return ["--env", "PYTHONPATH=/data/hooks"]


def test_two_node_pretrain_on_real_pods_then_a_probe(nodes, name):
    import paddle

    env, output = nodes["env"], Path(nodes["output"])
    ref = run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_REAL_NODES, *TINY,
                   "-o", "Global.epochs=4", *rank_state_hook(nodes),
                   "--env", f"RANK_STATE_DIR=/output/{name}/rank-states"], env, check=True).stdout.strip()
    assert ref == f"kubernetes://{E2E_NAMESPACE}/{name}"

    running, _ = wait_for(ref, env, lambda st: st["state"] == "RUNNING", what="RUNNING", timeout=600)
    assert {n["rank"]: n["state"] for n in running["nodes"]} == {0: "RUNNING", 1: "RUNNING"}
    assert {n["host"] for n in running["nodes"]} == REAL_NODES      # one pod on each real node
    follow = subprocess.Popen([str(BIN / "simsiam-job"), "logs", "-f", ref], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    final, seen = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    followed, errors = follow.communicate(timeout=120)   # -f returns by itself once the job ended
    assert follow.returncode == 0, errors
    assert "epoch 4/4  step 4/4" in followed, followed[-3000:]

    # Rank 1 met rank 0 at rank 0's own pod IP (announced in the round files on the output claim).
    rank0_pod, rank1_pod = pods(nodes, name)
    logs = run_cli(["logs", "--all", ref], env, check=True).stdout
    rank0_ip = rank0_pod["status"]["podIP"]
    assert f"[rank 0] rendezvous: node 0, master {rank0_ip}:6768 ({name}-0.{name})" in logs, logs[-3000:]
    assert f"[rank 1] rendezvous: node 1, master {rank0_ip}:6768 ({name}-0.{name})" in logs, logs[-3000:]
    assert rank0_pod["status"]["hostIP"] != rank1_pod["status"]["hostIP"]

    # The output contract, on the output claim; 64 images, 8 per rank, 2 ranks, 4 epochs.
    out = output / name
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["DataLoader"]["Train"]["dataset"]["root"] == "/data/train"
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"step"' in line]
    assert [s["global_step"] for s in steps] == list(range(1, 17))
    assert (out / "encoder.pdparams").is_file() and list((out / "checkpoints").glob("*.pdckpt"))
    assert "2 process(es)" in (out / "train.log").read_text()
    rank_states = [paddle.load(str(out / "rank-states" / f"rank{r}.pdparams")) for r in (0, 1)]
    assert rank_states[0].keys() == rank_states[1].keys()
    for key in rank_states[0]:
        np.testing.assert_array_equal(rank_states[0][key].numpy(), rank_states[1][key].numpy(), err_msg=key)

    # The probe reads the encoder through the pretrain job's reference, on real pods too.
    probe = f"{name}-lp"
    probe_ref = run_cli(["submit", "linear-probe", "--from", ref, "--nodes", "2", "--name", probe,
                         *ON_REAL_NODES,
                         "-c", REPO / "trainer/configs/simsiam_cifar_resnet18_fmnist_lp_cpu.yaml",
                         "-o", "Model.width=4", "-o", "Global.epochs=1",
                         "-o", "DataLoader.Train.sampler.batch_size=8"], env, check=True).stdout.strip()
    wait_for(probe_ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    evaluated = json.loads((output / probe / "eval.json").read_text())
    assert evaluated["pretrained_model"] == f"/output/{name}/encoder.pdparams"
    assert evaluated["last"]["images"] == 16      # every validation image once across both pods


def test_cancel_mid_run_checkpoints_on_the_output_claim_and_removes_the_job(nodes, name):
    env, output = nodes["env"], Path(nodes["output"])
    # No epoch-end checkpoint within reach: any checkpoint found was written on SIGTERM.
    ref = run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_REAL_NODES, *TINY,
                   "-o", "Global.epochs=300", "-o", "Global.save_interval=300"],
                  env, check=True).stdout.strip()
    metrics = output / name / "metrics.jsonl"

    def trained_steps():
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        return sum('"step"' in line for line in lines)

    deadline = time.monotonic() + 600
    while trained_steps() < 3:
        assert time.monotonic() < deadline, run_cli(["logs", "--all", "--tail", "40", ref], env).stdout
        assert run_cli(["status", "--json", ref], env, check=True).stdout.count('"FAILED"') == 0
        time.sleep(1)

    # Security as the kubelet enforces it, seen from inside the running container: uid/gid 1000, no
    # privilege escalation, no capabilities, seccomp on, read-only root and config, writable /tmp.
    rank0_pod = pods(nodes, name)[0]["metadata"]["name"]
    inside = kubectl(nodes, "-n", E2E_NAMESPACE, "exec", rank0_pod, "--", "sh", "-c",
                     "id -u; id -g; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status; "
                     "grep '^Seccomp:' /proc/self/status; "
                     "touch /etc/simsiam/x 2>&1; touch /opt/x 2>&1; touch /tmp/x && echo tmp-writable").stdout
    lines = inside.splitlines()
    assert lines[:2] == ["1000", "1000"], inside
    assert lines[2].split() == ["NoNewPrivs:", "1"] and lines[3].split() == ["CapEff:", "0000000000000000"]
    assert lines[4].split() == ["Seccomp:", "2"]          # a filter: the runtime's default profile
    assert "'/etc/simsiam/x': Read-only file system" in inside and "'/opt/x': Read-only file system" in inside
    assert lines[-1] == "tmp-writable"

    said = run_cli(["cancel", ref], env, check=True, timeout=300).stdout
    assert said.startswith(f"cancelled {ref}"), said
    checkpoints = list((output / name / "checkpoints").glob("*.pdckpt"))
    assert len(checkpoints) == 1, checkpoints
    # Whichever pod got TERM first, both ranks stopped at the same step (the trainer's workers log
    # to the launcher's log directory, on the output claim).
    worker_logs = [p.read_text() for p in sorted((output / name / "launch-logs").glob("rank-*/workerlog.0"))]
    assert len(worker_logs) == 2 and "SIGTERM received" in "".join(worker_logs)
    stops = [line.split("stopped by SIGTERM ")[1] for text in worker_logs for line in text.splitlines()
             if "stopped by SIGTERM at epoch" in line]
    assert len(stops) == 2 and stops[0] == stops[1], stops     # one line per rank, the same step
    left = kubectl(nodes, "-n", E2E_NAMESPACE, "get", "jobs,pods,services,configmaps",
                   "-o", "name").stdout.split()
    assert not [obj for obj in left if name in obj], left


def test_restricted_namespace_admits_our_pods_and_rejects_a_root_pod(nodes):
    """The namespace the jobs above ran in enforces Pod Security "restricted" for real."""
    namespace = json.loads(kubectl(nodes, "get", "namespace", E2E_NAMESPACE, "-o", "json").stdout)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    root_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "as-root"},
                "spec": {"containers": [{"name": "c", "image": IMAGE, "command": ["true"]}]}}
    refused = kubectl(nodes, "-n", E2E_NAMESPACE, "apply", "-f", "-", input=json.dumps(root_pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity \"restricted" in refused.stderr, refused.stderr
    # Our own pods pass the same admission: the pod of a rendered two-node job, as a dry run.
    rendered = run_cli(["render", "pretrain", "--nodes", "2", "--name", "admitted", *ON_REAL_NODES, *TINY],
                       nodes["env"], check=True).stdout
    job = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Job")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "admitted-0"},
           "spec": job["spec"]["template"]["spec"]}
    admitted = kubectl(nodes, "-n", E2E_NAMESPACE, "create", "--dry-run=server", "-f", "-",
                       input=json.dumps(pod), check=False)
    assert admitted.returncode == 0, admitted.stderr
    real = kubectl(nodes, "get", "nodes", "-l", REAL_NODE_LABEL, "-o", "json").stdout
    assert {n["metadata"]["name"] for n in json.loads(real)["items"]} == REAL_NODES
