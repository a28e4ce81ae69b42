"""The CLI's contract with a person: bad input is one line and exit 2, render is exact and pure,
start-up stays light. Every command runs in a fresh `simsiam-job` process, as a user runs it."""

import shlex
import subprocess
import sys
import zipfile

import pytest
import yaml
from helpers.cli import assert_one_line_error, run_cli
from helpers.paths import BIN, CPU_CONFIG, REPO

CFG = ["-c", CPU_CONFIG]


@pytest.mark.parametrize("args, message", [
    (["submit", "finetune"], "'finetune' is not one of 'pretrain', 'linear-probe'"),
    (["submit", "pretrain", "--backend", "nomad"], "'nomad' is not one of"),
    (["submit", "pretrain", *CFG, "--nodes", "0"], "--nodes must be between 1"),
    (["submit", "pretrain", *CFG, "--gpus", "17"], "--gpus is per node"),
    (["submit", "pretrain", *CFG, "--gpus", "-1"], "--gpus is per node"),
    (["submit", "pretrain", *CFG, "--nodes", "two"], "Invalid value for '--nodes'"),
    (["submit", "pretrain", "-c", "does/not/exist.yaml"], "config file not found: does/not/exist.yaml"),
    (["submit", "pretrain", *CFG, "-o", "Optimizer.momentun=0.8"], "did you mean 'Optimizer.momentum'"),
    (["submit", "pretrain", *CFG, "-o", "Global.epochs=-3"], "Global.epochs"),
    (["submit", "pretrain", *CFG, "-o", "Global.epochs"], "malformed -o 'Global.epochs'"),
    (["submit", "pretrain", *CFG, "-o", "=3"], "malformed -o"),
    (["submit", "pretrain", *CFG, "-o", "Global.seed=1\n2"], "contains a line break"),
    (["submit", "pretrain", *CFG, "--name", "My_Job"], "invalid job name 'My_Job'"),
    (["submit", "pretrain", *CFG, "--name", "job\nkind: Secret"], "invalid job name"),
    (["submit", "pretrain", *CFG, "--name", "$(id)"], "invalid job name"),
    (["submit", "pretrain", *CFG, "--name", "{{ x }}"], "invalid job name"),
    (["submit", "pretrain", *CFG, "--name", "a" * 60], "at most 52"),
    (["submit", "pretrain", *CFG, "--env", "1BAD=x"], "malformed --env"),
    (["submit", "pretrain", *CFG, "--set", "grace=1"], "did you mean 'grace_seconds'"),
    (["submit", "pretrain", *CFG, "--from", "local://x"], "--from is for linear-probe"),
    (["submit", "linear-probe", *CFG, "--from", "pbs://42"], "not a job reference"),
    (["submit", "pretrain", *CFG, "--nodes", "2"], "local backend runs on one node"),
    (["submit", "pretrain", *CFG, "--data", "/nonexistent/dataset"], "no train/ folder"),
    (["submit", "pretrain", "--no-such-flag"], "No such option: --no-such-flag"),
    (["render", "pretrain", *CFG, "--gpus", "4", "--procs", "2"], "--procs sets CPU processes"),
    (["logs", "local://x", "--rank", "1", "--all"], "exclude each other"),
    (["status", "kubernetes:/ns/x"], "not a job reference"),
])
def test_bad_input_is_one_line_and_exit_2(user_env, args, message):
    assert_one_line_error(run_cli(args, user_env), 2, message)


def test_probe_config_for_pretrain_phase_is_refused(user_env, tmp_path):
    probe = tmp_path / "probe.yaml"
    cfg = yaml.safe_load(CPU_CONFIG.read_text())
    cfg["Global"]["task_type"] = "Classification"
    probe.write_text(yaml.safe_dump(cfg))
    assert_one_line_error(run_cli(["render", "pretrain", "-c", probe], user_env), 2, "needs Global.task_type")


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
def test_unknown_job_is_exit_1_with_a_hint(user_env, command):
    proc = run_cli([command, "local://simsiam-pretrain-zzzzz"], user_env)
    assert_one_line_error(proc, 1, "no local run 'simsiam-pretrain-zzzzz'")
    assert "simsiam-job list" in proc.stderr


def test_linear_probe_from_a_job_that_does_not_exist(user_env):
    proc = run_cli(["submit", "linear-probe", *CFG, "--from", "local://ghost"], user_env)
    assert_one_line_error(proc, 1, "no local run 'ghost'")


# Values a user may legitimately put in a config override; each must reach the trainer's config
# exactly as the trainer itself would read it from `simsiam-train -o`.
HOSTILE_OVERRIDES = [
    "$(touch /tmp/pwned)", "`id`", "{{ secret }}", "{% if 1 %}x{% endif %}", "it's",
    '"double \\"quoted\\" and \'single\'"', "'single ''quoted'''", '"line 1\\nline 2"',
    "semi; rm -rf ~", "a #b", "100% & | > <", "é 😀",
]


