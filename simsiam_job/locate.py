"""Find the backend that holds a job, wherever the job lives.

A local run made with ``--set runs_dir=DIR`` lives outside the runs directory that later commands
resolve (they have no --set). Submit records each local run's directory in a small per-user index,
``$XDG_DATA_HOME/simsiam-job/run-locations/<run id>`` (one line: the runs directory), so that
``status``, ``logs``, ``cancel``, ``--wait`` and ``--from local://ID`` find the run by its JOBREF alone,
and ``list`` shows it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simsiam_job import defaults
from simsiam_job.backends import get_backend, options_class
from simsiam_job.backends.base import Backend, JobRef
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


def remember(ref: JobRef, runs_dir: str | os.PathLike, environ: Mapping[str, str] = os.environ) -> None:
    """Record where local run ``ref`` lives (best effort: the run itself exists already)."""
    path = _index_file(ref.id, environ)
    if ref.backend != "local" or path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(str(Path(runs_dir).absolute()) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def located_options(ref: JobRef, options: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """``options`` with runs_dir set to where local run ``ref`` was recorded, if it is still there."""
    path = _index_file(ref.id, environ)
    if ref.backend != "local" or path is None:
        return options
    runs_dir = _recorded_runs_dir(path)
    if runs_dir and (Path(runs_dir) / ref.id / "spec.json").is_file():
        return dataclasses.replace(options, runs_dir=runs_dir)
    return options


def backend_for(ref: JobRef, options: Any = None, environ: Mapping[str, str] = os.environ) -> Backend:
    """The backend instance that holds ``ref`` (its options from the user's defaults unless given)."""
    if options is None:
        options = defaults.resolve_options(ref.backend, options_class(ref.backend), environ=environ)
    return get_backend(ref.backend, located_options(ref, options, environ))


def runs_elsewhere(options: Any, *, all_jobs: bool, environ: Mapping[str, str] = os.environ) -> list:
    """``list`` rows of the recorded runs that live outside ``options``' runs directory."""
    default = Path(get_backend("local", options).runs_dir)
    by_dir: dict[str, set[str]] = {}
    try:
        entries = list(_index_dir(environ).iterdir())
    except OSError:
        return []
    for entry in entries:
        if not DNS1123_LABEL.match(entry.name):  # submit's own temporary files, strays
            continue
        runs_dir = _recorded_runs_dir(entry)
        if runs_dir and Path(runs_dir) != default:
            by_dir.setdefault(runs_dir, set()).add(entry.name)
    rows = []
    for runs_dir, run_ids in by_dir.items():
        backend = get_backend("local", dataclasses.replace(options, runs_dir=runs_dir))
        rows += [row for row in backend.list(all_jobs=all_jobs) if row.ref.id in run_ids]
    return rows
