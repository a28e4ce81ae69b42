"""Secrets on a real two-node Slurm cluster: paddle's launcher copies its whole environment into its
log folder on the shared filesystem; no file the job leaves may let another user read an --env or
--env-secret value, and the --env-secret value is read on the node, never written by simsiam-job."""

from __future__ import annotations

import re

import pytest
from helpers.cli import TINY, run_cli, wait_for
from helpers.files import another_user_can_read, files_holding

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PLAIN = "plain-env-value-3Wd"
HIDDEN = "file-secret-value-5Hm"
PADDLE_DUMPS = re.compile(r"^(envlog\.\d+|backup_env\.\d+\.json|.+\.[a-z0-9]+\.log)$")


def test_a_slurm_job_leaves_no_secret_another_user_can_read(tmp_path, user_env, shared_dir):
    secret = tmp_path / "home" / "token"
    secret.write_text(HIDDEN + "\n")
    secret.chmod(0o600)
    env = {**user_env, "SIMSIAM_JOB_SLURM_JOB_ROOT": str(shared_dir / "jobs")}
    # The trainer stops at once (no data): paddle's launcher has written its files by then.
    ref = run_cli(["submit", "pretrain", "--nodes", "2", "--gpus", "0", "--name", "sec", *TINY,
                   "--env", f"PLAIN_VALUE={PLAIN}", "--env-secret", f"API_TOKEN={secret}"],
                  env, check=True).stdout.strip()
    wait_for(ref, env, lambda st: st["state"] not in ("PENDING", "RUNNING"), what="the end", timeout=180)
    job_dir = shared_dir / "jobs" / "sec"
    for rank in (0, 1):
        envlog = (job_dir / "logs" / f"paddle-rank{rank}" / "envlog.0").read_text()
        assert f"PLAIN_VALUE={PLAIN}" in envlog and f"API_TOKEN={HIDDEN}" in envlog, envlog
    holding = files_holding(shared_dir, PLAIN, HIDDEN)
    readable = [str(p) for p in holding if another_user_can_read(p, shared_dir)]
    assert not readable, f"another user can read a secret in: {readable}"
    copied = [p for p in files_holding(shared_dir, HIDDEN)
              if not (p.parent.name.startswith("paddle-rank") and PADDLE_DUMPS.match(p.name))]
    assert not copied, f"the --env-secret value was written into {copied}"
