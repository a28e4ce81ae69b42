"""Rank-loss watchdog: when any rank of a multi-process run is lost, every other rank exits promptly
with contract.EXIT_PEER_LOST, so the launcher restarts the whole group (which resumes from the newest
checkpoint) instead of leaving the survivors blocked in a collective until it times out.

Each rank runs one thread that rewrites OUTPUT_DIR/heartbeats/<generation>/rank-NNNNN.json every
few seconds and reads its peers' files. The output directory is the one place every rank of a run
shares on every backend. Liveness is read from a counter in the file, not from its mtime (NFS caches
attributes; its close-to-open consistency makes the content of a renamed file reliable). A peer is
lost when
  - its counter has not changed for Global.peer_timeout_seconds,
  - it runs on this machine (same host and pid namespace) and its pid is gone, or
  - it marked itself failed or stopped for a lost peer.
A rank that ends with a deliberate exit (done, SIGTERM checkpoint, diverged) marks itself "left",
and its peers stop watching it: a clean stop never makes the others exit with the peer-lost code.

A collective that fails outright (gloo raises at once when a peer's connection drops, inside the
backward pass, where paddle turns it into std::terminate and SIGABRT) does not end the rank either:
a C-level SIGABRT handler first asks the watchdog whether a peer is lost, and exits with the
peer-lost code if so; otherwise the abort goes on as before.

The generation (one per start of the group, chosen by rank 0 and broadcast as the group forms)
keeps a restarted group from reading the files of the start before it. The thread exits with
os._exit: the main thread may be blocked inside a gloo/NCCL collective, in C++, where no exception
can reach it (paddle releases the GIL there, so the thread keeps running).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from trainer import contract, outcome

log = logging.getLogger("trainer")

RUNNING, LEFT, FAILED, LOST_PEER = "running", "left", "failed", "lost-peer"
# Exits after which a rank's peers have nothing to fear: every rank reaches them by agreement.
CLEAN_EXITS = (contract.EXIT_DONE, contract.EXIT_DIVERGED, contract.EXIT_PREEMPTED)


def new_generation() -> str:
    """A fresh id for one start of the group (rank 0 chooses it, every rank uses it)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def machine() -> dict:
    """Who this process is: a pid means something only on the same host and in the same pid
    namespace (two containers may share a hostname but not their pids)."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return {"host": socket.gethostname(), "pidns": pidns, "pid": os.getpid()}


def same_machine(record: dict, me: dict) -> bool:
    return record.get("host") == me["host"] and record.get("pidns") == me["pidns"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # alive, owned by someone else
        return True
    return True


def write_json(path: Path, record: dict) -> None:
    """Replace `path` atomically (temporary name, rename): a reader sees the old or the new record."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def generation_dir(output_dir, generation: str) -> Path:
    return Path(output_dir) / contract.HEARTBEATS / generation


def remove_old_generations(output_dir, keep: str) -> None:
    """Rank 0, at start (holding the run's lock): earlier starts' heartbeats are history."""
    root = Path(output_dir) / contract.HEARTBEATS
    if root.is_dir():
        for old in root.iterdir():
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


class Heartbeat:
    """This rank's file: a counter that moves while the process lives, and its state."""

    def __init__(self, directory: Path, rank: int):
        self.path = Path(directory) / f"rank-{rank:05d}.json"
        self.record = {"rank": rank, **machine(), "beat": 0, "state": RUNNING, "detail": ""}

    def write(self, state: str = RUNNING, detail: str = "", **extra) -> None:
        self.record.update(beat=self.record["beat"] + 1, state=state, detail=detail,
                           time=round(time.time(), 3), **extra)
        write_json(self.path, self.record)


class Lost(NamedTuple):
    """A lost peer, why, and the exit code this rank leaves with: the peer's own when retrying
    cannot help (bad input), so that whichever rank's end a scheduler reads first (a JobSet's
    failure policy acts on the first Job that fails) leads to the same decision; else peer-lost."""
    rank: int
    why: str
    exit_code: int = contract.EXIT_PEER_LOST


def _passed_on(record: dict) -> int:
    code = record.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and contract.end_of_exit(code).final:
        return code
    return contract.EXIT_PEER_LOST


class PeerView:
    """What this rank knows of its peers; check() names the first lost one."""

    def __init__(self, directory: Path, rank: int, world_size: int, timeout: float, clock=time.monotonic):
        self.directory, self.timeout, self.clock = Path(directory), timeout, clock
        self.me = machine()
        now = clock()
        # rank -> (last counter seen, when it last changed); a peer that never wrote counts from now
        self.seen = {r: (None, now) for r in range(world_size) if r != rank}
        self.near: set[int] = set()             # peers on this machine

    def check(self, near_only: bool = False) -> Lost | None:
        """The first lost peer, else None. `near_only`: only the peers on this machine."""
        now = self.clock()
        for r, (beat, changed) in list(self.seen.items()):
            if near_only and r not in self.near:
                continue
            record = read_json(self.directory / f"rank-{r:05d}.json")
            if record is not None:
                if same_machine(record, self.me):
                    self.near.add(r)
                where = f"{record.get('host')}, pid {record.get('pid')}"
                state = record.get("state")
                if state == LEFT:
                    del self.seen[r]                # a deliberate exit: nothing more to watch
                    continue
                if state == FAILED:
                    return Lost(r, f"rank {r} ({where}) failed: {record.get('detail') or 'no reason given'}",
                                _passed_on(record))
                if state == LOST_PEER:           # pass on what it saw: the rank that was lost
                    return Lost(record.get("lost", r), f"{record.get('detail')} (seen by rank {r})",
                                _passed_on(record))
                if same_machine(record, self.me) and not pid_alive(record.get("pid", 0)):
                    return Lost(r, f"rank {r} ({where}) is gone: its process no longer exists")
                if record.get("beat") != beat:
                    beat, changed = record.get("beat"), now
                    self.seen[r] = (beat, changed)
            if now - changed > self.timeout:
                if beat is None:        # never seen: dead before its first beat, or not our storage
                    return Lost(r, f"no heartbeat from rank {r} in {self.directory} "
                                   f"for {now - changed:.0f} s "
                                   "(if it runs, Global.output_dir is not storage every rank shares)")
                where = f" ({record.get('host')}, pid {record.get('pid')})" if record else ""
                return Lost(r, f"no heartbeat from rank {r}{where} for {now - changed:.0f} s")
        return None


