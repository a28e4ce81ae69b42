"""The supervisor of a local run, started detached by submit and resume as
``python -m simsiam_job.backends.local.supervisor RUN_DIR``. It leads its own session, so the job
outlives the CLI; it runs paddle's launcher, waits, reads how every rank ended and lets
``trainer.contract.decide`` say what follows (see the package's docstring)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from simsiam_job.backends.local.processes import stop_leftovers
from simsiam_job.backends.local.records import OUTCOMES, RUN_ENV, number, read_command
from simsiam_job.errors import BackendError
from simsiam_job.util import read_json_object, write_text_atomic
from trainer import contract


def start_supervisor(run_dir: Path) -> None:
    with open(run_dir / "logs" / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simsiam_job.backends.local.supervisor", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=run_dir,
        )
    # The supervisor writes its pid once it runs (a pid read from /proc too early shows an
    # empty command line); wait for that, so status never sees a run without one.
    while not (run_dir / "pid").exists():
        if proc.poll() is not None:
            log_text = (run_dir / "logs" / "supervisor.log").read_text(errors="replace").strip()
            raise BackendError(f"the local supervisor exited at once ({proc.returncode}): "
                               f"{(log_text.splitlines() or ['no output'])[-1]}")
        time.sleep(0.02)


def _read_secrets(env_files: dict[str, str]) -> dict[str, str]:
    """--env-secret values, read now, at run time (like a shell's "$(cat FILE)": without the
    trailing newline); never written anywhere by us."""
    values = {}
    for name, path in env_files.items():
        try:
            values[name] = Path(path).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise ValueError(f"--env-secret {name}: cannot read {path}: {reason}") from None
    return values


def _start_outcomes(run_dir: Path, start: int, launcher_code: int, ranks: int) -> list[contract.Outcome]:
    """How this start's ranks ended, as they (or their keepers) recorded it; paddle's launcher
    speaks for itself when it was killed, or when it ended before any rank recorded a word."""
    outcomes = contract.read_outcomes(run_dir / OUTCOMES / str(start))
    if launcher_code < 0 or (launcher_code and not outcomes):
        outcomes.append(contract.Outcome(contract.End.CRASHED, None, launcher_code, time=time.time()))
    return outcomes


def _launch_environment(run_dir: Path) -> tuple[dict, dict[str, str]]:
    """command.json and the environment paddle's launcher runs in (--env-secret files read now);
    ValueError (one line) for a bad record or an unreadable secret file."""
    command = read_command(run_dir)
    env = {**os.environ, **command["env"], RUN_ENV: str(run_dir)}
    env["PATH"] = command["path_prefix"] + os.pathsep + env.get("PATH", "")
    env.update(_read_secrets(command.get("env_files", {})))
    return command, env


def _restart_note(decision: contract.Decision, restarts: int, bound: int) -> str:
    if decision.counted:
        return (f"group restart {restarts} of at most {bound}: {decision.reason}; starting every rank "
                "again (they resume from the newest checkpoint)")
    return f"{decision.reason}; starting every rank again, not counted as a group restart"


def supervise(run_dir: Path) -> int:
    """Run paddle's launcher until the group succeeds, fails for good, or is cancelled; after each
    start, contract.decide says from the ranks' outcomes whether to restart the whole group (a
    crash or lost rank: at most ``group_restarts`` times; a preemption: uncounted), fail, or
    finish; record the outcome. TERM is ignored here: this process must outlive the group to
    record how it ended."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    write_text_atomic(run_dir / "pid", str(os.getpid()))
    spec = read_json_object(run_dir / "spec.json") or {}
    options = spec.get("options") or {}
    bound = int(options.get("group_restarts", 3))
    grace = float(options.get("grace_seconds", 60.0))
    ranks = int(number(spec, "ranks", 1))
    restarts = preemptions = 0
    with open(run_dir / "logs" / "launch.log", "ab") as log:
        def say(message: str) -> None:
            log.write(f"simsiam-job: {message}\n".encode(errors="backslashreplace"))
            log.flush()

        try:
            command, env = _launch_environment(run_dir)    # a bad record is this run's outcome, not a crash
            outcome = None
        except ValueError as err:
            say(f"error: {err}")
            outcome = {"exit_code": 2, "reason": str(err)}
        start = 0
        while outcome is None:
            if start and (run_dir / "cancelled").exists():    # cancelled between two starts
                outcome = {"exit_code": None, "reason": "cancelled by the user"}
                break
            start += 1
            env[contract.OUTCOME_DIR_ENV] = str(run_dir / OUTCOMES / str(start))
            try:
                proc = subprocess.Popen(command["argv"], cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
                launcher_code = proc.wait()
            except OSError as err:
                say(f"error: cannot start {command['argv'][0]}: {err}")
                outcome = {"exit_code": 127, "reason": f"cannot start {command['argv'][0]}: {err}"}
                break
            stop_leftovers(run_dir, grace, say)
            decision = contract.decide(_start_outcomes(run_dir, start, launcher_code, ranks),
                                       restarts=restarts, bound=bound, ranks=ranks)
            if (run_dir / "cancelled").exists() and decision.action != contract.FINISH:
                outcome = {"exit_code": decision.exit_code,
                           "reason": f"cancelled by the user ({decision.reason})"}
                break
            if decision.action != contract.RESTART:
                outcome = {"exit_code": decision.exit_code, "reason": decision.reason}
                break
            restarts, preemptions = restarts + decision.counted, preemptions + (not decision.counted)
            say(_restart_note(decision, restarts, bound))
            write_text_atomic(run_dir / "restarts.json", json.dumps(
                {"restarts": restarts, "bound": bound, "preemptions": preemptions, "cause": decision.reason,
                 "time": time.time()}))
        if outcome["reason"]:
            say(f"outcome: {outcome['reason']}")
    outcome.update(restarts=restarts, preemptions=preemptions, finished=time.time())
    write_text_atomic(run_dir / "exit.json", json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
