"""Helpers shared by the Slurm tests (a uniquely named module: every test area has a conftest,
and only one module can be called ``conftest`` when the whole suite runs)."""

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