@pytest.mark.parametrize("value", HOSTILE_OVERRIDES)
def test_hostile_override_values_reach_the_trainer_config_exactly(user_env, tmp_path, value):
    from trainer.config import apply_overrides

    override = f"Global.save_inference_dir={value}"
    out = tmp_path / "out"
    run_cli(["render", "pretrain", *CFG, "-o", override, "--name", "hostile", "--out", out], user_env,
            check=True)
    expected = apply_overrides({"Global": {}}, [override])["Global"]["save_inference_dir"]
    rendered = yaml.safe_load((out / "config.yaml").read_text())
    assert rendered["Global"]["save_inference_dir"] == expected
    assert isinstance(expected, str) and ("$(" not in value or "$(" in expected)
    # The local command is valid shell; its config file and env survive shell parsing intact.
    script = (out / "run.sh").read_text()
    subprocess.run(["bash", "-n", "-c", script], check=True)
    words = shlex.split(script.splitlines()[-1])
    assert words[words.index("-c") + 1].endswith("/runs/hostile/config.yaml")


def test_env_values_with_shell_syntax_reach_the_process_environment_exactly(user_env, tmp_path):
    value = "$(id) `id` \"q\" 'q' {{ x }}\nsecond line"
    out = tmp_path / "out"
    run_cli(["render", "pretrain", *CFG, "--env", f"NOTE={value}", "--out", out], user_env, check=True)
    script = (out / "run.sh").read_text().replace("cd ", ": ", 1)
    printed = subprocess.run(["bash", "-c", script.replace("\\\n  ", "printenv NOTE #", 1)],
                             capture_output=True, text=True, check=True).stdout
    assert printed == value + "\n"


def test_render_is_pure_and_submit_dry_run_starts_nothing(user_env, tmp_path):
    proc = run_cli(["render", "pretrain", *CFG, "--name", "pure"], user_env, check=True)
    assert "paddle.distributed.launch" in proc.stdout and "--nproc_per_node 1" in proc.stdout
    proc = run_cli(["submit", "pretrain", *CFG, "--name", "pure", "--dry-run", "client"], user_env,
                   check=True)
    assert proc.stdout.strip() == "local://pure"
    assert not (tmp_path / "data" / "simsiam-job").exists()


def test_generated_names_are_dns_labels_with_the_phase(user_env):
    names = set()
    for _ in range(3):
        text = run_cli(["render", "pretrain", *CFG], user_env, check=True).stdout
        names.add(text.split()[3].rstrip(":"))
    assert len(names) == 3
    assert all(n.startswith("simsiam-pretrain-") and len(n) == len("simsiam-pretrain-") + 5 for n in names)


def test_help_of_every_command_shows_an_example(user_env):
    for command in ["submit", "render", "status", "logs", "cancel", "list", "quickstart", "options"]:
        proc = run_cli([command, "--help"], user_env, check=True)
        assert "Example" in proc.stdout and f"simsiam-job {command}" in proc.stdout.split("Example")[1]
    assert run_cli(["--version"], user_env, check=True).stdout.strip().startswith("simsiam-job 0.")