class Watchdog:
    """One per rank of a multi-process run: start() after the group has formed, finish() at exit."""

    def __init__(self, output_dir, generation: str, rank: int, world_size: int, timeout: float):
        self.directory = generation_dir(output_dir, generation)
        self.rank, self.timeout = rank, timeout
        self.interval = max(0.2, timeout / 6)
        self.heartbeat = Heartbeat(self.directory, rank)
        self.view = PeerView(self.directory, rank, world_size, timeout)
        self._stop = threading.Event()
        self._firing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="simsiam-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.heartbeat.write()
        self._thread.start()
        return self

    def _run(self) -> None:
        # Beat and read every peer each interval; read the peers on this machine every second too:
        # when one of them stops for a lost peer, paddle's launcher on this node gives the others
        # only seconds before killing them, and they must leave with the same exit code.
        tick = min(1.0, self.interval)
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(tick):
            try:
                beat = time.monotonic() >= next_beat
                if beat:
                    self.heartbeat.write()
                    next_beat += self.interval
                lost = self.view.check(near_only=not beat)
            except OSError as e:            # shared storage hiccup: try again next beat
                log.warning("WARNING: heartbeat in %s failed: %s", self.directory, e)
                continue
            if lost is not None and not self._stop.is_set():
                self.fire(lost)

    def fire(self, lost: Lost) -> None:
        """Name the lost peer, flush the log, mark this rank and leave at once (os._exit: no
        exception can reach a main thread blocked in a collective)."""
        with self._firing:
            then = ("so the whole group can restart and resume from the newest checkpoint"
                    if lost.exit_code == contract.EXIT_PEER_LOST else "as it did: retrying cannot help")
            message = f"peer lost: {lost.why}; rank {self.rank} stops (exit {lost.exit_code}) {then}"
            if log.handlers:
                log.error("ERROR: %s", message)
                for handler in log.handlers:
                    handler.flush()
            else:
                print(f"simsiam-train: error: {message}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                self.heartbeat.write(LOST_PEER, lost.why, lost=lost.rank, exit_code=lost.exit_code)
            except OSError:
                pass
            outcome.record(lost.exit_code, lost.why)
            os._exit(lost.exit_code)

    def finish(self, exit_code: int, message: str = "") -> None:
        """Stop beating and tell the peers how this rank ended (and its one line, which a peer that
        leaves because of it passes on)."""
        self._stop.set()
        with self._firing:
            try:
                if exit_code in CLEAN_EXITS:
                    self.heartbeat.write(LEFT, f"exit {exit_code}")
                else:
                    said = f"exit {exit_code} ({contract.EXIT_MEANINGS.get(exit_code, 'failed')})"
                    self.heartbeat.write(FAILED, f"{said}: {message}" if message else said,
                                         exit_code=exit_code)
            except OSError:
                pass

    def wait_for_lost_peer(self) -> None:
        """After an error in the main thread (gloo raises at once when a peer's connection drops):
        if a peer is lost, exit with the peer-lost code instead of the error; returns when every
        peer stays alive for a whole timeout, i.e. the error is this rank's own."""
        deadline = time.monotonic() + self.timeout + 2 * self.interval
        while time.monotonic() < deadline:
            lost = self.view.check()
            if lost is not None:
                self.fire(lost)
            time.sleep(min(0.5, self.interval))


# The running process's watchdog, so the CLI can report how the rank ended whatever raised.
_current: Watchdog | None = None


def start(output_dir, generation: str, rank: int, world_size: int, timeout: float) -> Watchdog | None:
    """Start this rank's watchdog (none for one process or timeout 0)."""
    global _current
    if world_size < 2 or not timeout:
        return None
    _current = Watchdog(output_dir, generation, rank, world_size, timeout).start()
    _catch_aborts()
    return _current


_ABORT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)


@_ABORT_HANDLER
def _on_abort(signum):
    """SIGABRT, raised synchronously by abort() after a C++ error escaped (e.g. gloo's exception in
    the backward pass): if a peer is lost, that is the cause, so exit with the peer-lost code.
    Returning lets abort() end the process with SIGABRT as it would have."""
    if _current is not None:
        _current.wait_for_lost_peer()


def _catch_aborts() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = (ctypes.c_int, _ABORT_HANDLER)
        libc.signal(signal.SIGABRT, _on_abort)
    except (OSError, AttributeError):       # no libc signal(): gloo errors then end with SIGABRT
        pass


def finish(exit_code: int, message: str = "") -> None:
    global _current
    if _current is not None:
        _current.finish(exit_code, message)
        _current = None


def wait_for_lost_peer() -> None:
    if _current is not None:
        _current.wait_for_lost_peer()
