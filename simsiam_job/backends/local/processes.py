"""The processes of a local run: found by the RUN_ENV=<run dir> marker in their environment (paddle
puts each trainer in a session of its own and a killed launcher leaves its trainers to init, so a
process group would miss some), signalled together, and the run's supervisor recognised by its
command line (a recycled pid is not it)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil

from simsiam_job.backends.base import poll
from simsiam_job.backends.local.records import RUN_ENV


def supervisor_alive(pid: int, run_dir: Path) -> bool:
    """True if ``pid`` is still this run's supervisor (not a recycled pid, not a zombie)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and str(run_dir) in process.cmdline()
    except (psutil.Error, ValueError):    # gone, not ours to read, or pid 0
        return False


def run_processes(run_dir: Path) -> list[int]:
    """The live processes of this run (paddle's launcher, every trainer): those of this user that
    carry RUN_ENV=<run dir> in their environment, wherever they were re-parented. Zombies are dead."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(RUN_ENV) == str(run_dir) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:      # gone meanwhile, or another user's
            continue
    return found


def signal_run(run_dir: Path, sig: int) -> list[int]:
    """Send ``sig`` to every live process of the run; returns the ones it reached."""
    reached = []
    for pid in run_processes(run_dir):
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


def stop_leftovers(run_dir: Path, grace: float, say: Callable[[str], None]) -> None:
    """After the launcher ended: no trainer may run on unseen. TERM (each checkpoints), then KILL."""
    left = signal_run(run_dir, signal.SIGTERM)
    if not left:
        return
    say(f"{len(left)} trainer process(es) outlived paddle's launcher: sent SIGTERM")
    if not poll(lambda: not run_processes(run_dir), timeout=grace):
        say(f"sent SIGKILL to {len(signal_run(run_dir, signal.SIGKILL))} process(es) "
            f"still running after {grace:g} s")
        poll(lambda: not run_processes(run_dir), timeout=10)