def test_shell_completion_script_is_available(user_env):
    # Typer detects the shell from the parent process, as in a user's terminal: run it under bash
    # (the trailing `true` keeps bash from exec-ing the command, which would hide bash).
    proc = subprocess.run(["bash", "-c", f"{BIN / 'simsiam-job'} --show-completion; true"],
                          env=user_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "complete" in proc.stdout and "simsiam-job" in proc.stdout.lower().replace("_", "-")


PROBE = """
import sys
from simsiam_job.cli import main
sys.argv = ["simsiam-job", *{args!r}]
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("paddle", "kubernetes", "rich", "numpy", "torch"))
print("HEAVY", heavy, code, file=sys.stderr)
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["render", "pretrain", "-c", str(CPU_CONFIG), "--procs", "2"],
    ["render", "pretrain", "--backend", "kubernetes", "--nodes", "16", "--gpus", "8", "--output", "results"],
    ["render", "pretrain", "--backend", "slurm", "--nodes", "2", "--gpus", "8"],
])
def test_cli_start_up_imports_neither_paddle_nor_the_kubernetes_client(user_env, args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True,
                          text=True, env=user_env, cwd=REPO, timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "HEAVY [] 0", proc.stderr[-2000:]


def test_help_does_not_load_templates_yaml_or_the_trainer(user_env):
    code = PROBE.format(args=["--help"]) + (
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('jinja2', 'yaml', 'trainer')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=user_env,
                          timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.slow
def test_built_wheel_ships_the_k8s_and_slurm_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("simsiam_job-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for area in ("k8s", "slurm"):
        shipped = {p.relative_to(REPO).as_posix() for p in (REPO / area).glob("*.j2")}
        assert shipped, f"no templates in {area}/"
        for rel in shipped:
            assert f"simsiam_job/_templates/{rel}" in names
    assert "simsiam_job/cli.py" in names and "trainer/config.py" in names


def test_list_reports_an_unreachable_default_cluster_but_still_lists(user_env):
    env = {**user_env, "SIMSIAM_JOB_BACKEND": "kubernetes",
           "SIMSIAM_JOB_KUBERNETES_KUBECONFIG": "/nonexistent"}
    proc = run_cli(["list"], env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: kubernetes:" in proc.stderr and "no jobs" in proc.stderr
    assert run_cli(["list", "--backend", "local"], env).returncode == 0


# ---- mistakes caught at render time, on the laptop --------------------------------------------

PASSL = REPO / "tests" / "passl"
K8S = ["--backend", "kubernetes"]


@pytest.mark.parametrize("args, message", [
    (["render", "pretrain", *CFG, "-o", "Global.output_dir=/elsewhere"], "use --output"),
    (["render", "pretrain", *CFG, "-o", "Global.device=gpu"], "use --gpus"),
    (["render", "pretrain", *CFG, "-o", "Global=x"], "the launcher sets Global.output_dir"),
    (["render", "pretrain", *CFG, "--data", "/d", "-o", "DataLoader.Train.dataset.root=/x"],
     "give one or the other"),
    (["render", "pretrain", *CFG, "-o", "Model.name=simsiam_resnet05_pretrain"],
     "did you mean 'simsiam_resnet50_pretrain'"),
    (["render", "pretrain", *CFG, "-o", "Optimizer.lr.learning_rate=.nan"], "expected a finite number"),
    (["submit", "pretrain", *CFG, "-o", "Optimizer.weight_decay=.inf", "--dry-run", "client"],
     "expected a finite number"),
    (["render", "pretrain", *CFG, *K8S, "--set", "namespace=ML_Team"],
     "namespace 'ML_Team' is not a DNS-1123 label"),
    (["render", "pretrain", *CFG, *K8S, "--set", "memory=lots"],
     "memory 'lots' is not a Kubernetes quantity"),
    (["render", "pretrain", *CFG, *K8S, "--set", "cpu=0"], "cpu '0' must be more than zero"),
    (["render", "pretrain", *CFG, *K8S, "--set", "shm_size=16 Gi"], "not a Kubernetes quantity"),
    (["render", "pretrain", *CFG, *K8S, "--set", "shm_size=64Gi"], "larger than the memory limit 8Gi"),
    (["render", "pretrain", *CFG, *K8S, "--set", "memory=4Gi", "--set", "shm_size=5Gi"],
     "larger than the memory limit 4Gi"),
    (["render", "pretrain", *CFG, *K8S, "--set", "service_account=Bad Account"], "not a DNS-1123 name"),
    (["render", "pretrain", *CFG, *K8S, "--set", "gpu_product=A100 80GB"], "not a label value"),
    (["render", "pretrain", *CFG, *K8S, "--set", "port=0"], "not a port number"),
    (["render", "pretrain", *CFG, "--set", "grace_seconds=nan"], "expected a finite number"),
])
def test_mistakes_fail_at_render_time(user_env, args, message):
    assert_one_line_error(run_cli(args, user_env), 2, message)


def test_missing_file_named_by_simsiam_job_config_is_an_error(user_env, tmp_path):
    env = {**user_env, "SIMSIAM_JOB_CONFIG": str(tmp_path / "my-settings.yaml")}
    assert_one_line_error(run_cli(["render", "pretrain", *CFG], env), 2,
                          f"SIMSIAM_JOB_CONFIG names {tmp_path / 'my-settings.yaml'}, which does not exist")
    # SIMSIAM_JOB_CONFIG=/dev/null: no settings
    run_cli(["render", "pretrain", *CFG], {**user_env, "SIMSIAM_JOB_CONFIG": "/dev/null"}, check=True)


def test_shm_is_never_larger_than_the_memory_limit(user_env):
    def shm_and_memory(*args):
        docs = list(yaml.safe_load_all(
            run_cli(["render", "pretrain", *CFG, *K8S, *args], user_env, check=True).stdout))
        pod = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "dshm")
        return volume["emptyDir"]["sizeLimit"], pod["containers"][0]["resources"]["limits"]["memory"]

    assert shm_and_memory() == ("4096Mi", "8Gi")                        # CPU pod: half its 8Gi
    assert shm_and_memory("--gpus", "8") == ("16Gi", "256Gi")
    assert shm_and_memory("--set", "memory=20Gi", "--set", "shm_size=20Gi") == ("20Gi", "20Gi")


@pytest.mark.parametrize("phase, name, gpus", [("pretrain", "pretrain.yaml", "8"),
                                                ("linear-probe", "linear_probe.yaml", "8")])
def test_passl_formatted_configs_render_as_written(user_env, phase, name, gpus):
    """PASSL's own spelling (1e-4, None, .1) goes through validation and into the job's config."""
    proc = run_cli(["render", phase, "-c", PASSL / name, *K8S, "--gpus", gpus], user_env, check=True)
    config_map = next(d for d in yaml.safe_load_all(proc.stdout) if d["kind"] == "ConfigMap")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    if phase == "pretrain":
        assert config["Optimizer"]["weight_decay"] == 1e-4
    else:
        assert config["Optimizer"]["trust_coefficient"] == 1e-3
