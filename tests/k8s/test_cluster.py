"""End to end against a real control plane: etcd, kube-apiserver, controller-manager (the Job
controller), scheduler, and kwok standing in for kubelets on fake nodes (3 x 8 A100, one CPU node,
one tainted H100 node). Containers do not run: a test ends a pod by annotating it
(``simsiam-test/exit``: an exit code or ``disrupt``), which kwok's stages in
tests/cluster/k8s/kwok.yaml turn into the pod's final status.

Everything goes through the ``simsiam-job`` CLI a user types, except where a test must count API
calls or play the kubelet's part.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers.k8s import OUTPUT_CLAIM, docs_by_kind, make_spec, wait_until
from helpers.k8s_control_plane import CLI, PYTHONPATH, end_pod, run_cli, status, submit

pytestmark = pytest.mark.k8s

A100_NODES = {"a100-0", "a100-1", "a100-2"}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def pods_of(kube, ns, name):
    core, _, _ = kube
    return core.list_namespaced_pod(ns, label_selector=f"{JOB_NAME_LABEL}={name}").items


def running_pods(kube, ns, name, count):
    pods = [p for p in pods_of(kube, ns, name) if p.status.phase == "Running"]
    return pods if len(pods) == count else None


# ---- lifecycle ---------------------------------------------------------------------------------------

def test_two_by_eight_waits_for_free_a100s_runs_and_succeeds(cluster, kube, ns):
    core, batch, _ = kube
    # Two of the three A100 nodes are busy, so only one of our two pods fits at first.
    submit(cluster, ns, "blocker", "--nodes", "2", "--gpus", "8")
    blockers = wait_until(lambda: running_pods(kube, ns, "blocker", 2), what="blocker running")

    ref = submit(cluster, ns, "pt", "--nodes", "2", "--gpus", "8").stdout.strip()
    assert ref == f"kubernetes://{ns}/pt"
    labels = {"app.kubernetes.io/name": "simsiam", "app.kubernetes.io/managed-by": "simsiam-job",
              "app.kubernetes.io/instance": "pt", "simsiam-job/phase": "pretrain"}
    job = batch.read_namespaced_job("pt", ns)
    assert job.metadata.labels == labels
    for obj in (core.read_namespaced_config_map("pt", ns), core.read_namespaced_service("pt", ns)):
        assert obj.metadata.labels == labels
        (owner,) = obj.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("Job", "pt", job.metadata.uid)

    pending = wait_until(lambda: (s := status(cluster, ref))["state"] == "PENDING"
                         and "Insufficient nvidia.com/gpu" in (s["reason"] or "")
                         and any(n["state"] == "RUNNING" for n in s["nodes"]) and s,
                         what="one pod running, the other unschedulable")
    assert [n["host"] in A100_NODES for n in pending["nodes"]].count(True) == 1

    for pod in blockers:
        end_pod(kube, pod, "0")
    pods = wait_until(lambda: running_pods(kube, ns, "pt", 2), what="both pods running")
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]
                  for p in pods) == ["0", "1"]
    hosts = {p.spec.node_name for p in pods}
    assert hosts <= A100_NODES and len(hosts) == 2
    assert all(p.spec.hostname in ("pt-0", "pt-1") and p.spec.subdomain == "pt" for p in pods)
    running = status(cluster, ref)
    assert running["state"] == "RUNNING"
    assert {n["host"] for n in running["nodes"]} == hosts

    for pod in pods:
        end_pod(kube, pod, "0")
    wait_until(lambda: status(cluster, ref)["state"] == "SUCCEEDED", what="SUCCEEDED")
    text = run_cli(cluster, "status", ref).stdout
    assert "SUCCEEDED" in text


def test_more_gpus_than_any_node_has_stays_pending_with_the_schedulers_reason(cluster, ns):
    ref = submit(cluster, ns, "huge", "--nodes", "1", "--gpus", "16").stdout.strip()
    result = wait_until(lambda: (s := status(cluster, ref))["reason"] and s, what="a reason")
    assert result["state"] == "PENDING"
    assert "Unschedulable" in result["reason"] and "Insufficient nvidia.com/gpu" in result["reason"]
    text = run_cli(cluster, "status", ref).stdout
    assert "PENDING" in text and "Insufficient nvidia.com/gpu" in text


def test_gpu_pods_tolerate_the_gpu_taint_and_the_product_selector_picks_the_node(cluster, kube, ns):
    submit(cluster, ns, "h100", "--gpus", "8", "--set", "gpu_product=NVIDIA-H100-80GB-HBM3")
    (pod,) = wait_until(lambda: running_pods(kube, ns, "h100", 1), what="pod running")
    assert pod.spec.node_name == "h100-0"  # the only H100 node, and it carries the nvidia.com/gpu taint
    submit(cluster, ns, "cpu", "--gpus", "0", "--nodes", "3")
    pods = wait_until(lambda: running_pods(kube, ns, "cpu", 3), what="CPU pods running")
    assert "h100-0" not in {p.spec.node_name for p in pods}  # no toleration without GPUs


def test_exit_code_2_fails_the_job_without_retries(cluster, kube, ns):
    ref = submit(cluster, ns, "badcfg", "--gpus", "1").stdout.strip()
    (pod,) = wait_until(lambda: running_pods(kube, ns, "badcfg", 1), what="pod running")
    end_pod(kube, pod, "2")
    result = wait_until(lambda: (s := status(cluster, ref))["state"] == "FAILED" and s, what="FAILED")
    assert "PodFailurePolicy" in result["reason"]
    assert result["nodes"][0]["exit_code"] == 2
    # The Failed condition is final: the Job controller creates no pod after it. Its events say how
    # many it created before.
    core, _, _ = kube
    created = [e for e in core.list_namespaced_event(ns, field_selector="involvedObject.name=badcfg").items
               if e.reason == "SuccessfulCreate"]
    assert len(created) == 1 and len(pods_of(kube, ns, "badcfg")) == 1


def test_a_disruption_is_retried_without_counting_as_a_failure(cluster, kube, ns):
    # backoffLimit 0: any counted failure would fail the job at once.
    ref = submit(cluster, ns, "preempted", "--gpus", "1", "--set", "backoff_limit=0").stdout.strip()
    (first,) = wait_until(lambda: running_pods(kube, ns, "preempted", 1), what="pod running")
    end_pod(kube, first, "disrupt")
    (second,) = wait_until(
        lambda: [p for p in running_pods(kube, ns, "preempted", 1) or []
                 if p.metadata.name != first.metadata.name], what="replacement pod running")
    result = status(cluster, ref)
    assert result["state"] == "RUNNING" and result["nodes"][0]["restarts"] == 1
    assert result["detail"]["pods"]["0"] == second.metadata.name
    end_pod(kube, second, "0")
    wait_until(lambda: status(cluster, ref)["state"] == "SUCCEEDED", what="SUCCEEDED")


def test_resume_starts_attempt_2_of_a_failed_job_and_refuses_a_finished_one(cluster, kube, ns):
    # backoffLimit 0: the first exit 1 fails the Job.
    ref = submit(cluster, ns, "again", "--gpus", "1", "--set", "backoff_limit=0").stdout.strip()
    (first,) = wait_until(lambda: running_pods(kube, ns, "again", 1), what="pod running")
    end_pod(kube, first, "1")
    wait_until(lambda: status(cluster, ref)["state"] == "FAILED", what="FAILED")
    core, _, _ = kube
    config = core.read_namespaced_config_map("again", ns).data
    assert run_cli(cluster, "resume", ref).stdout.strip() == ref
    (second,) = wait_until(lambda: running_pods(kube, ns, "again", 1), what="attempt 2 running")
    assert second.metadata.name != first.metadata.name
    result = status(cluster, ref)
    assert result["state"] == "RUNNING" and result["attempt"] == 2
    assert core.read_namespaced_config_map("again", ns).data == config      # the same config
    end_pod(kube, second, "0")
    wait_until(lambda: status(cluster, ref)["state"] == "SUCCEEDED", what="SUCCEEDED")
    listed = run_cli(cluster, "list", "--backend", "kubernetes",
                     extra_env={"SIMSIAM_JOB_KUBERNETES_NAMESPACE": ns}).stdout
    assert [ref, "pretrain", "SUCCEEDED", "2"] in [line.split()[:4] for line in listed.splitlines()], listed
    refused = run_cli(cluster, "resume", ref, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "succeeded" in refused.stderr.lower(), refused.stderr


# ---- cancel, list, render | kubectl --------------------------------------------------------------------

def test_cancel_removes_everything_and_list_finds_jobs_by_label(cluster, kube, ns):
    core, batch, _ = kube
    keep = submit(cluster, ns, "keep", "--gpus", "0").stdout.strip()
    ref = submit(cluster, ns, "gone", "--gpus", "0", "--nodes", "2").stdout.strip()
    wait_until(lambda: running_pods(kube, ns, "gone", 2), what="pods running")

    env = {"SIMSIAM_JOB_KUBERNETES_NAMESPACE": ns}
    listed = run_cli(cluster, "list", "--backend", "kubernetes", extra_env=env).stdout
    assert keep in listed and ref in listed
    everywhere = run_cli(cluster, "list", "--backend", "kubernetes", "--all").stdout
    assert keep in everywhere and ref in everywhere

    out = run_cli(cluster, "cancel", ref).stdout
    assert "cancelled" in out
    assert not pods_of(kube, ns, "gone")
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["keep"]
    assert [c.metadata.name for c in core.list_namespaced_config_map(
        ns, label_selector="app.kubernetes.io/instance=gone").items] == []
    wait_until(lambda: not core.list_namespaced_service(
        ns, label_selector="app.kubernetes.io/instance=gone").items, what="service collected")
    wait_until(lambda: not core.list_namespaced_config_map(
        ns, label_selector="app.kubernetes.io/instance=gone").items, what="config map collected")
    listed = run_cli(cluster, "list", "--backend", "kubernetes", extra_env=env).stdout
    assert keep in listed and ref not in listed


def test_render_piped_to_kubectl_apply_creates_the_same_objects(cluster, kube, ns):
    core, batch, _ = kube
    rendered = run_cli(cluster, "render", "pretrain", "--backend", "kubernetes", "--name", "piped",
                       "--nodes", "2", "--gpus", "8", "--image", "registry.example.com/simsiam:test",
                       "--set", f"namespace={ns}", "--output", OUTPUT_CLAIM).stdout
    applied = subprocess.run(["kubectl", "apply", "-f", "-"], input=rendered, capture_output=True,
                             text=True, env=cluster, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert "job.batch/piped created" in applied.stdout
    job = batch.read_namespaced_job("piped", ns)
    sent = docs_by_kind(list(yaml.safe_load_all(rendered)))["Job"]
    container = job.spec.template.spec.containers[0]
    assert container.command == sent["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job.spec.completions == 2 and job.spec.completion_mode == "Indexed"
    wait_until(lambda: running_pods(kube, ns, "piped", 2), what="pods running")
    shown = subprocess.run(["kubectl", "-n", ns, "get", "jobs,pods", "-l",
                            "app.kubernetes.io/managed-by=simsiam-job"], capture_output=True,
                           text=True, env=cluster, timeout=60)
    assert "job.batch/piped" in shown.stdout
    assert "pod/piped-0-" in shown.stdout and "pod/piped-1-" in shown.stdout
    # The CLI follows a job it did not submit.
    assert status(cluster, f"kubernetes://{ns}/piped")["state"] == "RUNNING"


# ---- server-side dry run and API errors ----------------------------------------------------------------

def test_server_dry_run_is_judged_by_the_api_server(cluster, kube, ns):
    core, batch, _ = kube
    ok = submit(cluster, ns, "dry", "--gpus", "8", "--dry-run", "server")
    assert ok.returncode == 0
    # What only the cluster knows (values are checked before anything is sent): the namespace.
    bad = run_cli(cluster, "submit", "pretrain", "--backend", "kubernetes", "--name", "dry", "--gpus", "8",
                  "--image", "registry.example.com/simsiam:test", "--set", f"namespace={ns}-gone",
                  "--dry-run", "server", check=False)
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and f'namespaces "{ns}-gone" not found' in bad.stderr
    assert batch.list_namespaced_job(ns).items == []
    assert core.list_namespaced_config_map(ns, label_selector="app.kubernetes.io/name=simsiam").items == []


def test_api_errors_are_one_line_with_the_servers_message(cluster, kube, ns):
    from kubernetes import client

    core, _, _ = kube
    submit(cluster, ns, "twice", "--gpus", "0")
    again = submit(cluster, ns, "twice", "--gpus", "0", check=False)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert 'jobs.batch "twice" already exists' in again.stderr and "pick another --name" in again.stderr

    # A leftover ConfigMap of the same name: the Job created before it must be removed again.
    core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="clash"), data={"mine": "yes"}))
    clash = submit(cluster, ns, "clash", "--gpus", "0", check=False)
    assert clash.returncode == 1 and 'configmaps "clash" already exists' in clash.stderr
    _, batch, _ = kube
    assert "clash" not in [j.metadata.name for j in batch.list_namespaced_job(ns).items]
    assert core.read_namespaced_config_map("clash", ns).data == {"mine": "yes"}

    missing = submit(cluster, "no-such-namespace", "x", "--gpus", "0", check=False)
    assert missing.returncode == 1 and 'namespaces "no-such-namespace" not found' in missing.stderr

    core.create_namespaced_resource_quota(ns, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-jobs"), spec=client.V1ResourceQuotaSpec(
            hard={"count/jobs.batch": "1"})))
    quota = wait_until(lambda: (r := submit(cluster, ns, "over", "--gpus", "0", check=False))
                       .returncode == 1 and "exceeded quota" in r.stderr and r, what="quota enforced")
    assert "ResourceQuota" in quota.stderr and len(quota.stderr.strip().splitlines()) == 1

    gone = run_cli(cluster, "status", f"kubernetes://{ns}/nope", check=False)
    assert gone.returncode == 1 and "no job 'nope'" in gone.stderr


def test_the_role_in_rbac_yaml_is_enough_and_without_it_the_user_is_told(cluster, kube, ns, tmp_path):
    """A service account's token stands in for a user: forbidden without the Role, then every
    command works with exactly the Role from k8s/rbac.yaml."""
    from kubernetes import client

    core, _, api = kube
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="alice")))
    token = core.create_namespaced_service_account_token(
        "alice", ns, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["https://kubernetes.default.svc"]))).status.token
    config = yaml.safe_load(Path(cluster["KUBECONFIG"]).read_text())
    config["users"] = [{"name": "alice", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "alice"
    config["contexts"][0]["context"]["namespace"] = ns
    alice = tmp_path / "alice.kubeconfig"
    alice.write_text(yaml.safe_dump(config))
    as_alice = {**cluster, "KUBECONFIG": str(alice)}

    denied = run_cli(as_alice, "submit", "pretrain", "--backend", "kubernetes", "--name", "mine",
                     "--image", "x", "--gpus", "0", check=False)
    assert denied.returncode == 1 and "forbidden" in denied.stderr
    assert "k8s/rbac.yaml" in denied.stderr and len(denied.stderr.strip().splitlines()) == 1

    rbac = Path(__file__).resolve().parents[2] / "k8s" / "rbac.yaml"
    subprocess.run(["kubectl", "-n", ns, "apply", "-f", str(rbac)], check=True, env=cluster,
                   capture_output=True)
    subprocess.run(["kubectl", "-n", ns, "create", "rolebinding", "alice", "--role=simsiam-job-user",
                    f"--serviceaccount={ns}:alice"], check=True, env=cluster, capture_output=True)
    ref = wait_until(lambda: (r := run_cli(as_alice, "submit", "pretrain", "--backend", "kubernetes",
                                           "--name", "mine", "--image", "x", "--gpus", "0",
                                           check=False)).returncode == 0 and r.stdout.strip(),
                     what="the Role to take effect")
    assert ref == f"kubernetes://{ns}/mine"
    wait_until(lambda: status(as_alice, ref)["state"] == "RUNNING", what="RUNNING")
    assert ref in run_cli(as_alice, "list", "--backend", "kubernetes").stdout
    (pod,) = pods_of(kube, ns, "mine")
    serve_log(kube, pod, tmp_path / "mine.log")
    write_log(tmp_path / "mine.log", "hello alice")
    assert wait_until(lambda: run_cli(as_alice, "logs", ref, check=False).stdout,
                      what="logs") == "hello alice\n"
    assert "cancelled" in run_cli(as_alice, "cancel", ref).stdout


# ---- bounded API calls ---------------------------------------------------------------------------------

def test_status_makes_the_same_small_number_of_api_calls_for_1_and_6_nodes(cluster, kube, ns,
                                                                            monkeypatch):
    from kubernetes.client import ApiClient

    from simsiam_job.backends.base import JobRef
    from simsiam_job.backends.kubernetes import KubernetesBackend, Options

    monkeypatch.setenv("KUBECONFIG", cluster["KUBECONFIG"])
    counted = {"n": 0}
    real = ApiClient.call_api

    def counting(self, *args, **kwargs):
        counted["n"] += 1
        return real(self, *args, **kwargs)

    calls = {}
    for nodes in (1, 6):
        name = f"count-{nodes}"
        backend = KubernetesBackend(Options(namespace=ns))
        backend.submit(make_spec(name, nodes=nodes, gpus=0, data=None, output=OUTPUT_CLAIM, namespace=ns))
        wait_until(lambda name=name, nodes=nodes: running_pods(kube, ns, name, nodes),
                   what=f"{nodes} pods running")
        monkeypatch.setattr(ApiClient, "call_api", counting)
        counted["n"] = 0
        result = backend.status(JobRef("kubernetes", f"{ns}/{name}"))
        calls[nodes] = counted["n"]
        monkeypatch.setattr(ApiClient, "call_api", real)
        assert len(result.nodes) == nodes and {n.state.value for n in result.nodes} == {"RUNNING"}
    # GET the Job, LIST its pods, and rank 0's log tail for the progress line.
    assert calls[1] == calls[6] == 3


# ---- logs (served by kwok from files, in the kubelet's CRI log format) ------------------------------------

def write_log(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        for line in lines:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
            f.write(f"{stamp} stdout F {line}\n")
            f.flush()
            time.sleep(0.01)


def serve_log(kube, pod, path: Path) -> None:
    """Tell kwok which file holds this pod's trainer log (its Logs resource)."""
    _, _, api = kube
    from kubernetes import client

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kwok.x-k8s.io", "v1alpha1", pod.metadata.namespace, "logs",
        {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
         "metadata": {"name": pod.metadata.name, "namespace": pod.metadata.namespace},
         "spec": {"logs": [{"containers": ["trainer"], "logsFile": str(path), "follow": True}]}})


