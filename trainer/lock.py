"""One writer per output directory: rank 0 of a run holds OUTPUT_DIR/run.lock while it runs.

The lock file names its holder (host, pid, job, start time) and carries a heartbeat the holder
refreshes. It is created complete and atomically (written under a temporary name, then hard-linked
to run.lock, which fails if the name exists: safe on NFS too). A second run on the same directory
fails at once naming the holder. A lock whose holder is gone is taken over with a warning:
  - the holder ran on this machine (same host and pid namespace) and its pid no longer exists;
  - it ran elsewhere and its heartbeat is older than STALE_AFTER seconds (hosts' clocks are assumed
    to agree to well within that), or it is an earlier start of the same job (a group restart
    places rank 0 on a new host; the launcher names the job in SIMSIAM_JOB_NAME).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from trainer import contract
from trainer.config import ConfigError
from trainer.sections import Global
from trainer.watchdog import machine, pid_alive, read_json, same_machine, write_json

log = logging.getLogger("trainer")

STALE_AFTER = 120.0     # seconds without a heartbeat before another host's lock counts as abandoned
REFRESH_EVERY = 10.0
CLOCK_SLACK = 5.0       # seconds the clocks of a cluster's nodes may disagree by


class LockError(ConfigError):
    """The output directory belongs to another run that is alive (exit 2, one line)."""


def job_identity() -> str:
    """The job this run belongs to, as the launcher or the scheduler names it ('' when run by hand)."""
    if os.environ.get(contract.JOB_ENV):
        return os.environ[contract.JOB_ENV]
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    return ""


def job_id() -> str:
    """What tells this job from another of the same name ('' when run by hand)."""
    if os.environ.get(contract.JOB_ID_ENV):
        return os.environ[contract.JOB_ID_ENV]
    return f"slurm:{os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""


def describe(holder: dict) -> str:
    job = f"job {holder['job']}" if holder.get("job") else "a run"
    return (f"{job} on host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}")


class RunLock:
    def __init__(self, output_dir, stale_after: float = STALE_AFTER, refresh_every: float = REFRESH_EVERY):
        self.path = Path(output_dir) / contract.LOCK
        self.stale_after, self.refresh_every = stale_after, refresh_every
        self.record = {**machine(), "job": job_identity(), "job_id": job_id(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex,
                       "beat": 0, "time": time.time()}
        self._stop = threading.Event()
        self._thread = None

    def acquire(self) -> str | None:
        """Take the lock, or raise LockError naming the holder. Returns a warning to log when a
        stale lock was taken over."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            taken_over = None
            if not self._create():
                holder = read_json(self.path)
                why = self._abandoned(holder)
                if why is None:
                    raise LockError(f"Global.output_dir {self.path.parent} is in use by "
                                    f"{describe(holder or {})} "
                                    f"(lock {self.path}); use another output directory or stop that run")
                self._remove_stale(holder)
                if not self._create():
                    holder = read_json(self.path) or {}
                    raise LockError(f"Global.output_dir {self.path.parent} was just taken by "
                                    f"{describe(holder)} "
                                    f"(lock {self.path})")
                taken_over = (f"WARNING: took over the lock of {describe(holder)} on {self.path.parent}: "
                              f"{why}")
        except OSError as e:
            raise ConfigError(f"cannot write to Global.output_dir {self.path.parent}: {e.strerror}") from None
        self._thread = threading.Thread(target=self._refresh, name="simsiam-lock", daemon=True)
        self._thread.start()
        return taken_over

    def _create(self) -> bool:
        """Write our record under a temporary name and link it to the lock's name: False if taken."""
        tmp = self.path.with_name(f".{self.path.name}.{self.record['token']}")
        write_json(tmp, self.record)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _abandoned(self, holder: dict | None) -> str | None:
        """Why the holder is gone, or None while it may be alive."""
        if holder is None:
            # unreadable: a lock being written right now, or junk; only old junk is taken over
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it was released"
            return f"the lock file is unreadable and {age:.0f} s old" if age > self.stale_after else None
        # The same job first: a Kubernetes pod that replaces rank 0 has the old pod's hostname
        # (<job>-0), and a fresh pid namespace often gets the old one's inode and pids.
        if holder.get("job_id") and holder.get("job_id") == self.record["job_id"]:
            return f"it is an earlier start of the same job {holder.get('job') or holder['job_id']}"
        if same_machine(holder, self.record):
            pid = holder.get("pid", 0)
            return None if pid_alive(pid) else f"its process {holder.get('pid')} no longer exists"
        age = time.time() - float(holder.get("time", 0))
        return f"its heartbeat is {age:.0f} s old" if age > self.stale_after else None

    def _remove_stale(self, holder: dict | None) -> None:
        """Move the stale lock aside and make sure it is the one we judged (another starting run
        may have replaced it meanwhile: then put nothing back and let _create fail)."""
        aside = self.path.with_name(f".{self.path.name}.stale-{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_json(aside)
        if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
            try:
                os.link(aside, self.path)           # not ours to remove: a live run's fresh lock
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_every):
            current = read_json(self.path)
            if current is not None and current.get("token") != self.record["token"]:
                log.error("ERROR: %s took over the lock %s; this run no longer owns its output directory",
                          describe(current), self.path)
                return
            self.record.update(beat=self.record["beat"] + 1, time=time.time())
            try:
                write_json(self.path, self.record)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("WARNING: cannot refresh %s: %s", self.path, e)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_json(self.path)
        if current is not None and current.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


