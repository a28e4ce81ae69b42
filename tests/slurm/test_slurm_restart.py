"""Whole-group restart and resume on the real two-node Slurm cluster: the real trainer on both
nodes; a rank's task is killed for real (SIGKILL to its process)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from helpers.cli import TINY, assert_one_line_error, run_cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(env, name, *flags):
    proc = run_cli(["submit", "pretrain", "--nodes", "2", "--gpus", "0", "--name", name, *TINY,
                    "-o", "Global.save_interval_steps=3", *flags], env, check=True)
    return proc.stdout.strip()


def trainer_pid(output: Path, rank: int, timeout=180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for beat in sorted(output.glob(f"heartbeats/*/rank-{rank:05d}.json"),
                           key=lambda p: p.stat().st_mtime):
            try:
                return json.loads(beat.read_text())["pid"]
            except (OSError, ValueError):
                pass
        time.sleep(0.3)
    raise AssertionError(f"rank {rank} never wrote a heartbeat in {output}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def last_step(output: Path) -> int:
    from trainer import contract
    record = contract.read_last_step(output / contract.METRICS)
    return record["global_step"] if record else 0


def steps(output: Path) -> list[int]:
    return [r["global_step"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
            if r.get("type") == "step"]


def test_a_killed_task_restarts_the_group_in_the_allocation_and_resumes(tmp_path, user_env, fmnist):
    ref = submit(user_env, "regroup", "--data", fmnist, "-o", "Global.epochs=12")      # 48 steps
    output = tmp_path / "jobs" / "regroup" / "output"
    wait_for(ref, user_env, lambda st: last_step(output) >= 8, what="step 8")
    survivor, lost = trainer_pid(output, 0), trainer_pid(output, 1)
    killed = time.time()
    os.kill(lost, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while alive(survivor) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(survivor), "rank 0 still runs a minute after rank 1 was killed"
    final, _ = wait_for(ref, user_env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=400)
    assert final["detail"]["group_restarts"] == 1
    batch = "".join(p.read_text() for p in (tmp_path / "jobs" / "regroup" / "logs").glob("batch-*.out"))
    assert re.search(r"group restart 1 of at most 3: rank 1 on node2: ", batch), batch
    resumed = [int(s) for s in re.findall(r"resumed from \S*step_(\d+)\.pdckpt",
                                          (output / "train.log").read_text())]
    assert len(resumed) == 1 and resumed[0] > 0
    seq = steps(output)
    assert sorted(set(seq)) == list(range(1, 49))
    for a, b in zip(seq, seq[1:], strict=False):
        assert b == a + 1 or b - 1 == resumed[0], (a, b, resumed)
    # Loss -> training again (docs/performance.md has the figures); asserted loosely, so a busy
    # machine cannot make it flake.
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    again = min(r["time"] for r in records if r.get("type") == "step" and r["global_step"] == resumed[0] + 1
                and r["time"] > killed)
    print(f"\nrank 1 killed -> the restarted group's first step: {again - killed:.1f} s")
    assert again - killed < 120


def test_bounded_restarts_fail_with_the_reason_and_resume_continues_as_attempt_2(tmp_path, user_env, fmnist):
    ref = submit(user_env, "give-up", "--data", fmnist, "-o", "Global.epochs=10", "--set", "group_restarts=0")
    output = tmp_path / "jobs" / "give-up" / "output"
    wait_for(ref, user_env, lambda st: last_step(output) >= 5, what="step 5")
    os.kill(trainer_pid(output, 1), signal.SIGKILL)
    failed, _ = wait_for(ref, user_env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=120)
    assert failed["reason"].startswith("gave up after 0 group restarts: rank 1 on node2: "), failed["reason"]

    resumed = run_cli(["resume", ref], user_env, check=True)
    new_ref = resumed.stdout.strip()
    assert new_ref != ref and new_ref.startswith("slurm://") and "attempt 2" in resumed.stderr
    assert_one_line_error(run_cli(["resume", ref], user_env), 2, f"resumed already as {new_ref}")
    final, _ = wait_for(new_ref, user_env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED",
                        timeout=400)
    assert final["attempt"] == 2
    assert f"{new_ref}  SUCCEEDED  attempt 2" in run_cli(["status", new_ref], user_env, check=True).stdout
    assert sorted(set(steps(output))) == list(range(1, 41))
    assert_one_line_error(run_cli(["resume", new_ref], user_env), 2, "already succeeded")


def test_bad_data_fails_at_once_without_a_restart(tmp_path, user_env):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    ref = submit(user_env, "no-images", "--data", tmp_path / "empty")
    final, _ = wait_for(ref, user_env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=180)
    assert final["detail"]["group_restarts"] == 0, final
    assert (final["reason"].startswith("rank ")
            and "Exited with exit code 2 (bad input), retrying cannot help" in final["reason"])
    assert str(tmp_path / "empty" / "train") in final["reason"], final["reason"]   # the trainer's own line
