"""Rendered manifests, checked without a cluster: shape, safety and schema validity."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes_validate
import pytest
from helpers.cli import assert_one_line_error, run_cli
from helpers.k8s import docs_by_kind, make_spec

from simsiam_job.backends.kubernetes import KubernetesBackend, Options
from simsiam_job.backends.kubernetes.render import parse_claim
from simsiam_job.errors import UsageError

K8S_VERSIONS = [f"1.{minor}.0" for minor in range(28, 38)]
SHAPES = [(1, 1), (2, 8), (16, 8)]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("nodes,gpus", SHAPES)
@pytest.mark.parametrize("volumes", [True, False], ids=["volumes", "no-volumes"])
@pytest.mark.parametrize("gpu_product", ["NVIDIA-A100-SXM4-80GB", ""], ids=["selector", "no-selector"])
def test_manifests_validate_strictly(render, version, nodes, gpus, volumes, gpu_product):
    # A job on several nodes always has an output claim (its ranks share checkpoints there).
    spec = make_spec(nodes=nodes, gpus=gpus, data="imagenet/v1" if volumes else None,
                     output="results" if volumes or nodes > 1 else None, gpu_product=gpu_product)
    docs = render(spec)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job"]
    for doc in docs:
        # Raises with the offending field when the schema of that version rejects the object.
        kubernetes_validate.validate(doc, version, strict=True)
    pod = docs_by_kind(docs)["Job"]["spec"]["template"]["spec"]
    assert ("nodeSelector" in pod) == bool(gpu_product)
    assert ({v["name"] for v in pod["volumes"]} >= {"data", "output"}) == volumes
    output = next(v for v in pod["volumes"] if v["name"] == "output")
    assert ("persistentVolumeClaim" in output) == (volumes or nodes > 1)


def test_a_multi_node_job_without_an_output_claim_is_refused_in_one_line(tmp_path):
    """Each pod's emptyDir would hold its own checkpoints: after a restart the ranks could never
    resume from the same one."""
    env = {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}
    refused = run_cli(["render", "pretrain", "-b", "kubernetes", "--nodes", "2", "--gpus", "8",
                       "--image", "x", "--data", "imagenet"], env)
    assert_one_line_error(refused, 2, "a job on 2 nodes needs an output claim")
    for ok in (["--nodes", "2", "--output", "results"], ["--nodes", "2", "--set", "output_pvc=results"],
               ["--nodes", "1"]):
        run_cli(["render", "pretrain", "-b", "kubernetes", "--gpus", "8", "--image", "x", *ok], env,
                check=True)


def test_job_shape_two_nodes_eight_gpus(render):
    docs = docs_by_kind(render(make_spec("pt", nodes=2, gpus=8, env=(("NCCL_DEBUG", "INFO"),),
                                         image_pull_secrets=("regcred",), priority_class="high",
                                         service_account="trainer", backoff_limit=5)))
    job, svc, cm = docs["Job"], docs["Service"], docs["ConfigMap"]
    labels = {"app.kubernetes.io/name": "simsiam", "app.kubernetes.io/managed-by": "simsiam-job",
              "app.kubernetes.io/instance": "pt", "simsiam-job/phase": "pretrain"}
    for obj in (job, svc, cm, job["spec"]["template"]):
        assert obj["metadata"]["labels"] == labels
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["backoffLimit"] == 5
    rules = job["spec"]["podFailurePolicy"]["rules"]   # (tests/k8s/test_failure_policy.py: what they mean)
    assert [r["action"] for r in rules] == ["FailJob", "Ignore", "Ignore"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == svc["metadata"]["name"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "high" and pod["serviceAccountName"] == "trainer"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    argv = container["command"]
    # Rank 0's IP, not its name, becomes --master (paddle's master listens only on its own IP):
    # the pod finds it first, then runs paddle's launcher.
    assert argv[:3] == ["python", "-m", "trainer.rendezvous"] and "--master" not in argv
    assert argv[argv.index("--rank0-host") + 1] == "pt-0.pt" and argv[argv.index("--port") + 1] == "6768"
    assert argv[argv.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert argv[argv.index("--pod-ip") + 1] == "$(POD_IP)"
    # Numbered rounds on the output claim keep a restarted group apart from the one before.
    assert argv[argv.index("--rounds-dir") + 1] == "/output/pt/rendezvous"
    assert {"name": "SIMSIAM_JOB_NAME", "value": "pt"} in container["env"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
    assert argv[argv.index("--") + 1:][:3] == ["python", "-m", "paddle.distributed.launch"]
    assert argv[argv.index("--nnodes") + 1] == "2"
    assert argv[argv.index("--rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert argv[argv.index("--nproc_per_node") + 1] == "8" and "--devices" not in argv
    trainer = argv[argv.index("simsiam-train"):]
    assert trainer[1:3] == ["-c", "/etc/simsiam/config.yaml"]
    assert 'Global.output_dir="/output/pt"' in trainer and "Global.auto_resume=true" in trainer
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in container["env"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True and mounts["data"]["mountPath"] == "/data"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert mounts["config"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    # Writable paths under the read-only root: scratch space and HOME.
    assert {mounts[v]["mountPath"]: volumes[v]["emptyDir"] for v in ("tmp", "home")} == {
        "/tmp": {}, "/home/simsiam": {}}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"]["config.yaml"] == make_spec().config_yaml


def test_single_node_cpu_job_has_no_gpu_parts(render):
    pod = docs_by_kind(render(make_spec(nodes=1, gpus=0)))["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    # the node's supervisor (it reports how the node ended), with nobody to meet, then the launcher
    command = container["command"]
    launcher = command.index("--") + 1
    assert command[:5] == ["python", "-m", "trainer.rendezvous", "--node-rank", "$(JOB_COMPLETION_INDEX)"]
    assert "--rank0-host" not in command[:launcher]
    assert command[launcher:launcher + 3] == ["python", "-m", "paddle.distributed.launch"]
    assert "--master" not in command and "--nproc_per_node" in command
    assert pod["automountServiceAccountToken"] is False


def test_hostile_values_stay_values(render):
    """Values that look like YAML or shell syntax reach the objects exactly as given."""
    nasty = 'x"; rm -rf / #\n: {a: b}\n- [c]'
    spec = make_spec(env=(("NOTE", nasty), ("EMPTY", "")), gpu_product="yes")
    docs = docs_by_kind(render(spec))
    container = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "NOTE", "value": nasty} in container["env"]
    assert {"name": "EMPTY", "value": ""} in container["env"]
    assert docs["Job"]["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "yes"}


@pytest.mark.parametrize("location,claim,sub", [("data", "data", ""), ("pvc:data/imagenet/2012", "data",
                                                 "imagenet/2012"), ("a.b/c/", "a.b", "c")])
def test_claim_locations(location, claim, sub):
    assert parse_claim(location, "--data") == (claim_sub := parse_claim(location, "--data"))
    assert (claim_sub.claim, claim_sub.sub_path) == (claim, sub)


@pytest.mark.parametrize("location", ["/abs/path", "Data", "data/../etc", "pvc:", "a_b"])
def test_bad_claim_locations_are_usage_errors(render, location):
    with pytest.raises(UsageError, match="PersistentVolumeClaim|sub-path"):
        render(make_spec(data=location))


def test_render_needs_no_cluster_and_no_kubernetes_client(tmp_path):
    """Rendering reads no cluster, and importing the backend does not import the client."""
    code = (
        "import sys; import simsiam_job.backends.kubernetes as k;"
        "assert 'kubernetes' not in sys.modules, 'client imported at module import';"
        "from helpers.k8s import make_spec; s = make_spec(namespace='ns');"
        "print(k.KubernetesBackend(s.options).render(s).text)"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing"),
           "PYTHONPATH": __file__.rsplit("/", 2)[0]}  # tests/, for tests/helpers/
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "kind: Job" in out.stdout and "namespace: ns" in out.stdout


def test_namespace_comes_from_kubeconfig_context(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: [{name: c, cluster: {server: "
        "'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts:\n"
        "- {name: a, context: {cluster: c, user: u, namespace: team-a}}\n"
        "- {name: b, context: {cluster: c, user: u, namespace: team-b}}\n")
    assert KubernetesBackend(Options(kubeconfig=str(kubeconfig))).namespace() == "team-a"
    assert KubernetesBackend(Options(kubeconfig=str(kubeconfig), context="b")).namespace() == "team-b"
    assert KubernetesBackend(Options(kubeconfig=str(kubeconfig), namespace="x")).namespace() == "x"
    with pytest.raises(UsageError, match="no context 'nope'"):
        KubernetesBackend(Options(kubeconfig=str(kubeconfig), context="nope")).namespace()


def kubeconfig_for(tmp_path, server: str) -> Path:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: [{name: c, cluster: {server: "
        f"'{server}'}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\n"
        "contexts: [{name: a, context: {cluster: c, user: u}}]\n")
    return kubeconfig


def cli_env(tmp_path, kubeconfig, **extra):
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path),
            "SIMSIAM_JOB_CONFIG": "/dev/null", **extra}


def test_unreachable_api_server_is_one_line_with_a_hint(tmp_path):
    out = run_cli(["status", "kubernetes://ns/job"],
                  cli_env(tmp_path, kubeconfig_for(tmp_path, "https://127.0.0.1:9")))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: reading job job: cannot reach the API server at https://127.0.0.1:9 (Connection "
        "refused); check the kubeconfig context, the VPN and that the cluster is up")


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers (an API server behind a VPN
    that went away)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("command", [["status", "kubernetes://ns/job"], ["list", "-b", "kubernetes"],
                                     ["cancel", "kubernetes://ns/job"]])
def test_a_server_that_never_answers_is_one_line_naming_it(tmp_path, silent_server, scheme, command):
    """TLS or not, the call ends after the timeout (here 1 s) with the server's address, never
    hangs (the subprocess timeout only guards the test)."""
    server = f"{scheme}://{silent_server}"
    env = cli_env(tmp_path, kubeconfig_for(tmp_path, server), SIMSIAM_JOB_KUBERNETES_CONNECT_TIMEOUT="1",
                  SIMSIAM_JOB_KUBERNETES_READ_TIMEOUT="1")
    out = run_cli(command, env, timeout=60)
    assert_one_line_error(out, 1, f"cannot reach the API server at {server} (no answer within the timeout)")
    assert "read_timeout" in out.stderr
