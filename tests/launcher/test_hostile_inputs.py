"""Hostile and mistaken inputs, as a new user or an attacker types them, to both programs.

Each is answered within seconds by one line on stderr and its exit code (2 for bad input, 1 for a
job that does not exist), never a traceback, a hang or a silent change; or, where the input is a
legitimate value, it is carried into the job exactly as typed. Every command runs in a fresh
process (`simsiam-job render`/`submit --dry-run`, which contact no cluster, and `simsiam-train`,
which stops before importing paddle when its config is bad).
"""

from __future__ import annotations

import http.server
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers.cli import assert_one_line_error, job_status, run_cli
from helpers.files import NOBODY
from helpers.paths import CPU_CONFIG, REPO
from helpers.prereqs import unavailable

TIMEOUT = 30   # seconds; a hang fails the test instead of stalling the suite
CFG = ["-c", CPU_CONFIG]
K8S = ["--backend", "kubernetes"]
SLURM = ["--backend", "slurm"]
RECIPE = CPU_CONFIG.read_text()
CROP = "DataLoader.Train.dataset.transform.0.TwoViewsTransform.base_transform1.0.RandomResizedCrop.size"
BIG = "100000000000000000000"   # 1e20


def alias_bomb() -> str:
    lines = ["Infer:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    return RECIPE + "\n".join(lines) + "\n"


# File contents for -c (and for the user's settings file): name -> (text or bytes, message).
BAD_FILES = {
    "empty": ("", "is not a YAML mapping of sections"),
    "a list": ("- Global\n- Model\n", "is not a YAML mapping of sections"),
    "not UTF-8": (b"\xff\xfeGlobal: {}\n", "not UTF-8"),
    "a tab indent": ("Global:\n\tepochs: 1\n", "cannot parse"),
    "unclosed bracket": ("Global: [1, 2\n", "cannot parse"),
    "alias bomb": (alias_bomb(), "YAML aliases expand it beyond"),
    "recursive alias": (RECIPE + "Infer: &loop [1, *loop]\n", "recursive alias"),
    "deep nesting": (RECIPE + "Infer: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    "too large": (RECIPE + "#" * (1 << 20) + "\n", "larger than 1 MiB"),
    "python object tag": (RECIPE + "Infer: !!python/object/apply:os.system [id]\n", "cannot parse"),
    "impossible date": (RECIPE.replace("seed: 0", "seed: 2024-13-45"), "cannot parse"),
    "duplicate key": (RECIPE.replace("Global:\n", "Global:\n  epochs: 100\n", 1), "appears twice"),
    "PASSL 1.x": ("epochs: 200\nmodel: {name: SimSiam}\n", "PASSL 1.x"),
    "unknown section": (RECIPE + "Trainer: {}\n", "unknown key 'Trainer'"),
    "nan learning rate": (re.sub(r"learning_rate: [0-9.]+", "learning_rate: .nan", RECIPE), "finite number"),
    "inf weight decay": (re.sub(r"weight_decay: [0-9.e-]+", "weight_decay: .inf", RECIPE), "finite number"),
    "unknown model": (RECIPE.replace("simsiam_cifar_resnet18_pretrain", "simsiam_cifar_resnet81_pretrain"),
                      "did you mean 'simsiam_cifar_resnet18_pretrain'"),
}


@pytest.fixture(scope="module", params=sorted(BAD_FILES))
def bad_file(request, tmp_path_factory):
    content, message = BAD_FILES[request.param]
    path = tmp_path_factory.mktemp("bad") / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert content != RECIPE, "the recipe text changed: this case no longer tests anything"
    return path, message


def test_bad_config_file_on_render(user_env, bad_file):
    path, message = bad_file
    assert_one_line_error(run_cli(["render", "pretrain", "-c", path], user_env, timeout=TIMEOUT), 2, message)


def test_bad_config_file_on_kubernetes_dry_run(user_env, bad_file):
    path, message = bad_file
    proc = run_cli(["submit", "pretrain", "-c", path, *K8S, "--dry-run", "client"], user_env, timeout=TIMEOUT)
    assert_one_line_error(proc, 2, message)


def test_bad_config_file_on_simsiam_train(bad_file):
    path, message = bad_file
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "-c", str(path)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("simsiam-train: error: ")


# What the settings file ($SIMSIAM_JOB_CONFIG) shares with configs: the loader and its budgets.
LOADER_CASES = ("not UTF-8", "a tab indent", "unclosed bracket", "alias bomb", "recursive alias",
                "deep nesting", "too large", "python object tag", "impossible date", "duplicate key")


@pytest.mark.parametrize("case", LOADER_CASES)
def test_bad_user_settings_file(user_env, tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "settings.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    env = {**user_env, "SIMSIAM_JOB_CONFIG": str(path)}
    assert_one_line_error(run_cli(["render", "pretrain", *CFG], env, timeout=TIMEOUT), 2, message)


SPECIAL_PATHS = [("/dev/zero", "is not a regular file"), ("/dev/stdin", "not a regular file"),
                 (str(REPO), "is not a regular file"), ("/proc/self/environ", "")]


@pytest.mark.parametrize("path, message", SPECIAL_PATHS)
def test_special_files_as_config(user_env, path, message):
    proc = run_cli(["render", "pretrain", "-c", path], user_env, timeout=TIMEOUT)
    assert_one_line_error(proc, 2, message)


# Flags, overrides, options and settings: (arguments, extra environment, exit code, message).
CASES = [
    (["-o", "Optimizer.lr.learning_rate=.nan"], {}, 2, "finite number"),
    (["-o", "Optimizer.momentum=-.inf"], {}, 2, "finite number"),
    (["-o", "Optimizer.weight_decay=1e-4"], {}, 0, ""),                       # PASSL's spelling
    (["-o", "Global.epochs=1e400"], {}, 2, "expected an integer"),
    (["-o", "Global.epochs=" + "9" * 400], {}, 2, "expected an integer"),
    (["-o", "Global.epochs=[1, 2]"], {}, 2, "expected an integer"),
    (["-o", "Global.epochs={a: 1}"], {}, 2, "expected an integer"),
    (["-o", "Global.seed=2024-13-45"], {}, 2, "expected an integer"),
    (["-o", "Global.output_dir=/tmp/x"], {}, 2, "use --output"),
    (["-o", "Global.auto_resume=false"], {}, 2, "jobs always resume"),
    (["-o", "Global.device=cpu"], {}, 2, "use --gpus"),
    (["-o", "Glöbal.epochs=1"], {}, 2, "malformed -o"),
    (["-o", "Global..epochs=1"], {}, 2, "malformed -o"),
    (["-o", ".=1"], {}, 2, "malformed -o"),
    (["-o", "Model.name=simsiam_resnet5O_pretrain"], {}, 2, "did you mean 'simsiam_resnet50_pretrain'"),
    (["-o", "Infer=[&a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], " + ", ".join(["*a"] * 2000) + "]"], {}, 2,
     "YAML aliases expand it beyond"),
    (["-o", "DataLoader.Train.dataset.transform.99.X=1"], {}, 2, "is not an index"),
    (["--nodes", "99999999999999999999"], {}, 2, "--nodes must be between"),
    (["--gpus", "-1"], {}, 2, "--gpus is per node"),
    (["--procs", "0"], {}, 2, "--procs must be between"),
    (["--name", "ünïcode"], {}, 2, "invalid job name"),
    (["--name", "-leading-dash"], {}, 2, "invalid job name"),
    (["--name", ""], {}, 2, "invalid job name"),
    (["--image", "img\nkind: Secret"], {}, 2, "not an image reference"),
    (["--image", "my image:1.0"], {}, 2, "not an image reference"),
    (["--image", ""], {"SIMSIAM_JOB_IMAGE": "-rm"}, 2, "not an image reference"),
    (["--env", "=value"], {}, 2, "malformed --env"),
    (["--env", "NAME"], {}, 2, "malformed --env"),
    (["--env", "PATH WITH SPACE=1"], {}, 2, "malformed --env"),
    # Names the launcher, paddle's launcher or the cluster set for every trainer process.
    (["--env", "SIMSIAM_JOB_ID=/home/other/runs/their-run"], {}, 2,
     "--env SIMSIAM_JOB_ID: SIMSIAM_JOB_ID is set by"),
    (["--env", "SIMSIAM_JOB_RUN_DIR=/tmp"], {}, 2, "--env SIMSIAM_JOB_RUN_DIR"),
    (["--env", "PATH=/usr/bin"], {}, 2, "--env PATH"),
    (["--env", "PADDLE_NNODES=4"], {}, 2, "--env PADDLE_NNODES"),
    ([*K8S, "--env", "JOB_COMPLETION_INDEX=0"], {}, 2, "--env JOB_COMPLETION_INDEX"),
    ([*K8S, "--env-secret", "POD_IP=addresses/pod-ip"], {}, 2, "--env-secret POD_IP"),
    ([*SLURM, "--env", "SLURM_NODEID=0"], {}, 2, "--env SLURM_NODEID"),
    ([*SLURM, "--env", "MASTER_ADDR=10.0.0.1"], {}, 2, "--env MASTER_ADDR"),
    (["--set", "runs_dir"], {}, 2, "--set expects KEY=VALUE"),
    (["--set", "nonsense=1"], {}, 2, "unknown local option"),
    (["--set", "grace_seconds=inf"], {}, 2, "finite number"),
    (["--set", "grace_seconds=1e999"], {}, 2, "finite number"),
    (["--set", "grace_seconds=-5"], {}, 2, "grace_seconds must be 0 or more"),
    (["--set", f"group_restarts={BIG}"], {}, 2, "group_restarts must be 0 or more and at most 1000"),
    (["-o", "Optimizer.lr.learning_rate=1e-400"], {}, 2, "would be read as 0.0"),
    (["-o", "Optimizer.lr.learning_rate=1.0e-400"], {}, 2, "would be read as 0.0"),
    (["-o", f"{CROP}=70000"], {}, 2, "expected an integer in [1, 65535]"),
    (["-o", f"DataLoader.Train.sampler.batch_size={2**21}"], {}, 2, "expected an integer in [1, 1048576]"),
    (["-o", "DataLoader.Train.loader.num_workers=100000"], {}, 2, "expected an integer in [0, 1024]"),
    (["-o", "Model.dim=1000000"], {}, 2, "expected an integer in [1, 65536]"),
    (["-o", "Global.epochs=100000000"], {}, 2, "expected an integer in [1, 1000000]"),
    (["-o", f"{CROP}=40000"], {}, 2, "the largest machine a job may run on has 4,096.0 GiB"),
    (["--from", "local://x"], {}, 2, "--from is for linear-probe"),
    ([*K8S, "--set", "namespace=-bad-"], {}, 2, "not a DNS-1123 label"),
    ([*K8S, "--set", "namespace=" + "a" * 64], {}, 2, "not a DNS-1123 label"),
    ([*K8S, "--set", "namespace=ml\nkind: Secret"], {}, 2, "not a DNS-1123 label"),
    ([*K8S, "--set", "memory=1e999"], {}, 2, "more than any machine has"),
    ([*K8S, "--set", "memory=1e99999999999"], {}, 2, "not a Kubernetes quantity"),
    ([*K8S, "--set", "memory=-8Gi"], {}, 2, "not a Kubernetes quantity"),
    ([*K8S, "--set", "memory=8GB"], {}, 2, "not a Kubernetes quantity"),
    ([*K8S, "--set", "cpu=two"], {}, 2, "not a Kubernetes quantity"),
    ([*K8S, "--set", "shm_size=0"], {}, 2, "more than zero"),
    ([*K8S, "--set", "shm_size=9Gi"], {}, 2, "larger than the memory limit"),
    ([*K8S, "--set", "port=70000"], {}, 2, "not a port number"),
    ([*K8S, "--set", "port=abc"], {}, 2, "expected an integer"),
    ([*K8S, "--set", "backoff_limit=-1"], {}, 2, "0 or more"),
    ([*K8S, "--set", "backoff_limit=3000000000"], {}, 2, "at most 2147483647"),  # int32 in a Job
    ([*K8S, "--set", "termination_grace=-5"], {}, 2, "0 or more"),
    ([*K8S, "--set", f"termination_grace={2**63}"], {}, 2, "at most 9223372036854775807"),  # int64
    ([*K8S, "--set", f"group_restarts={BIG}"], {}, 2, "at most 1000"),
    ([*K8S, "--set", "kubeconfig=/"], {}, 2, "kubeconfig / is not a regular file"),
    ([*K8S, "--gpus", "8", "-o", f"{CROP}=30000"], {}, 2, "a GPU has at most 192 GiB"),
    ([*K8S, "--set", "image_pull_secrets=good,Bad_One"], {}, 2, "not a DNS-1123 name"),
    ([*K8S, "--set", "priority_class=High Priority"], {}, 2, "not a DNS-1123 name"),
    ([*K8S, "--set", "gpu_product=$(id)"], {}, 2, "not a label value"),
    ([*K8S, "--data", "pvc:../etc"], {}, 2, "PersistentVolumeClaim"),
    ([*K8S, "--data", "imagenet/../../x"], {}, 2, "sub-path must be relative"),
    ([*K8S, "--output", "Bad_Claim"], {}, 2, "PersistentVolumeClaim"),
    ([*K8S, "--set", "data_pvc=imagenet", "-o", "DataLoader.Train.dataset.root=/x"], {}, 2,
     "give one or the other"),
    ([*SLURM, "--set", "partition=gpu; rm -rf ~"], {}, 2, "partition"),
    ([*SLURM, "--set", "time=tomorrow"], {}, 2, "time"),
    ([*SLURM, "--set", "port=-1"], {}, 2, "port"),
    ([*SLURM, "--set", f"group_restarts={BIG}"], {}, 2, "at most 1000"),
    ([], {"SIMSIAM_JOB_CONFIG": "/nonexistent/settings.yaml"}, 2, "SIMSIAM_JOB_CONFIG names"),
    ([], {"SIMSIAM_JOB_CONFIG": "/"}, 2, "is not a regular file"),
    ([], {"SIMSIAM_JOB_BACKEND": "nomad"}, 2, "unknown backend 'nomad'"),
    ([], {"SIMSIAM_JOB_NODES": "two"}, 2, "not an integer"),
    ([], {"SIMSIAM_JOB_NODES": "1.5"}, 2, "not an integer"),
    ([], {"SIMSIAM_JOB_LOCAL_GRACE_SECONDS": "nan"}, 2, "finite number"),
    ([*K8S], {"SIMSIAM_JOB_KUBERNETES_NAMESPACE": "Team_A"}, 2, "not a DNS-1123 label"),
]


@pytest.mark.parametrize("command", ["render", "dry-run"])
@pytest.mark.parametrize("args, env, code, message", CASES,
                         ids=[" ".join(c[0]).replace(CROP, "CROP")[:60] + str(c[1]) for c in CASES])
def test_flag_and_option_mistakes(user_env, command, args, env, code, message):
    head = ["render", "pretrain"] if command == "render" else ["submit", "pretrain", "--dry-run", "client"]
    proc = run_cli([*head, *CFG, *args], {**user_env, **env}, timeout=TIMEOUT)
    if code == 0:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_line_error(proc, code, message)


@pytest.mark.parametrize("args, code, message", [
    (["status", "local://../../etc/passwd"], 1, "no local run"),
    (["status", "local://"], 2, "not a job reference"),
    (["logs", "kubernetes://only-a-name"], 2, ""),
    (["cancel", "slurm://"], 2, "not a job reference"),
    (["logs", "local://x", "--tail", "-5"], 2, "--tail must be between 0 and"),
    (["logs", "local://x", "--tail", "9" * 30], 2, "--tail must be between 0 and"),
    (["submit", "pretrain", *CFG, "--set", "runs_dir=/proc/no-such-dir"], 2, "/proc/no-such-dir"),
    (["status", "http://example.com/job"], 2, "not a job reference"),
    (["options", "nomad"], 2, "'nomad' is not one of"),
    (["quickstart", "--train", "0"], 2, "--train must be between"),
    (["quickstart", "--val", "100000"], 2, "--val must be between"),
    (["quickstart", "--procs", "0"], 2, "--procs must be between"),
    (["quickstart", "--train", "10"], 2, "less than one pretrain batch"),
    (["quickstart", "-o", "Global.epochs=.inf"], 2, "expected an integer"),
    (["quickstart", "--workdir", "/dev/null/qs"], 2, "--workdir /dev/null/qs"),
    (["render", "smoke", "--data", "/datasets/imagenet"], 2, "the smoke phase trains on synthetic images"),
])
def test_other_commands(user_env, tmp_path, args, code, message):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli(args, user_env, timeout=TIMEOUT, cwd=cwd)
    assert_one_line_error(proc, code, message)
    assert list(cwd.iterdir()) == []   # nothing written (quickstart: no data set, no workdir)


def test_render_out_onto_a_file(user_env, tmp_path):
    (tmp_path / "taken").write_text("")
    proc = run_cli(["render", "pretrain", *CFG, "--out", tmp_path / "taken"], user_env, timeout=TIMEOUT)
    assert_one_line_error(proc, 2, "--out")


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: -c/--config"),
    (["--bogus"], "unrecognized argument: --bogus"),
    (["--bogus", "-c", "x.yaml"], "unrecognized argument: --bogus"),
    (["-c"], "expected one argument"),
    (["-c", str(CPU_CONFIG), "-o", "Global.epochs"], "bad override 'Global.epochs'"),
    (["-c", str(CPU_CONFIG), "-o", "Global.epochs=.nan"], "expected an integer"),
    (["-c", str(CPU_CONFIG), "-o", "Optimizer.lr.learning_rate=.inf"], "finite number"),
    (["-c", str(CPU_CONFIG), "-o", "Model.name=simsiam_cifar_resnet18_pretrian"], "did you mean"),
    (["eval", "--bogus"], "unrecognized argument: --bogus"),
    (["convert", "sideways", "a", "b"], "invalid choice: 'sideways'"),
])
def test_simsiam_train_mistakes(args, message):
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


# Legitimate values with characters that mean something to YAML, shells or templates: carried as typed.
ODD_VALUES = ["it's \"quoted\"", "$(id) `id` ${HOME}", "{{ x }} {% y %}", "a: b # c", "line\twith tab",
              "☃ 雪", "$(POD_IP) $$ $(NOPE) $", "$$(SIMSIAM_JOB_NAME)"]


def kubelet_expansion(value: str, defined: dict) -> str:
    """What a container gets for an env value, by the rule the Kubernetes API documents for
    EnvVar.value: $(NAME) of an earlier variable is replaced, an unknown one kept, and $$ is $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m[0] == "$$" else defined.get(m[1], m[0]), value)


@pytest.mark.parametrize("value", ODD_VALUES)
def test_odd_values_are_carried_exactly(user_env, tmp_path, value):
    """--env values mean the same literal string on every backend; on Kubernetes the container
    gets them through the kubelet's $(NAME) expansion, which must leave them as typed."""
    proc = run_cli(["render", "pretrain", *CFG, *K8S, "--env", f"NOTE={value}",
                    "-o", f"Global.save_inference_dir={yaml.safe_dump(value, default_style=chr(34)).strip()}",
                    "--set", "namespace=ml-team"], user_env, timeout=TIMEOUT, check=True)
    docs = {d["kind"]: d for d in yaml.safe_load_all(proc.stdout)}
    container = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    defined = {e["name"]: e.get("value", "10.0.0.7") for e in container["env"]}
    (note,) = [e["value"] for e in container["env"] if e["name"] == "NOTE"]
    assert kubelet_expansion(note, defined) == value
    assert yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["Global"]["save_inference_dir"] == value
    assert docs["Job"]["metadata"]["namespace"] == "ml-team"


# ---- paths that are not what they should be ------------------------------------------------------

def tree(root: Path) -> dict:
    """Every path below ``root`` with its owner, mode and bytes (symbolic links: their target), to
    see that a command changed nothing there."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            content = (os.readlink(path) if path.is_symlink()
                       else path.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            found[str(path.relative_to(root))] = (st.st_uid, st.st_mode, content)
    return found


def symlink_loop(path: Path) -> Path:
    path.symlink_to(path.name)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: symlink_loop(d / "loop.yaml"), "Too many levels of symbolic links"),
    (lambda d: d / "config.yaml" / "pretrain.yaml", "Not a directory"),
], ids=["a symlink loop", "a path through a file"])
def test_config_paths_that_are_no_file(user_env, tmp_path, make, message):
    (tmp_path / "config.yaml").write_text(RECIPE)
    path = make(tmp_path)
    assert_one_line_error(run_cli(["render", "pretrain", "-c", path], user_env, timeout=TIMEOUT), 2, message)
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "-c", str(path)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not a folder\n")
    return tmp / "notes.txt"


def an_empty_image_folder(tmp: Path) -> Path:
    (tmp / "fmnist" / "train").mkdir(parents=True)
    return tmp / "fmnist"


# What submit refuses on the local backend before it starts anything: a dry run refuses it too.
SUBMIT_CHECKS = {
    "an empty ImageFolder": (lambda t: ["--data", an_empty_image_folder(t)], "has no class folders"),
    "a file as --data": (lambda t: ["--data", a_file(t)], "notes.txt/train: Not a directory"),
    "a file as --output": (lambda t: ["--output", a_file(t)], "Not a directory"),
    "a file as runs_dir": (lambda t: ["--set", f"runs_dir={a_file(t)}"], "is a file, not a directory"),
    "a missing python": (lambda t: ["--set", "python=/nonexistent/bin/python"], "not an executable file"),
    "runs_dir not UTF-8": (lambda t: ["--set", "runs_dir=" + os.fsdecode(bytes(t) + b"/runs-\xff")],
                           "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(SUBMIT_CHECKS))
def test_dry_run_refuses_what_submit_refuses(user_env, tmp_path, case):
    make_args, message = SUBMIT_CHECKS[case]
    args = make_args(tmp_path)
    before = tree(tmp_path)
    for dry_run in (["--dry-run", "client"], []):
        proc = run_cli(["submit", "pretrain", *CFG, "--name", "checked", *args, *dry_run], user_env,
                       timeout=TIMEOUT)
        assert_one_line_error(proc, 2, message)
    assert tree(tmp_path) == before     # no run directory, no output folder, no run index entry


def test_data_home_that_is_not_utf8(user_env, tmp_path):
    env = {**user_env, "XDG_DATA_HOME": os.fsdecode(bytes(tmp_path) + b"/data-\xff")}
    before = tree(tmp_path)
    for args in (["submit", "pretrain", *CFG], ["status", "local://a-run"], ["resume", "local://a-run"]):
        assert_one_line_error(run_cli(args, env, timeout=TIMEOUT), 2, "is not UTF-8 text")
    assert tree(tmp_path) == before


# ---- recorded runs: resume runs what a run directory records, as the caller ----------------------

@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A real local run that FAILED at once (its "python" is /bin/false): what submit records."""
    home = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))
    ref = run_cli(["submit", "pretrain", *CFG, "--name", "first", "--set", "python=/bin/false"], env,
                  timeout=TIMEOUT, check=True).stdout.strip()
    for _ in range(100):
        if job_status(ref, env)["state"] == "FAILED":
            break
        time.sleep(0.2)
    assert job_status(ref, env)["state"] == "FAILED"
    return env, Path(env["XDG_DATA_HOME"]) / "simsiam-job" / "runs"


