"""Hostile and mistaken inputs, as a new user or an attacker types them, to both programs.

Each is answered within seconds by one line on stderr and its exit code (2 for bad input, 1 for a
job that does not exist), never a traceback, a hang or a silent change; or, where the input is a
legitimate value, it is carried into the job exactly as typed. Every command runs in a fresh
process (`simsiam-job render`/`submit --dry-run`, which contact no cluster, and `simsiam-train`,
which stops before importing paddle when its config is bad).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from testlib import CPU_CONFIG, REPO, assert_one_line_error, run_cli

TIMEOUT = 30   # seconds; a hang fails the test instead of stalling the suite
CFG = ["-c", CPU_CONFIG]
K8S = ["--backend", "kubernetes"]
SLURM = ["--backend", "slurm"]
RECIPE = CPU_CONFIG.read_text()


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
    (["--set", "runs_dir"], {}, 2, "--set expects KEY=VALUE"),
    (["--set", "nonsense=1"], {}, 2, "unknown local option"),
    (["--set", "grace_seconds=inf"], {}, 2, "finite number"),
    (["--set", "grace_seconds=1e999"], {}, 2, "finite number"),
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
    ([], {"SIMSIAM_JOB_CONFIG": "/nonexistent/settings.yaml"}, 2, "SIMSIAM_JOB_CONFIG names"),
    ([], {"SIMSIAM_JOB_CONFIG": "/"}, 2, "is not a regular file"),
    ([], {"SIMSIAM_JOB_BACKEND": "nomad"}, 2, "unknown backend 'nomad'"),
    ([], {"SIMSIAM_JOB_NODES": "two"}, 2, "not an integer"),
    ([], {"SIMSIAM_JOB_NODES": "1.5"}, 2, "not an integer"),
    ([], {"SIMSIAM_JOB_LOCAL_GRACE_SECONDS": "nan"}, 2, "finite number"),
    ([*K8S], {"SIMSIAM_JOB_KUBERNETES_NAMESPACE": "Team_A"}, 2, "not a DNS-1123 label"),
]


@pytest.mark.parametrize("command", ["render", "dry-run"])
@pytest.mark.parametrize("args, env, code, message", CASES, ids=[" ".join(c[0])[:60] + str(c[1]) for c in CASES])
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
ODD_VALUES = ["it's \"quoted\"", "$(id) `id` ${HOME}", "{{ x }} {% y %}", "a: b # c", "line\twith tab", "☃ 雪"]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_odd_values_are_carried_exactly(user_env, tmp_path, value):
    proc = run_cli(["render", "pretrain", *CFG, *K8S, "--env", f"NOTE={value}",
                    "-o", f"Global.save_inference_dir={yaml.safe_dump(value, default_style=chr(34)).strip()}",
                    "--set", "namespace=ml-team"], user_env, timeout=TIMEOUT, check=True)
    docs = {d["kind"]: d for d in yaml.safe_load_all(proc.stdout)}
    container = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "NOTE", "value": value} in container["env"]
    assert yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["Global"]["save_inference_dir"] == value
    assert docs["Job"]["metadata"]["namespace"] == "ml-team"
