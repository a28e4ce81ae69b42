"""The batch script as rendered: directives, the per-node command, quoting. No cluster needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers.cli import TINY, assert_one_line_error, run_cli
from helpers.prereqs import unavailable

from simsiam_job.backends import get_backend
from simsiam_job.build import Request, build_spec

HOSTILE = "it's a $(touch pwned) `x` \"dir\" \\ ; & | * ~"

SHAPES = {
    "gpu-2x8-all-options": dict(nodes=2, gpus=8, sets=[
        "partition=gpu", "account=proj-1", "qos=high", "time=1-00:00:00", "mem=200G",
        "cpus_per_task=32", "venv=/opt/simsiam env", "signal_grace=600"]),
    "gres": dict(nodes=4, gpus=4, sets=["gpu_directive=gres", "port=29500", "requeue=false"]),
    "cpu": dict(nodes=2, gpus=0, procs=2),
    "pyxis": dict(nodes=2, gpus=8, image="nvcr.io/team/simsiam:1.0",
                  sets=["container=pyxis", "container_mounts=/scratch,/datasets"]),
    "apptainer": dict(nodes=1, gpus=1, image="/images/simsiam.sif", sets=["container=apptainer"]),
    "hostile": dict(nodes=2, gpus=0, data=f"/data/{HOSTILE}", output=f"/out/{HOSTILE}",
                    env=[f"WEIRD={HOSTILE}", "MULTI=line 1\nline 2"]),
}


def render(tmp_path, *, nodes=1, gpus=0, procs=1, sets=(), image=None, data="/data/fmnist",
           output=None, env=(), name="demo", overrides=()):
    req = Request(phase="pretrain", backend="slurm", nodes=nodes, gpus=gpus, procs=procs,
                  config=TINY[1], overrides=list(overrides), image=image, name=name, data=data,
                  output=output, env=list(env), sets=[f"job_root={tmp_path}/jobs", *sets])
    spec = build_spec(req, environ={"SIMSIAM_JOB_CONFIG": os.devnull})
    return spec, get_backend("slurm", spec.options).render(spec)


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def run_node_body(script: str) -> str:
    start = script.index("run_node() {")
    return script[start:script.index("\n}\n", start) + 3]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_passes_bash_n_and_shellcheck(tmp_path, shape):
    if shutil.which("shellcheck") is None:
        unavailable("shellcheck (Debian package shellcheck) is not installed")
    _, rendered = render(tmp_path, **SHAPES[shape])
    path = tmp_path / "job.sbatch"
    path.write_text(rendered.text)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + rendered.text


def test_directives_of_a_gpu_job_with_every_option(tmp_path):
    _, rendered = render(tmp_path, **SHAPES["gpu-2x8-all-options"])
    job = f"{tmp_path}/jobs/demo"
    assert directives(rendered.text) == [
        "--job-name=demo", "--comment=simsiam-job:pretrain", "--nodes=2", "--ntasks-per-node=1",
        "--gpus-per-node=8", "--cpus-per-task=32", "--mem=200G", "--time=1-00:00:00",
        "--partition=gpu", "--account=proj-1", "--qos=high", f"--chdir={job}",
        f"--output={job}/logs/batch-%j-%N.out", f"--error={job}/logs/batch-%j-%N.err",
        "--open-mode=append", "--signal=B:TERM@600", "--requeue"]
    assert "source '/opt/simsiam env'/bin/activate" in rendered.text
    body = run_node_body(rendered.text)
    assert "--nproc_per_node 8" in body and "--devices" not in body   # one process per visible GPU
    assert "-o 'Global.device=\"gpu\"'" in body
    assert f"--output={job}/logs/rank%n-%N.log" in rendered.text   # one log per node, named by both


def test_gpu_jobs_ask_for_cpus_per_gpu(tmp_path):
    """Without CPUs per task, Slurm may give all 8 trainers of a node (and their data loader
    workers) one core."""
    gpu_jobs = [directives(render(tmp_path, nodes=2, gpus=gpus, sets=sets)[1].text)
                for gpus, sets in ((8, ()), (4, ()), (8, ["cpus_per_gpu=12"]), (8, ["cpus_per_task=20"]))]
    assert [[d for d in lines if d.startswith("--cpus-per-task")] for lines in gpu_jobs] == [
        ["--cpus-per-task=64"], ["--cpus-per-task=32"], ["--cpus-per-task=96"], ["--cpus-per-task=20"]]


def test_gres_directive_fixed_port_and_no_requeue(tmp_path):
    _, rendered = render(tmp_path, **SHAPES["gres"])
    lines = directives(rendered.text)
    assert "--gres=gpu:4" in lines and not any(d.startswith("--gpus-per-node") for d in lines)
    assert "--no-requeue" in lines and "--requeue" not in lines
    assert "MASTER_PORT=29500" in rendered.text


def test_cpu_job_runs_processes_instead_of_devices(tmp_path):
    _, rendered = render(tmp_path, **SHAPES["cpu"])
    assert not any("gpu" in d or "gres" in d for d in directives(rendered.text))
    body = run_node_body(rendered.text)
    assert "--nproc_per_node 2" in body and "--devices" not in body
    assert "--cpus-per-task=2" in directives(rendered.text)         # a core for each process
    # Rendezvous with the first node; every node's rank is its own SLURM_NODEID.
    assert '--master "$MASTER_ADDR:$MASTER_PORT"' in body and '--rank "$SLURM_NODEID"' in body
    assert '--nnodes "$SLURM_NNODES"' in body
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in rendered.text
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1" in rendered.text
    assert "-o Global.auto_resume=true" in body


def test_containers(tmp_path):
    _, pyxis = render(tmp_path, **SHAPES["pyxis"])
    job = f"{tmp_path}/jobs/demo"
    assert ("--container-image=nvcr.io/team/simsiam:1.0 "
            f"--container-mounts={job},/data/fmnist,/scratch,/datasets" in pyxis.text)
    _, apptainer = render(tmp_path, **SHAPES["apptainer"])
    body = run_node_body(apptainer.text)
    assert f"exec apptainer exec \\\n    --nv \\\n    --bind {job},/data/fmnist /images/simsiam.sif" in body
    assert "--container-image" not in apptainer.text


def test_rendered_files_are_what_submit_writes(tmp_path):
    spec, rendered = render(tmp_path, output="/scratch/out")
    assert rendered.payload == rendered.text == rendered.files["job.sbatch"]
    assert rendered.files["config.yaml"] == spec.config_yaml
    meta = json.loads(rendered.files["job.json"])
    assert meta["output_dir"] == "/scratch/out/demo" and meta["nodes"] == 1


def test_hostile_values_reach_the_command_unchanged(tmp_path):
    """Runs the rendered per-node function with bash, as srun would, with a `python` that records
    its argv instead of starting paddle (the one stand-in: what matters here is the shell)."""
    _, rendered = render(tmp_path, **SHAPES["hostile"])
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        json.dump({{"argv": sys.argv[1:], "weird": os.environ.get("WEIRD"),
                    "multi": os.environ.get("MULTI")}},
                  open(os.environ["ARGV_FILE"], "w"))
        """))
    (stub / "python").chmod(0o755)
    text = rendered.text
    exports = text[text.index("set -euo pipefail"):text.index("# Rank 0")]   # the --env exports
    script = f"{exports}\n{run_node_body(text)}\nrun_node\n"
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "ARGV_FILE": str(tmp_path / "argv.json"),
           "SLURM_NODEID": "1", "SLURM_NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists()
    got = json.loads((tmp_path / "argv.json").read_text())
    assert got["weird"] == HOSTILE and got["multi"] == "line 1\nline 2"
    argv = got["argv"]
    assert argv[argv.index("--master") + 1] == "10.0.0.1:29500" and argv[argv.index("--rank") + 1] == "1"
    assert argv[argv.index("--log_dir") + 1] == f"{tmp_path}/jobs/demo/logs/paddle-rank1"
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert f"DataLoader.Train.dataset.root={json.dumps(f'/data/{HOSTILE}/train')}" in overrides
    assert f"Global.output_dir={json.dumps(f'/out/{HOSTILE}/demo')}" in overrides