def not_json(path: Path) -> None:
    path.write_text('{"argv": ["python", ')


def give_away(path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("giving a file to another user needs root")
    os.chown(path, NOBODY, NOBODY)


RESUME_REFUSALS = {
    "another user's run directory": (lambda d: give_away(d), "belongs to another user"),
    "another user's command.json": (lambda d: give_away(d / "command.json"), "belongs to another user"),
    "a run directory others may write": (lambda d: d.chmod(0o777), "other users may write into"),
    "command.json missing": (lambda d: (d / "command.json").unlink(), "No such file or directory"),
    "command.json a symlink": (lambda d: ((d / "command.json").unlink(),
                                          (d / "command.json").symlink_to("/etc/hosts")),
                               "command.json is not a regular file"),
    "command.json not JSON": (lambda d: not_json(d / "command.json"), "command.json is not JSON"),
    "command.json wrongly shaped": (
        lambda d: (d / "command.json").write_text('{"argv": "rm -rf ~", "env": {}}'),
        "is not the command submit recorded"),
    "spec.json not JSON": (lambda d: not_json(d / "spec.json"), "spec.json is not the record submit wrote"),
    "spec.json with bad options": (
        lambda d: (d / "spec.json").write_text(
            json.dumps({"attempt": 1, "options": {"group_restarts": "many"}})),
        "spec.json: bad options"),
}


@pytest.mark.parametrize("case", sorted(RESUME_REFUSALS))
def test_resume_refuses_a_run_directory_it_cannot_trust(failed_run, case):
    env, runs = failed_run
    tamper, message = RESUME_REFUSALS[case]
    name = re.sub(r"[^a-z]+", "-", case.lower()).strip("-")
    shutil.copytree(runs / "first", runs / name, symlinks=True)
    tamper(runs / name)
    before = tree(runs)
    assert_one_line_error(run_cli(["resume", f"local://{name}"], env, timeout=TIMEOUT), 2, message)
    assert tree(runs) == before         # nothing moved, nothing written, no supervisor started


def test_damaged_records_leave_every_other_run_usable(failed_run, tmp_path):
    """A damaged run directory is left out of `list`; a damaged run index entry is skipped with one
    warning; the other runs answer status, list and cancel as before."""
    env, runs = failed_run
    for name, spec in (("damaged-spec", b"\xff\xfe"), ("listed-spec", b"[1, 2]")):
        shutil.copytree(runs / "first", runs / name, symlinks=True)
        (runs / name / "spec.json").write_bytes(spec)
    index = Path(env["XDG_DATA_HOME"]) / "simsiam-job" / "run-locations"
    index.mkdir(parents=True, exist_ok=True)
    (index / "not-utf8").write_bytes(b"/home/\xff\xfe/runs\n")
    (index / "not-a-path").write_text("runs dir\0with a NUL\n")
    listed = run_cli(["list", "--all"], env, timeout=TIMEOUT)
    assert listed.returncode == 0 and "local://first" in listed.stdout, listed.stderr
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: run index entry ") for w in warnings), warnings
    assert "local://damaged-spec" not in listed.stdout and "local://listed-spec" not in listed.stdout
    assert job_status("local://first", env)["state"] == "FAILED"
    assert run_cli(["cancel", "local://first"], env, timeout=TIMEOUT).returncode == 0
    proc = run_cli(["status", "local://not-utf8"], env, timeout=TIMEOUT)
    assert proc.returncode == 1 and proc.stderr.count("warning: run index entry") == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no local run 'not-utf8'")


# ---- an API server that answers 200 with what is not a Kubernetes object -------------------------

@pytest.fixture(scope="module")
def odd_api_server(tmp_path_factory):
    """A small HTTP server of our own on loopback that answers every request 200 with ``answer[0]``
    (a web page, a list, a wrongly-shaped object): what a kubeconfig pointing at the wrong server or
    a broken proxy gives, and a real API server cannot be made to send. Returns (answer, kubeconfig)."""
    answer = [b""]

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer[0])))
            self.end_headers()
            self.wfile.write(answer[0])

        do_GET = do_POST = do_DELETE = do_PATCH = reply

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "odd",
        "clusters": [{"name": "odd", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "odd", "user": {"token": "t"}}],
        "contexts": [{"name": "odd", "context": {"cluster": "odd", "user": "odd", "namespace": "ml"}}]}))
    yield answer, kubeconfig
    server.shutdown()