def test_logs_rank_all_and_follow(cluster, kube, ns, tmp_path):
    ref = submit(cluster, ns, "talk", "--gpus", "8", "--nodes", "2").stdout.strip()
    pods = wait_until(lambda: running_pods(kube, ns, "talk", 2), what="pods running")
    files = {}
    for pod in pods:
        index = int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])
        files[index] = tmp_path / f"rank{index}.log"
        files[index].touch()
        serve_log(kube, pod, files[index])
    write_log(files[0], "epoch 0 step 1 loss 0.5")
    write_log(files[1], "rank one says hi")
    write_log(files[0], "epoch 0 step 2 loss 0.4")

    out = wait_until(lambda: (r := run_cli(cluster, "logs", ref, check=False)).returncode == 0
                     and "loss 0.4" in r.stdout and r.stdout, what="kwok serving logs")
    assert out.splitlines() == ["epoch 0 step 1 loss 0.5", "epoch 0 step 2 loss 0.4"]
    assert run_cli(cluster, "logs", ref, "--rank", "1").stdout.splitlines() == ["rank one says hi"]
    assert run_cli(cluster, "logs", ref, "--all").stdout.splitlines() == [
        "[rank 0] epoch 0 step 1 loss 0.5", "[rank 1] rank one says hi", "[rank 0] epoch 0 step 2 loss 0.4"]
    bad = run_cli(cluster, "logs", ref, "--rank", "5", check=False)
    assert bad.returncode == 2 and "ranks 0..1" in bad.stderr

    # status: the trainer's newest progress line in rank 0's log, and where the output lives.
    from trainer import contract

    record = {"type": "step", "epoch": 1, "epochs": 90, "step": 7, "steps_per_epoch": 626,
              "global_step": 7, "total_steps": 56340, "loss": -0.25, "lr": 0.05,
              "images_per_sec": 1234.5, "eta_seconds": 5400.0, "time": 1.7e9}
    write_log(files[0], contract.progress_line(record))
    assert wait_until(lambda: status(cluster, ref)["progress"], what="progress") == record
    shown = run_cli(cluster, "status", ref).stdout
    assert "progress: epoch 1/90  step 7/626  loss -0.2500  1234.5 img/s  ETA 1h30m" in shown
    assert f"output: pvc:{OUTPUT_CLAIM}/talk (in the pods: /output/talk)" in shown

    env = {**cluster, "SIMSIAM_JOB_CONFIG": "/dev/null", **PYTHONPATH}
    follower = subprocess.Popen([CLI, "logs", "-f", ref], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert follower.stdout.readline().strip() == "epoch 0 step 1 loss 0.5"
        assert follower.stdout.readline().strip() == "epoch 0 step 2 loss 0.4"
        assert follower.stdout.readline().strip() == contract.progress_line(record)
        write_log(files[0], "epoch 1 step 3 loss 0.3")
        assert follower.stdout.readline().strip() == "epoch 1 step 3 loss 0.3"
        for pod in pods:
            end_pod(kube, pod, "0")
        assert follower.wait(timeout=60) == 0  # -f ends with the job
    finally:
        follower.kill()
