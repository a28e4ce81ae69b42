"""Fixtures for the Slurm backend tests.

Render tests need nothing but the launcher (and Debian's shellcheck). End-to-end tests (marker
``slurm``) run on a real two-node Slurm cluster that ``tests/cluster/slurm.sh up`` starts on this
machine (root and network namespaces needed); without it they skip, or fail when
SIMSIAM_REQUIRE_ALL=1 (CI). The CLI runs as a user runs it: ``simsiam-job ...`` in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLUSTER = REPO / "tests" / "cluster" / "slurm.sh"
CPU_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_cpu.yaml"
REQUIRE_ALL = os.environ.get("SIMSIAM_REQUIRE_ALL") == "1"
# A seconds-long model; the real trainer, the real data pipeline.
TINY = ["-c", str(CPU_CONFIG), "-o", "Model.width=4", "-o", "Model.dim=16", "-o", "Model.pred_dim=8",
        "-o", "DataLoader.Train.sampler.batch_size=8", "-o", "Global.print_batch_step=1"]


def unavailable(reason: str):
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SIMSIAM_REQUIRE_ALL=1)")
    pytest.skip(reason)


def run_cli(args, env, *, timeout=120, check=False):
    """``simsiam-job ARGS`` in a fresh process; returns the CompletedProcess (text)."""
    proc = subprocess.run([str(BIN / "simsiam-job"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"simsiam-job {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, code=2, contains=""):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert contains in lines[0], lines[0]


@pytest.fixture(scope="session")
def slurm_cluster():
    """The two-node cluster (node1, node2); yields the environment for Slurm's commands."""
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster needs root (network namespaces, slurmd)")
    try:
        up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        unavailable("tests/cluster/slurm.sh up did not finish in 600 s")
    if up.returncode != 0:
        unavailable(f"tests/cluster/slurm.sh up failed: {up.stderr.strip().splitlines()[-1:]}")
    conf = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True, check=True)
    slurm_conf = conf.stdout.strip().split("=", 1)[1]
    os.environ["SLURM_CONF"] = slurm_conf
    yield {"SLURM_CONF": slurm_conf}
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory):
    """A real Fashion-MNIST ImageFolder (64 train images) on the shared filesystem."""
    from trainer.data import fashion_mnist

    if not (fashion_mnist.source_dir() / "train-images-idx3-ubyte.gz").is_file():
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 64, 16, seed=0)


@pytest.fixture
def user_env(tmp_path, slurm_cluster):
    """A user's environment: jobs under tmp_path/jobs, the trainer from this venv on the nodes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(slurm_cluster, HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               OMP_NUM_THREADS="1", SIMSIAM_JOB_BACKEND="slurm",
               SIMSIAM_JOB_SLURM_JOB_ROOT=str(tmp_path / "jobs"),
               SIMSIAM_JOB_SLURM_VENV=sys.prefix, SIMSIAM_JOB_SLURM_CANCEL_GRACE="60")
    (tmp_path / "home").mkdir()
    return env


def status(ref, env) -> dict:
    return json.loads(run_cli(["status", "--json", ref], env, check=True).stdout)


def wait_for(ref, env, predicate, *, timeout=240, what="the expected state"):
    """Poll ``simsiam-job status`` until predicate(status) holds; return the states seen, in order."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(ref, env)
        if not seen or seen[-1] != st["state"]:
            seen.append(st["state"])
        if predicate(st):
            return st, seen
        if st["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") and not predicate(st):
            break
        time.sleep(0.5)
    logs = run_cli(["logs", "--all", "--tail", "40", ref], env).stdout
    raise AssertionError(f"{ref}: no {what} within {timeout} s; states {seen}, last {st}\n{logs}")


def scontrol(*args, env):
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, env=env, check=True)
