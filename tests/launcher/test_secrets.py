"""Secrets stay secret: paddle's launcher copies its whole environment into its log folder
(envlog.*, backup_env.*.json, its own <job>.<pod>.log), so nothing we start may leave those files
where another user can read them; --env-secret passes a value by reference, never written by us.

The checks run paddle's real launcher and judge every file it wrote as another user would: as uid
65534 for real when the tests run as root, else from the modes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.cli import assert_one_line_error, run_cli, wait_for
from helpers.files import another_user_can_read, files_holding
from helpers.paths import CPU_CONFIG, REPO

PLAIN = "plain-env-value-7Qx"      # given with --env
HIDDEN = "file-secret-value-9Kz"   # given with --env-secret, from a file
PADDLE_DUMPS = re.compile(r"^(envlog\.\d+|backup_env\.\d+\.json|.+\.[a-z0-9]+\.log)$")


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "home" / "token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HIDDEN + "\n")
    path.chmod(0o600)
    return path


def assert_private(shared: Path, paddle_logs: Path):
    """paddle wrote both values into its log folder; no file holding either is readable by another
    user; the file secret is in paddle's own dumps only (never in a file simsiam-job wrote)."""
    envlog = (paddle_logs / "envlog.0").read_text()
    assert f"PLAIN_VALUE={PLAIN}" in envlog and f"API_TOKEN={HIDDEN}" in envlog, envlog
    holding = files_holding(shared, PLAIN, HIDDEN)
    assert {p.name for p in holding} >= {"envlog.0", "backup_env.0.json"}, holding
    readable = [str(p) for p in holding if another_user_can_read(p, shared)]
    assert not readable, f"another user can read a secret in: {readable}"
    copied = [p for p in files_holding(shared, HIDDEN)
              if p.parent != paddle_logs or not PADDLE_DUMPS.match(p.name)]
    assert not copied, f"the --env-secret value was written into {copied}"


@pytest.mark.slow
def test_a_local_run_leaves_no_secret_another_user_can_read(user_env, shared_dir, secret_file):
    """A real local run (paddle's launcher, then a trainer that stops at once: no data) with runs
    and outputs in a shared folder."""
    ref = run_cli(["submit", "pretrain", "--gpus", "0", "-c", CPU_CONFIG, "--name", "sec",
                   "--set", f"runs_dir={shared_dir}/runs", "--output", f"{shared_dir}/out",
                   "--env", f"PLAIN_VALUE={PLAIN}", "--env-secret", f"API_TOKEN={secret_file}"],
                  user_env, check=True).stdout.strip()
    wait_for(ref, user_env, lambda st: st["state"] not in ("PENDING", "RUNNING"), what="the end")
    run_dir = shared_dir / "runs" / "sec"
    assert_private(shared_dir, run_dir / "logs")
    assert oct(run_dir.stat().st_mode & 0o777) == oct(0o700)


def test_kubernetes_pods_keep_paddles_environment_dumps_private(tmp_path, shared_dir):
    """The rendered pod, played on this machine: the init container's command, then the trainer
    container's launcher command (with `true` as the trainer), on a folder standing in for the
    output claim, with the environment the kubelet would give (the Secret's value resolved)."""
    proc = run_cli(["render", "pretrain", "--backend", "kubernetes", "--gpus", "0", "--name", "kjob",
                    "--set", "namespace=team", "--output", "results", "--env", f"PLAIN_VALUE={PLAIN}",
                    "--env-secret", "API_TOKEN=api/token"],
                   {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}, check=True)
    assert HIDDEN not in proc.stdout
    pod = next(d for d in yaml.safe_load_all(proc.stdout) if d["kind"] == "Job")["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert ({"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}
            in trainer["env"])
    claim = shared_dir / "output"
    claim.mkdir()
    claim.chmod(0o777)  # many claims are writable by any uid

    def local(argv):
        return [a.replace("$(JOB_COMPLETION_INDEX)", "0").replace("/output", str(claim)) for a in argv]

    (init,) = pod["initContainers"]
    assert {m["name"] for m in init["volumeMounts"]} == {"output"}
    subprocess.run(local(init["command"]), check=True, timeout=30)
    argv = local(trainer["command"])
    argv = [sys.executable] + argv[1:argv.index("simsiam-train")] + ["true"]
    # What the kubelet resolves: the Secret's value, and the downward API's pod IP.
    resolved = {("secretKeyRef", "api", "token"): HIDDEN, ("fieldRef", "status.podIP"): "127.0.0.1"}

    def value(e):
        if "value" in e:
            return e["value"]
        ((kind, ref),) = e["valueFrom"].items()
        return resolved[(kind, *ref.values())]
    env = {**os.environ, **{e["name"]: value(e) for e in trainer["env"]}}
    # The image's python (with paddle) is first on its PATH; here, the one running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    launched = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stdout[-2000:]
    assert_private(shared_dir, claim / "kjob" / "launch-logs" / "rank-0")


def test_slurm_script_reads_the_secret_file_when_the_job_starts(user_env, secret_file):
    script = run_cli(["render", "pretrain", "--backend", "slurm", "--gpus", "0", "--name", "s",
                      "--env-secret", f"API_TOKEN={secret_file}"], user_env, check=True).stdout
    assert HIDDEN not in script
    assert f"API_TOKEN=\"$(cat {secret_file})\"\nexport API_TOKEN\n" in script
    # What those two lines do on the node, run by bash under the script's own options.
    lines = ("set -euo pipefail\n" + script[script.index("API_TOKEN="):].split("\n\n")[0]
             + '\nprintf %s "$API_TOKEN"')
    assert subprocess.run(["bash", "-c", lines], capture_output=True, text=True).stdout == HIDDEN


