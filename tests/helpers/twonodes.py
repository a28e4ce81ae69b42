"""A two-"node" paddle run on this machine, and waiting for its steps (the fault tests)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers.paths import REPO
from trainer import contract

TRAIN = Path(sys.executable).parent / "simsiam-train"


class TwoNodes:
    """A two-"node" run on this machine: two paddle.distributed.launch processes (one trainer each)
    that meet through --master, as two hosts of a Slurm or Kubernetes job do. Unlike one launcher
    with two processes, neither launcher knows when the other node's trainer dies: only the
    trainers' own watchdog can stop the survivor."""

    def __init__(self, tmp_path, port: int, output_dir, train_args: list[str], nproc=(1, 1)):
        self.tmp, self.launchers = Path(tmp_path), []
        self.heartbeats = Path(output_dir) / contract.HEARTBEATS
        self.earlier = set(self.heartbeats.glob("*")) if self.heartbeats.is_dir() else set()
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        for node in (0, 1):
            cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2",
                   "--nproc_per_node", str(nproc[node]), "--master", f"127.0.0.1:{port}",
                   "--rank", str(node), "--log_dir", str(self.tmp / f"node{node}"),
                   str(TRAIN), *train_args]
            self.launchers.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))

    def trainer_pid(self, rank: int, timeout=240) -> int:
        """The pid of `rank`'s trainer, from its heartbeat in this start's generation."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for beat in self.heartbeats.glob(f"*/rank-{rank:05d}.json"):
                if beat.parent in self.earlier:
                    continue
                try:
                    return json.loads(beat.read_text())["pid"]
                except (OSError, ValueError):
                    pass
            if any(p.poll() is not None for p in self.launchers):
                break
            time.sleep(0.2)
        raise AssertionError(f"rank {rank} never started training:\n"
                             f"{self.log(0)[-3000:]}\n{self.log(1)[-3000:]}")

    def log(self, node: int) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted((self.tmp / f"node{node}").glob("workerlog.*")))

    def wait(self, node: int, timeout=300) -> int:
        return self.launchers[node].wait(timeout=timeout)

    def close(self):
        for p in self.launchers:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_for_step(output_dir, step: int, timeout=240) -> None:
    """Until metrics.jsonl has a step record at or past global `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = contract.read_last_step(Path(output_dir) / contract.METRICS)
        if record and record["global_step"] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} in {output_dir} within {timeout} s")
