"""The launcher–trainer contract, written down once. Paddle-free: the launcher imports it too.

The trainer writes; the launcher (status, --wait, logs, chaining) only reads. Nothing the launcher
shows about training is computed on the launcher's side: every fact comes from these records.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
# and, where the trainer bounds the group's restarts (Kubernetes: trainer.lock.count_start),
#   group_restarts, counted_restarts   starts of the group before this one, and those counted
PROGRESS_FIELDS = ("epoch", "epochs", "step", "steps_per_epoch", "global_step", "total_steps",
                   "loss", "lr", "images_per_sec", "eta_seconds", "time")
# Rank 0 also prints each step record on stdout as one line, so a follower that can read only the
# job's log (a pod's log through the API server) sees the same record.
PROGRESS_PREFIX = "simsiam-progress "


def progress_line(record: dict[str, Any]) -> str:
    """The stdout line for a step record."""
    return PROGRESS_PREFIX + json.dumps(record, separators=(",", ":"))


def parse_progress_line(line: str) -> dict[str, Any] | None:
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


def last_progress(lines: Iterable[str]) -> dict[str, Any] | None:
    """The newest progress record among log lines."""
    found = None
    for line in lines:
        record = parse_progress_line(line)
        if record is not None:
            found = record
    return found


def read_last_step(metrics_path: str | os.PathLike[str], tail_bytes: int = 65536) -> dict[str, Any] | None:
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
EXIT_START_TIMEOUT = 69  # the group did not form within the start timeout (a node never came: not
                         # schedulable, no quota): every node that is up gives up (sysexits'
                         # EX_UNAVAILABLE) and the job fails, so no GPU stays held by half a group
EXIT_PEER_LOST = 75      # another rank of the group was lost (sysexits' EX_TEMPFAIL): restart the
                         # whole group, which resumes from the newest checkpoint
EXIT_PREEMPTED = 143     # SIGTERM: a checkpoint was saved, then the run stopped (128 + SIGTERM)
EXIT_MEANINGS = {
    EXIT_DONE: "done",
    EXIT_ERROR: "failed",
    EXIT_BAD_INPUT: "bad input",
    EXIT_DIVERGED: "diverged",
    EXIT_START_TIMEOUT: "the group did not form within the start timeout",
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
# there rank 0 bounds the group's starts. Each pod copies its ranks' outcomes to OUTPUT_DIR/outcomes;
# at the next start rank 0 runs `decide` on them, appends one record per start to
# OUTPUT_DIR/starts.jsonl (job, attempt, generation, time, what ended the start before and whether
# that restart counts), and refuses to start (exit 2, "gave up after N group restarts: ...") once
# an attempt has restarted more than SIMSIAM_GROUP_RESTARTS times (preemptions do not count).
# Unset (local, Slurm: their launcher decides): no bound here.
STARTS = "starts.jsonl"
OUTCOMES = "outcomes"           # OUTPUT_DIR/outcomes/: where each pod copies its ranks' outcomes
GROUP_RESTARTS_ENV = "SIMSIAM_GROUP_RESTARTS"
ATTEMPT_ENV = "SIMSIAM_JOB_ATTEMPT"     # the job's attempt (simsiam-job resume starts the next)
# A JobSet's restart attempt (the label JobSet sets on every pod of one generation): rank 0 counts
# only the restarts in place within it; JobSet bounds its own restarts that recreate the pods.
RESTART_ATTEMPT_ENV = "JOBSET_RESTART_ATTEMPT"


# ---- how a run ended, and what the group does next -------------------------------------------------
# Every rank ends by writing one Outcome (trainer.outcome: the rank's keeper process records it even
# when the trainer is killed by a signal) as OUTCOME_DIR_ENV/rank-NNNNN.json; on Kubernetes the pod's
# deciding outcome is also its container's termination message. One function, `decide`, turns the
# outcomes of a start and the restarts so far into restart / fail / finish on every backend; the
# Kubernetes failure policies are rendered from the same tables (FINAL_EXITS, RESTART_EXITS).
OUTCOME_DIR_ENV = "SIMSIAM_OUTCOME_DIR"


class End(str, enum.Enum):
    DONE = "done"
    BAD_INPUT = "bad input"          # retrying cannot help
    DIVERGED = "diverged"            # retrying cannot help
    NOT_STARTED = "start timeout"    # the group did not form in time: a retry would hold the nodes
                                     # that did start while waiting again for those that cannot
    PEER_LOST = "peer lost"          # this rank stopped because another was lost
    PREEMPTED = "preempted"          # asked to stop (SIGTERM: preemption, eviction, drain, cancel)
    CRASHED = "crashed"              # an unexpected error, or killed by a signal

    @property
    def final(self) -> bool:
        return self in (End.BAD_INPUT, End.DIVERGED, End.NOT_STARTED)


EXIT_ENDS = {EXIT_DONE: End.DONE, EXIT_BAD_INPUT: End.BAD_INPUT, EXIT_DIVERGED: End.DIVERGED,
             EXIT_START_TIMEOUT: End.NOT_STARTED, EXIT_PEER_LOST: End.PEER_LOST,
             EXIT_PREEMPTED: End.PREEMPTED}
FINAL_EXITS = (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_START_TIMEOUT)      # fail the job at once
RESTART_EXITS = (EXIT_PEER_LOST, EXIT_PREEMPTED)     # restart the group (a crash does too, counted)


def end_of_exit(code: int) -> End:
    """The class of a process's end: an exit status, or -N for "killed by signal N" (a SIGTERM that
    killed the process before it could checkpoint is still a request to stop, not a crash)."""
    if code in (-signal.SIGTERM, 128 + signal.SIGTERM):
        return End.PREEMPTED
    return EXIT_ENDS.get(code, End.CRASHED)


def describe_exit(code: int | None) -> str:
    """A process's end in words: "killed by SIGKILL", "exit code 2 (bad input)"."""
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    meaning = EXIT_MEANINGS.get(code)
    return f"exit code {code}" + (f" ({meaning})" if meaning and code else "")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one rank ended (rank None: the node's launcher itself, not a rank)."""

    end: End
    rank: int | None
    exit_code: int | None           # -N: killed by signal N; None: unknown (the rank said nothing)
    message: str = ""               # the trainer's one line (without "simsiam-train: error: ")
    global_step: int | None = None
    host: str = ""
    time: float = 0.0               # unix seconds; 0 when a launcher had to say it for the rank

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "end": self.end.value}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Outcome | None:
        """The record, or None for anything else (another program's text, a torn write)."""
        try:
            data = json.loads(text)
            rank = data["rank"]
            return cls(end=End(data["end"]), rank=None if rank is None else int(rank),
                       exit_code=None if data["exit_code"] is None else int(data["exit_code"]),
                       message=str(data.get("message") or ""),
                       global_step=None if data.get("global_step") is None else int(data["global_step"]),
                       host=str(data.get("host") or ""), time=float(data.get("time") or 0.0))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None

    def cause(self, with_host: bool = False) -> str:
        """"rank 1 killed by SIGKILL", "rank 1 on node2: exited with exit code 2 (bad input)",
        "rank 0: rank 1 was lost (...)", "paddle's launcher was killed by SIGKILL"."""
        who = "paddle's launcher" if self.rank is None else f"rank {self.rank}"
        if with_host and self.host:
            who += f" on {self.host}"
        if self.end is End.PEER_LOST and self.message:
            return f"{who}: {self.message}"
        if self.exit_code is None:
            return f"{who} {self.message or 'ended without an exit status'}"
        what = describe_exit(self.exit_code)
        what = what if self.exit_code < 0 else f"exited with {what}"
        if self.rank is None and self.exit_code < 0:
            what = f"was {what}"
        return f"{who}: {what[0].upper()}{what[1:]}" if with_host and self.host else f"{who} {what}"


