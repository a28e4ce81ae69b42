"""Slurm attempts and group restarts without a cluster: how a job's attempt is read back from its
comment, and the bound in the rendered batch script."""

from __future__ import annotations

import datetime as dt

from simsiam_job.backends.slurm import marker, parse_job, parse_list


def test_list_and_status_read_the_attempt_from_the_comment():
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    squeue = "\n".join([
        f"41|FAILED|2026-01-01T11:00:00|pt|{marker('pretrain')}",
        f"42|RUNNING|2026-01-01T11:30:00|pt|{marker('pretrain', 2)}",
        "43|RUNNING|2026-01-01T11:30:00|other|someone else's job",
    ])
    rows = parse_list(squeue, now)
    assert [(r.ref.id, r.phase, r.attempt) for r in rows] == [("41", "pretrain", 1), ("42", "pretrain", 2)]
    # scontrol's one-line form, where a comment may carry spaces
    job = parse_job("42", "", "JobId=42 JobName=pt Comment=simsiam-job:pretrain :attempt-2 "
                              "JobState=COMPLETED Restarts=0 WorkDir=/jobs/pt")
    assert job.comment == "simsiam-job:pretrain :attempt-2" and job.state == "COMPLETED"


def test_the_batch_script_restarts_the_group_up_to_the_bound(tmp_path):
    import os

    from helpers.cli import run_cli

    env = {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}
    script = run_cli(["render", "pretrain", "-b", "slurm", "--nodes", "2", "--name", "pt",
                      "--set", "group_restarts=5"], env, check=True).stdout
    assert "GROUP_RESTARTS=5\n" in script and "export SIMSIAM_JOB_NAME=pt\n" in script
    # the bound is the trainer's decision function's, called with the restarts counted so far
    assert 'python -m trainer.contract decide' in script and '--bound "$GROUP_RESTARTS"' in script
