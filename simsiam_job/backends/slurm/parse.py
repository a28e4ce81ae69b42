"""Reading what Slurm's commands print: a job from squeue/scontrol/sacct, the list of our jobs
(found by the marker in their --comment), Slurm states as the common ones, and the batch script's
decisions after each start of the group."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

from simsiam_job.backends.base import JobRef, JobSummary, State
from simsiam_job.util import tail_lines

MARKER = "simsiam-job"


_STATE_MAP = {
    **dict.fromkeys(["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                     "RESV_DEL_HOLD", "SPECIAL_EXIT", "SUSPENDED", "STOPPED"], State.PENDING),
    **dict.fromkeys(["RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"], State.RUNNING),
    "COMPLETED": State.SUCCEEDED,
    "CANCELLED": State.CANCELLED,
    **dict.fromkeys(["FAILED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                     "PREEMPTED"], State.FAILED),
}


def _common_state(slurm_state: str) -> State:
    # sacct writes "CANCELLED by 1000"; squeue may add "+" flags.
    return _STATE_MAP.get(slurm_state.split()[0].rstrip("+") if slurm_state else "", State.UNKNOWN)


def _reason(slurm_state: str, reason: str, restarts: int, exit_code: str) -> str | None:
    state = slurm_state.split()[0] if slurm_state else ""
    parts = []
    common = _common_state(slurm_state)
    if common is State.PENDING and reason and reason not in ("None", "(null)"):
        parts.append(reason)
    if state in _STATE_MAP and state not in ("PENDING", "RUNNING", "COMPLETED", "CANCELLED", "FAILED"):
        parts.append(state)  # the Slurm state says more than the common one: TIMEOUT, NODE_FAIL, ...
    if common is State.FAILED and exit_code and exit_code != "0:0":
        parts.append(f"exit code {exit_code.split(':')[0]}"
                     + (f", signal {exit_code.split(':')[1]}" if exit_code.split(":")[-1] != "0" else ""))
    if restarts:
        parts.append(f"requeued {restarts} time{'s' if restarts != 1 else ''}")
    return ", ".join(parts) or None


def _scontrol_fields(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output as a dict (values here never contain ' Key=' sequences)."""
    fields = {}
    for item in re.split(r" (?=[A-Za-z/:]+=)", text.strip()):
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    id: str
    state: str
    reason: str
    nodelist: str
    workdir: str
    name: str
    comment: str
    restarts: int = 0
    exit_code: str = ""


SQUEUE_FORMAT = "%i|%T|%N|%Z|%j|%k|%r"
SACCT_FIELDS = "JobID,State,NodeList,WorkDir,JobName,Comment,Reason,ExitCode"
LIST_FORMAT = "%i|%T|%V|%j|%k"


def parse_job(job_id: str, squeue: str, scontrol: str, sacct: str | None = None) -> SlurmJob | None:
    """One job from what Slurm's commands printed: ``squeue -o SQUEUE_FORMAT`` (pending and running
    jobs), ``scontrol show job -o`` (also finished jobs, for MinJobAge; the requeue count), ``sacct
    -X -n -P -o SACCT_FIELDS`` (finished jobs where accounting is on). None: Slurm knows no such job."""
    details = _scontrol_fields(scontrol) if scontrol.startswith("JobId=") else {}
    restarts = int(details.get("Restarts", "0") or 0)
    rows = [ln for ln in squeue.splitlines() if ln.startswith(f"{job_id}|")]
    if rows:
        _, state, nodelist, workdir, name, comment, reason = rows[0].split("|", 6)
        return SlurmJob(job_id, state, reason, "" if nodelist == "(null)" else nodelist, workdir,
                        name, comment, restarts, details.get("ExitCode", ""))
    if details:
        nodelist = details.get("NodeList", "")
        return SlurmJob(job_id, details.get("JobState", ""), details.get("Reason", ""),
                        "" if nodelist == "(null)" else nodelist, details.get("WorkDir", ""),
                        details.get("JobName", ""), details.get("Comment", ""), restarts,
                        details.get("ExitCode", ""))
    for line in (sacct or "").splitlines():
        fields = line.split("|")
        if len(fields) == 8 and fields[0] == job_id:
            jid, state, nodelist, workdir, name, comment, reason, exit_code = fields
            return SlurmJob(jid, state, reason, nodelist, workdir, name, comment, 0, exit_code)
    return None


def marker(phase: str, attempt: int = 1) -> str:
    """The job's --comment: ``simsiam-job:PHASE``, plus ``:attempt-N`` from the second attempt on
    (resume passes it on sbatch's command line, which overrides the script's)."""
    return f"{MARKER}:{phase}" + (f":attempt-{attempt}" if attempt > 1 else "")


def parse_marker(comment: str) -> tuple[str, int] | None:
    """(phase, attempt) of a comment written by ``marker``; None for other jobs."""
    ours = re.match(rf"{MARKER}:([a-z-]+)", comment)
    if ours is None:
        return None
    attempt = re.search(r"attempt-(\d+)", comment)
    return ours.group(1), int(attempt.group(1)) if attempt else 1


def parse_list(squeue: str, now: dt.datetime) -> list[JobSummary]:
    """``squeue --states=all -o LIST_FORMAT``: the jobs carrying our marker."""
    rows = []
    for line in squeue.splitlines():
        job_id, state, submitted, name, comment = line.split("|", 4)
        ours = parse_marker(comment)
        if ours is None:
            continue
        try:
            age = (now - dt.datetime.fromisoformat(submitted)).total_seconds()
        except ValueError:
            age = None
        rows.append(JobSummary(ref=JobRef("slurm", job_id), name=name, phase=ours[0],
                               state=_common_state(state), age_seconds=age, attempt=ours[1]))
    return rows


def _decisions(job: SlurmJob) -> list[dict]:
    """The batch script's decisions after each start of the group (trainer.contract.decide's, one
    JSON line each), for this job's latest run (a requeue starts them afresh)."""
    if not job.workdir:
        return []
    runs: dict[int, list[dict]] = {}
    for line in tail_lines(Path(job.workdir, f"decisions-{job.id}.jsonl")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        start = record.get("start") if isinstance(record, dict) else None   # JOBID-REQUEUE-START
        if isinstance(start, str) and start.count("-") == 2 and start.split("-")[1].isdigit() \
                and isinstance(record.get("restarts"), int):
            runs.setdefault(int(start.split("-")[1]), []).append(record)
    return runs[max(runs)] if runs else []