def test_local_render_shows_where_the_value_comes_from_not_the_value(user_env, secret_file):
    text = run_cli(["render", "pretrain", "--gpus", "0", "--name", "l",
                    "--env-secret", f"API_TOKEN={secret_file}"], user_env, check=True).stdout
    assert HIDDEN not in text and f'API_TOKEN="$(cat {secret_file})"' in text


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_a_secret_file_others_can_read_is_refused(user_env, secret_file, backend):
    secret_file.chmod(0o640)
    proc = run_cli(["render", "pretrain", "--backend", backend, "--gpus", "0",
                    "--env-secret", f"API_TOKEN={secret_file}"], user_env)
    assert_one_line_error(proc, 2, f"chmod 600 {secret_file}")
    assert HIDDEN not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args,said", [
    (["--env-secret", "API_TOKEN=/no/such/file"], "No such file"),
    (["--env-secret", "API_TOKEN"], "malformed --env-secret"),
    (["--env-secret", "1X=/etc/hostname"], "malformed --env-secret"),
    (["--env", "API_TOKEN=x", "--env-secret", "API_TOKEN=/no/such/file"], "set twice"),
    (["--backend", "kubernetes", "--set", "namespace=t", "--env-secret", "API_TOKEN=just-a-name"],
     "SECRET/KEY"),
    (["--backend", "kubernetes", "--set", "namespace=t", "--env-secret", "API_TOKEN=Bad_Name/key"],
     "SECRET/KEY"),
])
def test_bad_env_secrets_are_one_line(user_env, args, said):
    proc = run_cli(["render", "pretrain", "--gpus", "0", *args],
                   {**user_env, "SIMSIAM_JOB_CONFIG": "/dev/null"})
    assert_one_line_error(proc, 2, said)


# ---- the Role grants exactly what the CLI calls --------------------------------------------------

_VERBS = {"create": "create", "read": "get", "get": "get", "list": "list", "delete": "delete",
          "patch": "patch", "replace": "update"}
_RESOURCES = {"job": ("batch", "jobs"), "config_map": ("", "configmaps"), "service": ("", "services"),
              "pod": ("", "pods"), "pod_log": ("", "pods/log"), "event": ("", "events")}
_GROUPS = {"JOBSET_GROUP": "jobset.x-k8s.io", "KUEUE_GROUP": "kueue.x-k8s.io"}


def _client_calls(source: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every kubernetes-client call in one module's source."""
    calls = set()
    # API methods (called, or passed to the retrying wrapper), not attributes such as api_client
    for method in re.findall(r"\.(?:batch|core)\.((?:create|read|list|delete|patch|replace)_\w+)", source):
        match = re.fullmatch(r"(create|read|list|delete|patch|replace)_namespaced_(\w+)", method)
        if match is None:
            assert re.fullmatch(r"list_\w+_for_all_namespaces", method), method
            continue
        calls.add((*_RESOURCES[match.group(2)], _VERBS[match.group(1)]))
    # custom objects: the group constant, then (version, namespace,) the plural in quotes
    for verb, scope, group, plural in re.findall(
            r"\.custom\.(create|get|list|delete)_(namespaced|cluster)_custom_object,\s*(\w+),[^\"]*?\"(\w+)\"",
            source):
        if scope == "namespaced":           # cluster-wide listing is the ClusterRole's, not the Role's
            calls.add((_GROUPS[group], plural, _VERBS[verb]))
    # raw GETs of a path (Kueue's visibility API): /apis/GROUP/VERSION/namespaces/NS/RESOURCE/NAME/SUB
    for group, resource, sub in re.findall(
            r"f\"/apis/visibility\.\{(\w+)\}/\{version\}/namespaces/\"\s*f\"\{[^}]+\}/(\w+)/\{\w+\}/(\w+)\"",
            source):
        calls.add((f"visibility.{_GROUPS[group]}", f"{resource}/{sub}", "get"))
    return calls


def test_the_role_grants_exactly_the_api_calls_the_client_makes():
    """A static check (the Role-bound user on a real control plane is tests/k8s/test_cluster.py):
    every kubernetes-client call in the backend, as (group, resource, verb), against k8s/rbac.yaml.
    Cluster-wide listing (list --all) is the separate ClusterRole the Role's comment describes."""
    calls = set()
    for source in (REPO / "simsiam_job" / "backends" / "kubernetes").glob("*.py"):
        calls |= _client_calls(source.read_text())
    role = yaml.safe_load((REPO / "k8s" / "rbac.yaml").read_text())
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == calls


def test_a_secret_file_gone_when_the_run_starts_fails_the_run_with_one_line(tmp_path):
    """The local supervisor reads --env-secret files when it starts the launcher: a file that has
    gone since submit ends the run with exit code 2 and a line naming it, and starts nothing."""
    from simsiam_job.backends.local.supervisor import supervise

    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    marker = tmp_path / "started"
    (run_dir / "command.json").write_text(json.dumps({
        "argv": ["touch", str(marker)], "env": {}, "path_prefix": "/usr/bin",
        "env_files": {"API_TOKEN": str(tmp_path / "gone")}}))
    before = signal.getsignal(signal.SIGTERM)  # supervise() ignores TERM, as its process must
    try:
        supervise(run_dir)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert json.loads((run_dir / "exit.json").read_text())["exit_code"] == 2
    said = (run_dir / "logs" / "launch.log").read_text()
    assert said.startswith("simsiam-job: error: --env-secret API_TOKEN: "
                           f"cannot read {tmp_path / 'gone'}: "), said
    assert "Traceback" not in said
    assert not marker.exists()
