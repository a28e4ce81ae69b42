"""Whole-group restart on the local backend, on real processes: a lost rank stops the group, the
group starts again and resumes from the newest checkpoint; a bounded number of times; exit 2 and 3
never restart. Driven through the `simsiam-job` CLI; nothing is mocked."""

import json
import time

import pytest
from helpers.localruns import (
    alive,
    assert_continuous,
    kill,
    output_dir,
    poll,
    resumed_steps,
    run_dir,
    steps,
    submit,
    trainer_pid,
    user,
    wait_finished,
    wait_for_step,
)

pytestmark = pytest.mark.slow


def test_a_killed_rank_restarts_the_whole_group_which_resumes_and_succeeds(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "regroup", "-o", "Global.epochs=12")          # 48 steps
    wait_for_step(env, "regroup", 8)
    survivor, lost = trainer_pid(env, "regroup", 0), trainer_pid(env, "regroup", 1)
    killed = time.time()
    kill(lost)
    # every rank of the group stops (rank 0 too), within a minute
    poll(lambda: not alive(survivor), 60, "rank 0 stopping after rank 1 was killed")
    st = wait_finished(ref, env)
    assert st["state"] == "SUCCEEDED", st
    assert st["detail"]["group_restarts"] == 1
    launch_log = (run_dir(env, "regroup") / "logs" / "launch.log").read_text()
    assert "group restart 1 of at most 3: rank 1 killed by SIGKILL" in launch_log
    resumed = resumed_steps((output_dir(env, "regroup") / "train.log").read_text())
    assert len(resumed) == 1 and resumed[0] > 0, resumed
    assert_continuous(steps(env, "regroup"), resumed, 48)
    # Loss -> training again: the restarted group's first step (docs/performance.md has the
    # figures); asserted loosely, so a busy machine cannot make it flake.
    records = [json.loads(line)
               for line in (output_dir(env, "regroup") / "metrics.jsonl").read_text().splitlines()]
    again = min(r["time"] for r in records if r.get("type") == "step" and r["global_step"] == resumed[0] + 1
                and r["time"] > killed)
    print(f"\nrank 1 killed -> the restarted group's first step: {again - killed:.1f} s")
    assert again - killed < 120


def test_group_restarts_are_bounded_then_the_job_fails_with_the_reason(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "bounded", "-o", "Global.epochs=200", "--set", "group_restarts=0")
    wait_for_step(env, "bounded", 4)
    kill(trainer_pid(env, "bounded", 1))
    st = wait_finished(ref, env, timeout=120)
    assert st["state"] == "FAILED"
    assert st["reason"].startswith("gave up after 0 group restarts: rank 1 killed by SIGKILL"), st["reason"]


def test_bad_data_fails_at_once_without_a_restart(tmp_path):
    env = user(tmp_path)
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)  # a class with no images: the trainer's error
    ref = submit(env, tmp_path / "empty", "no-images")
    st = wait_finished(ref, env, timeout=120)
    assert st["state"] == "FAILED" and st["detail"]["exit_code"] == 2
    assert st["detail"]["group_restarts"] == 0
    assert "retrying cannot help" in st["reason"] and str(tmp_path / "empty" / "train") in st["reason"]


def test_a_diverged_run_fails_at_once_without_a_restart(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "huge-lr", "-o", "Optimizer.lr.learning_rate=1.0e+30")
    st = wait_finished(ref, env, timeout=120)
    assert st["state"] == "FAILED" and st["detail"]["exit_code"] == 3
    assert st["detail"]["group_restarts"] == 0
    assert "diverged" in st["reason"], st["reason"]