@pytest.mark.parametrize("body, args", [
    ("<html><body>Sign in</body></html>", ["status", "kubernetes://ml/job"]),
    ("[]", ["list", "--backend", "kubernetes"]),
    ('{"items": "abc"}', ["logs", "kubernetes://ml/job"]),
    ("{}", ["cancel", "kubernetes://ml/job"]),
    ('{"metadata": {"name": "job", "labels": "x"}}', ["resume", "kubernetes://ml/job"]),
    ('{"kind": "Status", "status": "Success"}', ["submit", "pretrain", *CFG, *K8S]),
], ids=["a web page", "a list", "items not a list", "an empty object", "labels not a map", "no Job"])
def test_api_server_answers_that_are_no_kubernetes_object(user_env, odd_api_server, body, args):
    answer, kubeconfig = odd_api_server
    answer[0] = body.encode()
    proc = run_cli(args, {**user_env, "KUBECONFIG": str(kubeconfig)}, timeout=TIMEOUT)
    assert_one_line_error(proc, 1, "did not answer with a Kubernetes object")


# ---- the trainer's own input: the data set, the machine, weights ---------------------------------

def simsiam_train(args, *, as_user_without_privileges=False):
    """``simsiam-train ARGS``; as root, optionally without the capabilities that let root read any
    file (then permissions bind it as they bind any user)."""
    prefix = []
    if as_user_without_privileges and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            unavailable("setpriv (util-linux) is needed to drop root's file-access capabilities")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "trainer.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def locked_folder(path: Path) -> Path:
    path.mkdir()
    path.chmod(0)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda train: symlink_loop(train / "loop"), "train/loop: Too many levels of symbolic links"),
    (lambda train: symlink_loop(train / "shirt" / "0.png"), "shirt/0.png: Too many levels of symbolic links"),
    (lambda train: locked_folder(train / "trouser"), "train/trouser: Permission denied"),
], ids=["a class folder that is a symlink loop", "an image that is a symlink loop",
        "an unreadable class folder"])
