"""``simsiam-job`` run as a user runs it, and what a user must see of it."""

from __future__ import annotations

import json
import subprocess
import time

from helpers.paths import BIN, CPU_CONFIG

# A seconds-long model of the small CPU config: the real trainer, the real data pipeline (the Slurm
# and real-node Kubernetes tests).
TINY = ["-c", str(CPU_CONFIG), "-o", "Model.width=4", "-o", "Model.dim=16", "-o", "Model.pred_dim=8",
        "-o", "DataLoader.Train.sampler.batch_size=8", "-o", "Global.print_batch_step=1"]


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
