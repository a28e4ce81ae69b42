"""Where each local run lives, wherever it was made.

A local run made with ``--set runs_dir=DIR`` lives outside the runs directory that later commands
resolve (they have no --set). Submit records each local run's directory in a small per-user index,
``$XDG_DATA_HOME/simsiam-job/run-locations/<run id>`` (one line: the runs directory), so that
``status``, ``logs``, ``cancel``, ``--wait`` and ``--from local://ID`` find the run by its JOBREF alone,
and ``list`` shows it. Only the local backend reads or writes it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from simsiam_job.util import write_text_atomic
from simsiam_job.validate import DNS1123_LABEL


def _index_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "simsiam-job" / "run-locations"


def _index_file(run_id: str, environ: Mapping[str, str]) -> Path | None:
    if not DNS1123_LABEL.match(run_id):     # run ids are job names; anything else is no file name
        return None
    return _index_dir(environ) / run_id


def _recorded_runs_dir(entry: Path) -> str | None:
    """The runs directory an index entry records; None if it cannot be read. An entry that is not
    what submit writes (one absolute path, UTF-8) is skipped with a warning: one damaged file must
    not hide or break the other runs."""
    try:
        runs_dir = entry.read_bytes().decode().strip()
    except OSError:
        return None
    except UnicodeDecodeError:
        runs_dir = ""
    if not runs_dir.startswith("/") or any(c in runs_dir for c in "\0\n"):
        print(f"warning: run index entry {entry} does not hold a runs directory; ignored "
              "(delete it to silence this)", file=sys.stderr)
        return None
    return runs_dir


def remember(run_id: str, runs_dir: str | os.PathLike, environ: Mapping[str, str] = os.environ) -> None:
    """Record where local run ``run_id`` lives (best effort: the run itself exists already)."""
    path = _index_file(run_id, environ)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, str(Path(runs_dir).absolute()) + "\n")
    except OSError:
        pass


def recorded_runs_dir(run_id: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The runs directory recorded for ``run_id``, if that run is still there."""
    path = _index_file(run_id, environ)
    runs_dir = _recorded_runs_dir(path) if path is not None else None
    if runs_dir and (Path(runs_dir) / run_id / "spec.json").is_file():
        return runs_dir
    return None


def runs_by_dir(environ: Mapping[str, str] = os.environ) -> dict[str, set[str]]:
    """Every recorded run id, grouped by the runs directory it lives in."""
    by_dir: dict[str, set[str]] = {}
    try:
        entries = list(_index_dir(environ).iterdir())
    except OSError:
        return {}
    for entry in entries:
        if not DNS1123_LABEL.match(entry.name):  # submit's own temporary files, strays
            continue
        runs_dir = _recorded_runs_dir(entry)
        if runs_dir:
            by_dir.setdefault(runs_dir, set()).add(entry.name)
    return by_dir
