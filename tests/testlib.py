"""Helpers every test area shares: running the CLI as a user does, and judging what a user sees.

(A uniquely named module on pytest's pythonpath: each area has its own conftest.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CPU_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_cpu.yaml"
REQUIRE_ALL = os.environ.get("SIMSIAM_REQUIRE_ALL") == "1"


def unavailable(reason: str):
    """Skip when a prerequisite is absent; CI (SIMSIAM_REQUIRE_ALL=1) fails instead."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SIMSIAM_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


@contextlib.contextmanager
def slurm_test_cluster():
    """The two-node Slurm test cluster (tests/cluster/slurm.sh; root and network namespaces
    needed): yields the environment Slurm's commands need. A cluster that was up before (someone
    is using it) stays up after; one started here is stopped again."""
    cluster = REPO / "tests" / "cluster" / "slurm.sh"
    if os.geteuid() != 0:
        unavailable("the Slurm test cluster needs root (network namespaces, slurmd)")
    conf = subprocess.run(["bash", str(cluster), "env"], capture_output=True, text=True, check=True)
    slurm_conf = conf.stdout.strip().split("=", 1)[1]
    was_up = shutil.which("scontrol") is not None and os.path.isfile(slurm_conf) and subprocess.run(
        ["scontrol", "ping"], env={**os.environ, "SLURM_CONF": slurm_conf}, capture_output=True,
        timeout=30).returncode == 0
    try:
        up = subprocess.run(["bash", str(cluster), "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        unavailable("tests/cluster/slurm.sh up did not finish in 600 s")
    if up.returncode != 0:
        unavailable(f"tests/cluster/slurm.sh up failed: {up.stderr.strip().splitlines()[-1:]}")
    try:
        yield {"SLURM_CONF": slurm_conf}
    finally:
        if not was_up:
            subprocess.run(["bash", str(cluster), "down"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> Path:
    """The one small real data set of the end-to-end tests: a Fashion-MNIST ImageFolder with 64
    train images (train/<class>/) and 16 validation images (val/<class>/), balanced over the
    classes. Import it into an area's conftest.py (``from testlib import fmnist``) to use it."""
    from trainer.data import fashion_mnist

    if not all((fashion_mnist.source_dir() / f"{split}-images-idx3-ubyte.gz").is_file()
               for split in ("train", "t10k")):
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 64, 16, seed=0)


def run_cli(args, env, *, timeout=120, cwd=None, check=False):
    """``simsiam-job ARGS`` in a fresh process; returns the CompletedProcess (text)."""
    proc = subprocess.run([str(BIN / "simsiam-job"), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"simsiam-job {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, code=2, contains=""):
    """What a user must see for bad input: exit ``code``, one line ``error: ...``, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert contains in lines[0], lines[0]


def job_status(ref, env) -> dict:
    return json.loads(run_cli(["status", "--json", ref], env, check=True).stdout)


def wait_for(ref, env, predicate, *, timeout=240, what="the expected state"):
    """Poll ``simsiam-job status`` until predicate(status) holds; return (status, states seen in order).

    Gives up early when the job ends without the predicate holding, and shows its logs then.
    """
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job_status(ref, env)
        if not seen or seen[-1] != st["state"]:
            seen.append(st["state"])
        if predicate(st):
            return st, seen
        if st["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.3)
    logs = run_cli(["logs", "--all", "--tail", "40", ref], env).stdout
    raise AssertionError(f"{ref}: no {what} within {timeout} s; states {seen}, last {st}\n{logs}")


@pytest.fixture
def shared_dir():
    """A folder every user of the machine can enter and list (0755, under the system's temporary
    folder), standing in for a shared filesystem or an output volume."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="simsiam-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


NOBODY = 65534


def another_user_can_read(path: Path, shared: Path) -> bool:
    """Whether a different, unprivileged user could read ``path`` (below ``shared``): for real, by
    reading it as uid/gid 65534 when the tests run as root; else from the modes, as the kernel
    judges them (every folder from ``shared`` down searchable by others, the file readable)."""
    if os.geteuid() == 0:
        return subprocess.run(["cat", str(path)], user=NOBODY, group=NOBODY, extra_groups=[],
                              capture_output=True).returncode == 0
    folders = [path.parent, *[p for p in path.parent.parents if shared in (p, *p.parents)]]
    return all(os.stat(d).st_mode & 0o001 for d in folders) and bool(os.stat(path).st_mode & 0o004)


def files_holding(root: Path, *values: str) -> list[Path]:
    """Every file below ``root`` whose bytes contain any of ``values``."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                  and any(v.encode() in p.read_bytes() for v in values))
