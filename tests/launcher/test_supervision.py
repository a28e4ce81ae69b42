"""Local supervision on real processes: whatever process of a run is killed, no trainer runs on
unseen; status follows the trainers, not one pid; cancel is SIGTERM first, then SIGKILL, and says
which. Real `simsiam-train` runs (paddle, CPU) through the `simsiam-job` CLI; nothing is mocked."""


import pytest
from helpers.cli import job_status, run_cli
from helpers.localruns import (
    alive,
    kill,
    launcher_pid,
    output_dir,
    poll,
    run_processes,
    submit,
    supervisor_pid,
    trainer_pid,
    user,
    wait_finished,
    wait_for_step,
)

pytestmark = pytest.mark.slow


def test_killing_the_launcher_leaves_no_trainer_running_and_names_the_signal(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "no-launcher", "-o", "Global.epochs=200", "--set", "group_restarts=0")
    wait_for_step(env, "no-launcher", 3)
    trainers = [trainer_pid(env, "no-launcher", r) for r in (0, 1)]
    kill(launcher_pid(env, "no-launcher"))
    st = wait_finished(ref, env, timeout=120)
    assert not any(alive(pid) for pid in trainers) and run_processes(env, "no-launcher") == []
    assert st["state"] == "FAILED"
    assert st["reason"] == "gave up after 0 group restarts: paddle's launcher was killed by SIGKILL"
    # the orphaned trainers got SIGTERM first: they wrote a checkpoint on their way out
    assert list((output_dir(env, "no-launcher") / "checkpoints").glob("*.pdckpt"))


def test_a_killed_launcher_restarts_the_group_like_a_lost_rank(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "relaunch", "-o", "Global.epochs=10")
    wait_for_step(env, "relaunch", 4)
    kill(launcher_pid(env, "relaunch"))
    st = wait_finished(ref, env, timeout=300)
    assert st["state"] == "SUCCEEDED" and st["detail"]["group_restarts"] == 1


def test_without_its_supervisor_the_run_shows_running_and_cancel_still_checkpoints(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "orphan", "-o", "Global.epochs=500")
    wait_for_step(env, "orphan", 3)
    trainers = [trainer_pid(env, "orphan", r) for r in (0, 1)]
    kill(supervisor_pid(env, "orphan"))
    poll(lambda: not alive(supervisor_pid(env, "orphan")), 10, "the supervisor dying")
    st = job_status(ref, env)
    assert st["state"] == "RUNNING" and "supervisor" in st["reason"] and "gone" in st["reason"]
    assert set(trainers) <= set(st["detail"]["processes"])
    before = set((output_dir(env, "orphan") / "checkpoints").glob("*.pdckpt"))
    report = run_cli(["cancel", ref], env, check=True, timeout=120).stdout
    assert "sent SIGTERM" in report and "its supervisor was gone" in report and "SIGKILL" not in report
    assert not any(alive(pid) for pid in trainers) and run_processes(env, "orphan") == []
    assert job_status(ref, env)["state"] == "CANCELLED"
    after = set((output_dir(env, "orphan") / "checkpoints").glob("*.pdckpt"))
    assert after - before, "SIGTERM must make the trainer write a checkpoint"


def test_cancel_sends_sigkill_only_after_the_grace_period(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "stubborn", "-o", "Global.epochs=500", "--set", "grace_seconds=0")
    wait_for_step(env, "stubborn", 2)
    report = run_cli(["cancel", ref], env, check=True, timeout=60).stdout
    assert "sent SIGTERM, then SIGKILL" in report and "0 s later" in report, report
    poll(lambda: run_processes(env, "stubborn") == [], 30, "every process of the run gone")
    assert job_status(ref, env)["state"] == "CANCELLED"


def test_a_second_run_on_the_same_output_directory_fails_naming_the_holder(tmp_path, fmnist):
    """Two users, one shared --output: the trainer's lock refuses the second run, and the launcher
    shows the trainer's line as the job's reason."""
    env_a, env_b = user(tmp_path / "a"), user(tmp_path / "b")
    out = tmp_path / "shared-output"
    first = submit(env_a, fmnist, "writer", "-o", "Global.epochs=500", "--output", out)
    poll(lambda: (out / "writer" / "run.lock").exists(), 120, "the first run taking the lock")
    second = submit(env_b, fmnist, "writer", "-o", "Global.epochs=1", "--output", out)
    st = wait_finished(second, env_b, timeout=120)
    assert st["state"] == "FAILED" and st["detail"]["exit_code"] == 2
    assert "is in use by job writer on host" in st["reason"], st["reason"]
    assert job_status(first, env_a)["state"] == "RUNNING"
    run_cli(["cancel", first], env_a, check=True, timeout=120)