# The lock this process holds (rank 0 of a run), released by the CLI however the run ends.
_held: RunLock | None = None


def claim(settings: Global, env) -> tuple[str | None, dict[str, int]]:
    """As the group forms: rank 0 takes OUTPUT_DIR's lock and chooses this start's heartbeat
    generation; every rank learns the outcome from one broadcast (a refused lock stops every rank
    with rank 0's line, none waits) and starts its watchdog. Returns rank 0's takeover warning, to
    log once logging is set up, and the group's restart history where this start bounds it
    (count_start; else empty)."""
    global _held
    from trainer import dist, watchdog
    output_dir = Path(settings.output_dir)
    decision, history = None, {}
    if env.is_main:
        try:
            lock = RunLock(output_dir)
            note = lock.acquire()
            _held = lock
            generation = watchdog.new_generation()
            history = count_start(output_dir, generation, env.world_size)
            watchdog.remove_old_generations(output_dir, generation)
            decision = ("ok", generation, note)
        except ConfigError as e:
            decision = ("error", str(e), None)
    kind, value, note = dist.broadcast_from_main(decision, env)
    if kind == "error":
        raise LockError(value)
    watchdog.start(output_dir, value, env.rank, env.world_size, settings.peer_timeout_seconds)
    return note, history


def count_start(output_dir: Path, generation: str, ranks: int) -> dict[str, int]:
    """Where no launcher of ours decides (on Kubernetes the pods' supervisors restart the group):
    when this start of the group is a restart, contract.decide judges the start before from the
    outcomes its pods left in OUTPUT_DIR/outcomes; a start past the bound is refused (ConfigError:
    exit 2, which fails the job). In a JobSet only its restarts in place are bounded here: a new
    generation (JobSet recreated the pods, bounded by its failurePolicy) begins the count anew.
    Every start is recorded in OUTPUT_DIR/starts.jsonl. Returns the
    restarts so far (``group_restarts``, ``counted_restarts``: the progress records carry them to
    `simsiam-job status`), empty where nothing is bounded here."""
    bound = os.environ.get(contract.GROUP_RESTARTS_ENV)
    if not bound:
        return {}
    path = output_dir / contract.STARTS
    job, attempt = job_identity(), os.environ.get(contract.ATTEMPT_ENV, "1")
    jobset_attempt = os.environ.get(contract.RESTART_ATTEMPT_ENV, "")
    this_attempt = [r for r in _records(path) if r.get("job") == job and r.get("attempt") == attempt]
    # Bounded here: the restarts since this JobSet generation began (elsewhere, all of them).
    earlier = [r for r in this_attempt if r.get("jobset_attempt", "") == jobset_attempt]
    outcomes_dir = output_dir / contract.OUTCOMES
    decision = None
    counted = sum(1 for r in earlier if r.get("counted"))
    if earlier:
        # A pod of an earlier start may report late: only what ended after the last start counts.
        since = float(earlier[-1].get("time", 0)) - CLOCK_SLACK
        outcomes = [o for o in contract.read_outcomes(outcomes_dir) if o.time >= since]
        decision = contract.decide(outcomes, restarts=counted, bound=int(bound), ranks=ranks)
    _clear(outcomes_dir)            # what the pods of this start report is this start's
    with open(path, "a") as f:
        f.write(json.dumps({"job": job, "attempt": attempt, "jobset_attempt": jobset_attempt,
                            "generation": generation, "time": time.time(),
                            "after": decision and decision.reason,
                            "counted": bool(decision and decision.counted)}) + "\n")
    if decision is not None and decision.action == contract.FAIL:
        raise ConfigError(decision.reason)
    counted_so_far = sum(1 for r in this_attempt if r.get("counted"))
    return {"group_restarts": len(this_attempt),
            "counted_restarts": counted_so_far + bool(decision and decision.counted)}


def _records(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _clear(directory: Path) -> None:
    for path in directory.glob("*.json") if directory.is_dir() else []:
        path.unlink(missing_ok=True)


def release_held() -> None:
    global _held
    if _held is not None:
        _held.release()
        _held = None