def outcome_path(directory: str | os.PathLike[str], rank: int | None) -> Path:
    return Path(directory) / ("launcher.json" if rank is None else f"rank-{rank:05d}.json")


def write_outcome(directory: str | os.PathLike[str], outcome: Outcome) -> None:
    """Atomically (a reader sees the whole record or none)."""
    path = outcome_path(directory, outcome.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(outcome.to_json())
    os.replace(tmp, path)


def read_outcomes(directory: str | os.PathLike[str]) -> list[Outcome]:
    """Every readable outcome in ``directory`` (unreadable files are skipped: a launcher then
    speaks for that rank)."""
    found = []
    for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []:
        try:
            outcome = Outcome.from_json(path.read_bytes())
        except OSError:
            continue
        if outcome is not None:
            found.append(outcome)
    return found


# What the group does after a start ended.
FINISH, RESTART, FAIL = "finish", "restart", "fail"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str                     # FINISH | RESTART | FAIL
    exit_code: int                  # the job's exit status (of the rank that decided)
    reason: str | None              # one line a person can act on (None: success)
    counted: bool = False           # a restart that uses up group_restarts (a crash or a lost peer;
                                    # a preemption never does)
    cause: Outcome | None = None


# Which end explains a start's end first: a final one, then a crash (a lost peer is its echo),
# then a stop that was asked for.
_BLAME = (End.BAD_INPUT, End.DIVERGED, End.NOT_STARTED, End.CRASHED, End.PEER_LOST, End.PREEMPTED)


def root_cause(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The first outcome by blame, then by time (an outcome a launcher wrote for a rank that said
    nothing has no time and comes after those the ranks wrote), then by rank."""
    ended = [o for o in outcomes if o.end is not End.DONE]
    if not ended:
        return None
    return min(ended, key=lambda o: (_BLAME.index(o.end), o.time or float("inf"),
                                     -1 if o.rank is None else o.rank))


def decide(outcomes: Sequence[Outcome], *, restarts: int, bound: int, ranks: int | None = None) -> Decision:
    """What the group does after a start ended with ``outcomes``, ``restarts`` counted restarts
    after the first start: finish when every rank is done; fail at once on bad input or
    divergence; restart after a preemption without counting it; restart after a crash or a lost
    peer while fewer than ``bound`` restarts were counted, else fail. ``ranks``: how many ranks the
    start had; a rank with no outcome was lost without a word (its process or node)."""
    outcomes = list(outcomes)
    said = {o.rank for o in outcomes if o.rank is not None}
    for rank in range(ranks or 0):
        if rank not in said:
            outcomes.append(Outcome(End.CRASHED, rank, None,
                                    "was lost without a word (its process, pod or node is gone)"))
    with_host = len({o.host for o in outcomes if o.host}) > 1
    cause = root_cause(outcomes)
    if cause is None:
        if not outcomes:
            return Decision(FAIL, EXIT_ERROR, "no rank recorded how it ended")
        return Decision(FINISH, EXIT_DONE, None)
    text = cause.cause(with_host)
    detail = f": {cause.message}" if cause.message and cause.message not in text else ""
    code = EXIT_ERROR if cause.exit_code is None else cause.exit_code if cause.exit_code >= 0 \
        else 128 - cause.exit_code
    if cause.end.final:
        return Decision(FAIL, code, f"{text}, retrying cannot help{detail}", cause=cause)
    if cause.end is End.PREEMPTED:
        return Decision(RESTART, code, f"preempted: {text}{detail}", counted=False, cause=cause)
    if restarts >= bound:
        plural = "" if restarts == 1 else "s"
        return Decision(FAIL, code, f"gave up after {restarts} group restart{plural}: {text}{detail}",
                        cause=cause)
    return Decision(RESTART, code, f"{text}{detail}", counted=True, cause=cause)


def _decide_main(argv: list[str]) -> int:
    """``python -m trainer.contract decide``: the batch script's decision (Slurm), through the same
    function. Prints "ACTION EXIT_CODE COUNTED" for the shell, and the reason on stderr; writes the
    decision with its outcomes as JSON to --record."""
    parser = argparse.ArgumentParser(prog="python -m trainer.contract decide")
    parser.add_argument("--outcomes", required=True, help="the start's outcome directory")
    parser.add_argument("--restarts", type=int, required=True, help="counted restarts so far")
    parser.add_argument("--bound", type=int, required=True, help="group_restarts")
    parser.add_argument("--ranks", type=int, default=0, help="ranks of the start")
    parser.add_argument("--record", default="", help="append the decision as one JSON line here")
    args = parser.parse_args(argv)
    outcomes = read_outcomes(args.outcomes)
    decision = decide(outcomes, restarts=args.restarts, bound=args.bound, ranks=args.ranks)
    if args.record:
        with open(args.record, "a") as f:
            f.write(json.dumps({"start": Path(args.outcomes).name, "action": decision.action,
                                "exit_code": decision.exit_code, "reason": decision.reason,
                                "counted": decision.counted, "restarts": args.restarts + decision.counted,
                                "bound": args.bound, "time": time.time(),
                                "outcomes": [json.loads(o.to_json()) for o in outcomes]}) + "\n")
    print(f"{decision.action} {decision.exit_code} {int(decision.counted)}")
    if decision.reason:
        print(decision.reason, file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["decide"]:
        sys.exit("usage: python -m trainer.contract decide --outcomes DIR --restarts N --bound N")
    sys.exit(_decide_main(sys.argv[2:]))

# ---- environment names that are not the user's to set (--env, --env-secret refuse them) -----------
# Each one is set by a backend, by paddle's launcher, by Kubernetes or by Slurm for every trainer
# process: a user's value would replace a run's identity (the lock's job, a local run's processes),
# its rank, its restart bound, or where its programs are found.
RUN_DIR_ENV = "SIMSIAM_JOB_RUN_DIR"     # local: <run dir>, how status and cancel find its processes
RESERVED_ENV = frozenset({
    JOB_ENV, JOB_ID_ENV, ATTEMPT_ENV, GROUP_RESTARTS_ENV, RUN_DIR_ENV, OUTCOME_DIR_ENV, RESTART_ATTEMPT_ENV,
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


# ---- the node supervisor's command line (trainer.rendezvous), built by the launcher -------------

ROUNDS_DIR = "rendezvous"       # in the job's output directory: rank-NNNNN.json, one per rank


def rendezvous_command(*, node_rank: str, rank0_host: str = "", port: int = 0, pod_ip: str = "",
                       rounds_dir: str = "", outcomes_dir: str = "", start_timeout: int = 0,
                       generation: str = "", heartbeats_dir: str = "", rank_offset: int = 0) -> list[str]:
    """The node supervisor's (``python -m trainer.rendezvous``) words before the launcher's own
    command in a pod's command line (without rank0_host: a job of one node, nobody to meet)."""
    words = ["python", "-m", "trainer.rendezvous", "--node-rank", node_rank]
    if rank_offset:
        words += ["--rank-offset", str(rank_offset)]
    if rank0_host:
        words += ["--rank0-host", rank0_host, "--port", str(port), "--pod-ip", pod_ip]
    if start_timeout:
        words += ["--start-timeout", str(start_timeout)]
    if rounds_dir:
        words += ["--rounds-dir", rounds_dir]
    if generation:
        words += ["--generation", generation]
    if heartbeats_dir:
        words += ["--heartbeats-dir", heartbeats_dir]
    if outcomes_dir:
        words += ["--outcomes-dir", outcomes_dir]
    return [*words, "--"]
