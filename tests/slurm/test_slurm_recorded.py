"""The Slurm backend's reading of Slurm's own output, recorded from the test cluster
(tests/cluster/slurm.sh: slurm-wlm 22+, no accounting) in tests/slurm/recorded/: what `status` and
`list` make of each state, without a cluster. The end-to-end tests beside these run the commands."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import assert_one_line_error, run_cli

from simsiam_job.backends.base import State
from simsiam_job.backends.slurm import _common_state, _reason, _run, parse_job, parse_list
from simsiam_job.errors import BackendError

RECORDED = Path(__file__).parent / "recorded"


def recorded(case: str, job_id: str):
    """The job as `status` reads it: squeue first, then scontrol, then sacct (here: disabled)."""
    return parse_job(job_id, (RECORDED / f"{case}.squeue").read_text(),
                     (RECORDED / f"{case}.scontrol").read_text(),
                     (RECORDED / "sacct-disabled.sacct").read_text())


@pytest.mark.parametrize("case, job_id, state, reason, nodelist, restarts", [
    ("running", "5", State.RUNNING, None, "node[1-2]", 0),
    ("pending-resources", "6", State.PENDING, "Resources", "", 0),
    ("requeued-pending", "1", State.PENDING, "BeginTime, requeued 1 time", "", 1),
    # Finished jobs are no longer in squeue -j: scontrol remembers them for MinJobAge.
    ("completed", "3", State.SUCCEEDED, None, "node[1-2]", 0),
    ("failed", "4", State.FAILED, "exit code 3", "node1", 0),
    ("cancelled", "2", State.CANCELLED, None, "", 0),
])
def test_recorded_states_read_as_a_user_sees_them(case, job_id, state, reason, nodelist, restarts):
    job = recorded(case, job_id)
    assert job is not None and job.id == job_id
    assert _common_state(job.state) is state
    assert _reason(job.state, job.reason, job.restarts, job.exit_code) == reason
    assert (job.nodelist, job.restarts) == (nodelist, restarts)
    assert job.workdir == "/shared/simsiam-jobs/demo" and job.comment.startswith("simsiam-job:")


def test_an_unknown_job_is_none_not_a_guess():
    assert recorded("unknown", "999") is None


def test_list_keeps_our_jobs_with_phase_state_and_age():
    text = (RECORDED / "list.squeue").read_text() + "7|RUNNING|2026-11-29T09:28:44|other|someone else's\n"
    rows = parse_list(text, dt.datetime(2026, 11, 29, 9, 30, 44))
    assert [(str(r.ref), r.name, r.phase, r.state, r.age_seconds) for r in rows] == [
        ("slurm://2", "toobig", "pretrain", State.CANCELLED, 120.0),
        ("slurm://3", "waits", "pretrain", State.SUCCEEDED, 120.0),
        ("slurm://4", "fails", "pretrain", State.FAILED, 120.0),
        ("slurm://1", "run2", "pretrain", State.PENDING, 113.0),
    ]


def test_a_slurm_command_that_hangs_is_cut_off_with_one_line(tmp_path, monkeypatch):
    """A real process that never answers stands in for squeue behind an unreachable slurmctld."""
    (tmp_path / "squeue").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{subprocess.os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    with pytest.raises(BackendError, match=r"squeue did not answer in 0.5 s: is slurmctld reachable"):
        _run(["squeue"], timeout=0.5)


def test_a_missing_slurm_configuration_gets_a_hint_at_once(tmp_path):
    env = {**subprocess.os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf"),
           "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    proc = run_cli(["status", "slurm://1"], env, timeout=20)
    assert_one_line_error(proc, 1, f"SLURM_CONF={tmp_path / 'slurm.conf'} does not exist")


def test_progress_comes_from_metrics_else_from_rank_0s_log(tmp_path):
    """On the shared filesystem status reads the output directory's metrics.jsonl; where the login
    node cannot see the output directory, rank 0's progress lines in its log file."""
    import json

    from simsiam_job.backends.slurm import SlurmBackend, SlurmJob
    from trainer import contract

    def record(step):
        return {"type": "step", "epoch": 1, "epochs": 2, "step": step, "steps_per_epoch": 4,
                "global_step": step, "total_steps": 8, "loss": -0.5, "lr": 0.05,
                "images_per_sec": 40.0, "eta_seconds": 12.0, "time": 1.7e9}

    job_dir, output = tmp_path / "demo", tmp_path / "out"
    (job_dir / "logs").mkdir(parents=True)
    output.mkdir()
    (job_dir / "logs" / "rank0-node1.log").write_text(
        "simsiam-job: rank 0 on node1\n" + contract.progress_line(record(2)) + "\nepoch 1/2  step 2/4\n")
    (output / contract.METRICS).write_text(json.dumps(record(3)) + "\n"
                                           + json.dumps({"type": "epoch"}) + "\n")
    job = SlurmJob("5", "RUNNING", "None", "node[1-2]", str(job_dir), "demo", "simsiam-job:pretrain")
    backend = SlurmBackend()
    assert backend._progress(job, str(output)) == record(3)
    assert backend._progress(job, str(tmp_path / "not-visible-here")) == record(2)
