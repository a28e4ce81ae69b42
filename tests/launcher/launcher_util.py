"""Helpers shared by the launcher tests (a uniquely named module: every test area has a conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "trainer" / "configs" / "simsiam_cifar_resnet18_cpu.yaml"
BIN = Path(sys.executable).parent



def run_cli(args, env, *, timeout=60, cwd=None, check=False):
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
