"""`pip install simsiam-job` on a laptop that only launches jobs: the base install brings the
launcher's three dependencies, and `--help` and `render` work with nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers.cli import assert_one_line_error
from helpers.paths import REPO
from helpers.prereqs import unavailable

pytestmark = pytest.mark.slow

TRAINER_STACK = {"numpy", "pillow", "opencv-python-headless", "simplejpeg", "paddlepaddle", "kubernetes"}


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """A fresh venv (no system site-packages) with `pip install .` of this checkout."""
    root = tmp_path_factory.mktemp("light")
    # A copy: pip builds a local directory in place (build/, *.egg-info), which must not land in
    # the checkout.
    src = root / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "quickstart"))
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable(f"cannot create a venv: {made.stderr.strip()[-300:]}")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(src)],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        unavailable(f"pip install of the base launcher failed (offline?): {pip.stderr.strip()[-300:]}")
    return venv


def test_the_base_install_brings_only_the_launchers_dependencies(base_venv):
    listed = subprocess.run([str(base_venv / "bin" / "pip"), "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"typer", "jinja2", "pyyaml", "simsiam-job"} <= installed
    assert not installed & TRAINER_STACK, installed & TRAINER_STACK


@pytest.mark.parametrize("backend, expect", [
    ("local", "paddle.distributed.launch"),
    ("slurm", "#SBATCH --nodes=2"),
    ("kubernetes", "kind: Job"),
])
def test_help_and_render_work_with_only_the_base_install(base_venv, tmp_path, backend, expect):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no kubeconfig, no user config
    cli = str(base_venv / "bin" / "simsiam-job")
    helped = subprocess.run([cli, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0 and "submit" in helped.stdout, helped.stderr
    nodes = "1" if backend == "local" else "2"
    rendered = subprocess.run([cli, "render", "pretrain", "-b", backend, "--nodes", nodes, "--gpus", "8",
                               "--image", "registry.example.com/simsiam:1", "--output", "results",
                               "--name", "demo"], capture_output=True, text=True, env=env, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert expect in rendered.stdout


def test_cluster_commands_without_the_kubernetes_client_name_the_extra(base_venv, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([str(base_venv / "bin" / "simsiam-job"), "status", "kubernetes://ns/job"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert_one_line_error(proc, 2, "pip install 'simsiam-job[kubernetes]'")