def test_dataset_that_cannot_be_scanned(tmp_path, make, message):
    train = tmp_path / "data" / "train"
    (train / "shirt").mkdir(parents=True)
    (train / "shirt" / "1.png").write_bytes(b"")
    make(train)
    before = tree(tmp_path / "data")
    proc = simsiam_train(["-c", CPU_CONFIG, "-o", f"DataLoader.Train.dataset.root={train}",
                          "-o", f"Global.output_dir={tmp_path / 'out'}"], as_user_without_privileges=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert tree(tmp_path / "data") == before and not any((tmp_path / "out" / "checkpoints").iterdir())


def test_batches_this_machine_cannot_hold(user_env, tmp_path):
    """Refused at render only beyond the largest machine; at start, beyond the one the trainer is on."""
    from trainer.config import machine_memory

    # batch 32 x 2 views: uint8 pixels + the width-16 stem's float32 output
    per_pixel = 32 * 2 * (3 + 16 * 4)
    side = math.ceil(math.sqrt(2 * machine_memory() / per_pixel))
    assert run_cli(["render", "pretrain", *CFG, "-o", f"{CROP}={side}"], user_env,
                   timeout=TIMEOUT).returncode == 0
    proc = simsiam_train(["-c", CPU_CONFIG, "-o", f"{CROP}={side}",
                          "-o", f"Global.output_dir={tmp_path / 'out'}"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "this machine has" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_converter_refuses_a_checkpoint_with_objects_in_one_line_of_its_own(tmp_path):
    checkpoint, out = tmp_path / "model_best.pth.tar", tmp_path / "probe.pdparams"
    subprocess.run([sys.executable, "-c", "import argparse, sys, torch; torch.save({'state_dict': {}, "
                    "'args': argparse.Namespace(arch='resnet50')}, sys.argv[1])", str(checkpoint)],
                   check=True)
    proc = simsiam_train(["convert", "torch-lincls", checkpoint, out])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "holds Python objects (argparse.Namespace)" in lines[0]
    assert "weights_only" not in proc.stderr and not out.exists()
