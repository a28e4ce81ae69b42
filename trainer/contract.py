"""The launcher–trainer contract, written down once. Paddle-free: the launcher imports it too.

The trainer writes; the launcher (status, --wait, logs, chaining) only reads. Nothing the launcher
shows about training is computed on the launcher's side: every fact comes from these records.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

# ---- OUTPUT_DIR layout --------------------------------------------------------------------------
CONFIG = "config.yaml"          # resolved config after overrides
METRICS = "metrics.jsonl"       # one JSON object per logged step, epoch and evaluation
TRAIN_LOG = "train.log"         # rank 0's log
CHECKPOINTS = "checkpoints"     # atomic checkpoints; auto-resume picks the newest valid one
ENCODER = "encoder.pdparams"    # float32 encoder weights, paddle.vision ResNet names, no fc
PROBE = "probe.pdparams"        # the trained linear probe: backbone + fc, paddle.vision names
EVAL = "eval.json"              # linear probe: best and last top-k
CURVES = "curves.svg"           # loss / z_std / lr / val top-1, redrawn every epoch
SMOKE = "smoke.json"            # smoke test: per-rank and total figures, PASS/FAIL with the reason

# ---- phases ---------------------------------------------------------------------------------------
# The launcher's phase (what a user types after `submit`) and the config's Global.task_type.
PHASE_TASKS = {
    "pretrain": "ContrastiveLearning",
    "linear-probe": "Classification",
    "smoke": "Smoke",
}

# ---- progress records -----------------------------------------------------------------------------
# A record with type "step" in metrics.jsonl carries everything a follower shows:
#   epoch, epochs            1-based epoch and the run's epochs
#   step, steps_per_epoch    1-based step within the epoch
#   global_step, total_steps steps done over the whole run (resumes included) and planned
#   loss, lr, images_per_sec, eta_seconds, time (unix seconds)
PROGRESS_FIELDS = ("epoch", "epochs", "step", "steps_per_epoch", "global_step", "total_steps",
                   "loss", "lr", "images_per_sec", "eta_seconds", "time")
# Rank 0 also prints each step record on stdout as one line, so a follower that can read only the
# job's log (a pod's log through the API server) sees the same record.
PROGRESS_PREFIX = "simsiam-progress "


def progress_line(record: dict) -> str:
    """The stdout line for a step record."""
    return PROGRESS_PREFIX + json.dumps(record, separators=(",", ":"))


def parse_progress_line(line: str) -> dict | None:
    """The record in a progress line, None for any other line (log lines may carry a prefix such as
    a timestamp, so the marker is searched, not required at the start)."""
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def last_progress(lines: Iterable[str]) -> dict | None:
    """The newest progress record among log lines."""
    found = None
    for line in lines:
        record = parse_progress_line(line)
        if record is not None:
            found = record
    return found


def read_last_step(metrics_path: str | os.PathLike, tail_bytes: int = 65536) -> dict | None:
    """The newest step record of a metrics.jsonl (reads only its tail)."""
    try:
        with open(metrics_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written, or the cut-off head of the tail
        if isinstance(record, dict) and record.get("type") == "step":
            return record
    return None


# ---- exit codes -----------------------------------------------------------------------------------
# What simsiam-train's exit status means, so a launcher can decide between restarting and failing.
EXIT_DONE = 0
EXIT_ERROR = 1           # anything unexpected (a traceback on stderr)
EXIT_BAD_INPUT = 2       # bad config, data, checkpoint or usage; the output directory is another
                         # run's: one line on stderr; retrying cannot help
EXIT_DIVERGED = 3        # a non-finite loss or parameter: one line naming the step; no checkpoint
                         # was written after it; retrying cannot help
EXIT_PEER_LOST = 75      # another rank of the group was lost (sysexits' EX_TEMPFAIL): restart the
                         # whole group, which resumes from the newest checkpoint
EXIT_PREEMPTED = 143     # SIGTERM: a checkpoint was saved, then the run stopped (128 + SIGTERM)
EXIT_MEANINGS = {
    EXIT_DONE: "done",
    EXIT_ERROR: "failed",
    EXIT_BAD_INPUT: "bad input",
    EXIT_DIVERGED: "diverged",
    EXIT_PEER_LOST: "a peer rank was lost; restart the group",
    EXIT_PREEMPTED: "stopped by SIGTERM after a checkpoint",
}

# ---- run ownership and liveness (in OUTPUT_DIR) ---------------------------------------------------
LOCK = "run.lock"               # one writer per output directory: holder's host, pid, job, start time
HEARTBEATS = "heartbeats"       # heartbeats/<generation>/rank-NNNNN.json, one file per rank per start
JOB_ENV = "SIMSIAM_JOB_NAME"    # the launcher's job name, recorded in the lock; a restart of the same
                                # job takes over its own lock
JOB_ID_ENV = "SIMSIAM_JOB_ID"   # what makes the job unique (a run directory, kubernetes://NS/NAME, a Slurm
                               # job directory): only a start of the same job takes its lock over, never
                               # another job that happens to share the name
# Kubernetes recreates the pods of a group restart itself, with no supervisor of ours around them:
# there rank 0 bounds the group's starts. It appends one record per start to OUTPUT_DIR/starts.jsonl
# (job, attempt, generation, time, and what ended the start before), and refuses to start (exit 2,
# "gave up after N group restarts: ...") once an attempt has restarted more than
# SIMSIAM_GROUP_RESTARTS times. Unset (local, Slurm: their launcher counts): no bound here.
STARTS = "starts.jsonl"
GROUP_RESTARTS_ENV = "SIMSIAM_GROUP_RESTARTS"
ATTEMPT_ENV = "SIMSIAM_JOB_ATTEMPT"     # the job's attempt (simsiam-job resume starts the next)

# ---- environment names that are not the user's to set (--env, --env-secret refuse them) -----------
# Each one is set by a backend, by paddle's launcher, by Kubernetes or by Slurm for every trainer
# process: a user's value would replace a run's identity (the lock's job, a local run's processes),
# its rank, its restart bound, or where its programs are found.
RUN_DIR_ENV = "SIMSIAM_JOB_RUN_DIR"     # local: <run dir>, how status and cancel find its processes
RESERVED_ENV = frozenset({
    JOB_ENV, JOB_ID_ENV, ATTEMPT_ENV, GROUP_RESTARTS_ENV, RUN_DIR_ENV,
    "PATH",                  # local: the interpreter's bin directory first; elsewhere the image's or venv's
    "PYTHONUNBUFFERED",      # logs reach the follower at once
    "POD_IP",                # Kubernetes: the pod's address (paddle's launcher also reads it as --host)
    "JOB_COMPLETION_INDEX",  # Kubernetes: the node rank of an Indexed Job's pod
    "MASTER_ADDR", "MASTER_PORT",   # Slurm: rank 0's rendezvous address, set by the batch script
})
# paddle's launcher reads PADDLE_* as its own settings (over the command line we give it: nnodes,
# master, rank, ...) and sets them for each trainer; Slurm sets SLURM_* for the job and its steps.
RESERVED_ENV_PREFIXES = ("PADDLE_", "SLURM_")


def reserved_env(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)
