"""Every rank ends by recording how it ended (trainer.contract.Outcome), even when it is killed.

Under a launcher of ours (contract.OUTCOME_DIR_ENV set), ``simsiam-train`` forks as it starts: the
child trains; the parent, the rank's *keeper*, imports nothing heavy and only waits. The trainer
records its own outcome (its one-line message, its global step) just before it exits; when it
cannot (SIGKILL, the OOM killer, an abort), the keeper records it from the exit status. The keeper
then ends as its child did, so paddle's launcher sees the same exit status as without it. The child
dies with its keeper (PR_SET_PDEATHSIG), so no trainer outlives a killed rank.

Paddle-free, like the contract.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time

from trainer import contract

# The trainer's position, for its outcome (the Engine updates it every step).
progress = {"global_step": None}

# Kubernetes shows a container's termination message in the pod's status (`simsiam-job status`
# reads it there). The kubelet provides this file; it exists nowhere else, and is never created here.
TERMINATION_LOG = "/dev/termination-log"

_PR_SET_PDEATHSIG = 1


class Failed(SystemExit):
    """A task's own verdict that fails the run (the smoke test's FAIL): exit 1, and an outcome of
    class `end` with `message` as its line."""

    def __init__(self, end: contract.End, message: str):
        super().__init__(contract.EXIT_ERROR)
        self.end, self.message = end, message


def rank() -> int:
    """This process's global rank, as paddle's launcher announces it (0 when run by hand)."""
    value = os.environ.get("PADDLE_TRAINER_ID", "0")
    return int(value) if value.isdigit() else 0


def _outcome(code: int, message: str = "", global_step: int | None = None,
             end: contract.End | None = None) -> contract.Outcome:
    return contract.Outcome(end or contract.end_of_exit(code), rank(), code, message, global_step,
                            socket.gethostname(), round(time.time(), 3))


def record(code: int, message: str = "", end: contract.End | None = None) -> None:
    """The trainer's own outcome, where its keeper and launcher read it; never fails the exit.
    `end`: its class when the exit status alone does not say it (outcome.Failed)."""
    directory = os.environ.get(contract.OUTCOME_DIR_ENV)
    if not directory:
        return
    try:
        contract.write_outcome(directory, _outcome(code, message, progress["global_step"], end))
    except OSError:
        pass


STARTED = ".started"     # OUTCOME_DIR/rank-NNNNN.started: this rank's group has formed


def mark_started() -> None:
    """Every rank of the group has joined (the first collective returned): the node's supervisor
    (trainer.rendezvous) stops counting its start timeout once a rank of its node says so."""
    directory = os.environ.get(contract.OUTCOME_DIR_ENV)
    if directory:
        try:
            open(os.path.join(directory, f"rank-{rank():05d}{STARTED}"), "w").close()
        except OSError:
            pass


def write_termination_message(text: str, path: str | None = None) -> None:
    """On Kubernetes: the container's termination message (at most 4 KiB are kept)."""
    try:
        fd = os.open(path or TERMINATION_LOG, os.O_WRONLY | os.O_TRUNC)
    except OSError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(text[:4096])


# ---- the keeper ------------------------------------------------------------------------------------

def fork_keeper() -> int | None:
    """In the child: None (go on and train). In the keeper: the exit status to end with, once the
    child has ended and its outcome is recorded. Without an outcome directory there is no keeper."""
    directory = os.environ.get(contract.OUTCOME_DIR_ENV)
    if not directory:
        return None
    path = contract.outcome_path(directory, rank())
    try:
        path.unlink(missing_ok=True)    # an earlier start's record is not this one's
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with(parent)
        return None
    return _keep(child, directory)


def _die_with(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:          # the keeper died before prctl took effect
        os._exit(128 + signal.SIGKILL)


def _keep(child: int, directory: str) -> int:
    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    # A signal for the rank reaches the trainer (paddle signals the whole process group, so the
    # child may get it twice: the trainer's SIGTERM handling only sets a flag).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:       # reaped elsewhere: nothing left to wait for
            status = 0
            break
    code = os.waitstatus_to_exitcode(status)
    if contract.Outcome.from_json(_read(contract.outcome_path(directory, rank()))) is None:
        try:
            contract.write_outcome(directory, _outcome(code))
        except OSError:
            pass
    if code < 0:                        # end as the child did, for paddle's launcher
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):       # SIGKILL, SIGSTOP: no handler to reset
            pass
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
