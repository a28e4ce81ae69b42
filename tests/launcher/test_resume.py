"""`simsiam-job resume` on the local backend, on a real run: cancel mid-run, resume, the new attempt
continues from the checkpoint to SUCCEEDED; status and list show the attempt; a running or
succeeded job is refused with one line."""

import pytest
from helpers.cli import assert_one_line_error, job_status, run_cli
from helpers.localruns import assert_continuous, output_dir, resumed_steps, steps, submit, user, wait_for_step

pytestmark = pytest.mark.slow


def test_a_cancelled_run_resumes_from_its_checkpoint_as_attempt_2(tmp_path, fmnist):
    env = user(tmp_path)
    ref = submit(env, fmnist, "again", "-o", "Global.epochs=8")          # 32 steps
    wait_for_step(env, "again", 6)
    assert_one_line_error(run_cli(["resume", ref], env), 2, "is RUNNING (attempt 1)")
    run_cli(["cancel", ref], env, check=True, timeout=120)
    assert job_status(ref, env)["state"] == "CANCELLED"

    proc = run_cli(["resume", ref, "--wait"], env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ref and "attempt 2" in proc.stderr
    st = job_status(ref, env)
    assert st["state"] == "SUCCEEDED" and st["attempt"] == 2
    assert f"{ref}  SUCCEEDED  attempt 2" in run_cli(["status", ref], env, check=True).stdout
    row = next(r.split() for r in run_cli(["list"], env, check=True).stdout.splitlines() if r.startswith(ref))
    assert row[:4] == [ref, "pretrain", "SUCCEEDED", "2"]
    resumed = resumed_steps((output_dir(env, "again") / "train.log").read_text())
    assert len(resumed) == 1 and resumed[0] > 0
    assert_continuous(steps(env, "again"), resumed, 32)

    assert_one_line_error(run_cli(["resume", ref], env), 2, "already succeeded")


def test_resume_of_an_unknown_run_is_one_line(user_env):
    assert_one_line_error(run_cli(["resume", "local://nope"], user_env), 1, "no local run 'nope'")