@pytest.mark.parametrize("flags, message", [
    (["--set", "partition=gpu a100"], "partition"),
    (["--set", "account=a\nb"], "account"),
    (["--set", "time=two days"], "time"),
    (["--set", "mem=lots"], "mem"),
    (["--set", "container=docker"], "container"),
    (["--set", "gpu_directive=gpus"], "gpu_directive"),
    (["--set", "job_root=/scratch/my jobs"], "job_root"),
    (["--set", "job_root=/scratch/100%"], "job_root"),
    (["--set", "partiton=gpu"], "partition"),         # misspelled: the closest option is named
    (["--data", "/data/a\nb"], "newline"),
])
def test_values_that_cannot_be_written_safely_are_rejected(tmp_path, flags, message):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = run_cli(["render", "pretrain", "-b", "slurm", "--name", "demo", *TINY[:2], *flags], env)
    assert_one_line_error(proc, 2, message)


def test_cli_render_prints_the_script_and_writes_the_job_files(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "SIMSIAM_JOB_SLURM_PARTITION": "gpu"}
    proc = run_cli(["render", "pretrain", "-b", "slurm", "-n", "2", "-g", "8", "--name", "demo",
                    *TINY[:2], "--out", tmp_path / "out"], env, check=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "job.json", "job.sbatch"]
    script = (tmp_path / "out" / "job.sbatch").read_text()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --nodes=2" in script
    assert f"#SBATCH --chdir={tmp_path}/simsiam-jobs/demo" in script   # job_root defaults to ~/simsiam-jobs
    assert proc.stdout == ""
