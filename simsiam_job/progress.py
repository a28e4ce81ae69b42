"""Following a job to its end with one progress line (submit --wait, quickstart)."""

from __future__ import annotations

import sys
import time

from simsiam_job.backends.base import JobRef, State


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_progress(p: dict | None) -> str:
    """One line from the trainer's step record (trainer.contract.PROGRESS_FIELDS), shown as the
    trainer wrote it: epoch, step, loss, images/s, ETA."""
    if not p:
        return ""
    parts = []
    if "epoch" in p:
        parts.append(f"epoch {p['epoch']}" + (f"/{p['epochs']}" if p.get("epochs") else ""))
    if "step" in p:
        parts.append(f"step {p['step']}" + (f"/{p['steps_per_epoch']}" if p.get("steps_per_epoch") else ""))
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss {p['loss']:.4f}")
    ips = p.get("images_per_sec")
    if isinstance(ips, (int, float)):
        parts.append(f"{ips:.1f} img/s")
    if isinstance(p.get("eta_seconds"), (int, float)):
        parts.append(f"ETA {_duration(p['eta_seconds'])}")
    if isinstance(p.get("summary"), str):   # a run's closing verdict, e.g. the smoke test's PASS/FAIL
        parts.append(p["summary"])
    return "  ".join(parts)


def follow(backend, ref: JobRef, *, label: str = "", interval: float = 2.0, stream=None) -> State:
    """Poll ``ref`` until it ends, keeping one progress line up to date on ``stream`` (stderr);
    return the final state (UNKNOWN too: a job whose state cannot be known ends the wait)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = ""
    while True:
        st = backend.status(ref)
        waiting = "waiting for the first logged step" if st.state is State.RUNNING else ""
        line = f"{label}{st.state.value:9} " + (format_progress(st.progress) or st.reason or waiting)
        if line != last:
            stream.write(("\r\033[K" + line) if tty else line + "\n")
            stream.flush()
            last = line
        if st.state.finished or st.state is State.UNKNOWN:
            break
        time.sleep(interval)
    if tty:
        stream.write("\n")
    if st.state is not State.SUCCEEDED and st.reason:
        stream.write(f"{ref} {st.state.value}: {st.reason}\n")
    return st.state
