"""Helpers of the local-backend fault tests (group restart, supervision, resume): real runs of the
real trainer driven through the `simsiam-job` CLI, and what a user can see of their processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from helpers.cli import job_status, run_cli
from helpers.paths import CPU_CONFIG
from trainer import contract

# A tiny 2-process pretrain on the 64-image Fashion-MNIST folder: 4 steps per epoch, a checkpoint
# every 3 steps, a progress record every step.
TINY = ["-c", CPU_CONFIG, "--procs", "2", "-o", "Model.width=4", "-o", "Model.dim=16",
        "-o", "Model.pred_dim=8", "-o", "DataLoader.Train.sampler.batch_size=8",
        "-o", "Global.print_batch_step=1", "-o", "Global.save_interval_steps=3"]


def user(tmp_path) -> dict:
    """The environment of a user whose home is ``tmp_path`` (runs and config land there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMSIAM_JOB_")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), OMP_NUM_THREADS="1")
    (tmp_path / "home").mkdir(parents=True, exist_ok=True)
    return env


def submit(env, data, name, *args) -> str:
    proc = run_cli(["submit", "pretrain", *TINY, "--data", data, "--name", name, *args], env,
                   check=True, timeout=60)
    return proc.stdout.strip().splitlines()[0]


def run_dir(env, name) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "simsiam-job" / "runs" / name


def output_dir(env, name) -> Path:
    return run_dir(env, name) / "output"


def poll(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what}")


def last_step(env, name) -> int:
    record = contract.read_last_step(output_dir(env, name) / contract.METRICS)
    return record["global_step"] if record else 0


def wait_for_step(env, name, step, timeout=240) -> None:
    poll(lambda: last_step(env, name) >= step, timeout, f"{name} reaching global step {step}")


def trainer_pid(env, name, rank) -> int:
    """The pid of rank's trainer in the group's current start (from its heartbeat)."""
    def read():
        for beat in sorted((output_dir(env, name) / contract.HEARTBEATS).glob(f"*/rank-{rank:05d}.json"),
                           key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                return json.loads(beat.read_text())["pid"]
            except (OSError, ValueError):
                continue
        return None
    return poll(read, 120, f"rank {rank} of {name} writing its heartbeat")


def alive(pid) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_processes(env, name) -> list[int]:
    """Every live process of this user carrying the run's marker (launcher and trainers)."""
    marker = f"SIMSIAM_JOB_RUN_DIR={run_dir(env, name)}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0")
                    and alive(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def launcher_pid(env, name) -> int:
    """paddle's launcher: the run process whose command line is paddle.distributed.launch."""
    def find():
        for pid in run_processes(env, name):
            try:
                if b"paddle.distributed.launch" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        return None
    return poll(find, 60, "paddle's launcher")


def supervisor_pid(env, name) -> int:
    return int((run_dir(env, name) / "pid").read_text())


def kill(pid, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_finished(ref, env, timeout=300) -> dict:
    return poll(lambda: (lambda st: st if st["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None)(
        job_status(ref, env)), timeout, f"{ref} finishing")


def steps(env, name) -> list[int]:
    """Global steps of the step records in metrics.jsonl, in the order written."""
    lines = (output_dir(env, name) / contract.METRICS).read_text().splitlines()
    return [r["global_step"] for r in map(json.loads, lines) if r.get("type") == "step"]


def resumed_steps(log_text: str) -> list[int]:
    """Global steps that rank 0's log says it resumed at ("resumed from .../epoch_E_step_S.pdckpt")."""
    return [int(m.group(1)) for m in re.finditer(r"resumed from \S*step_(\d+)\.pdckpt", log_text)]


def assert_continuous(seq: list[int], resumed_at: list[int], total: int) -> None:
    """Steps 1..total all written; after each resume at S the steps go on from S + 1: only steps
    past the checkpoint it resumed from are written twice, none is missing."""
    assert sorted(set(seq)) == list(range(1, total + 1)), seq
    drops = [(a, b) for a, b in zip(seq, seq[1:], strict=False) if b <= a]
    for a, b in drops:  # a restart goes back to the step after the checkpoint it resumed from
        assert b - 1 in resumed_at and b - 1 <= a, (drops, resumed_at, seq)
