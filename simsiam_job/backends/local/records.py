"""The records of a local run in its directory (see the package's docstring for the layout), read
the way status, cancel, resume and the supervisor all need them: a damaged record is one line,
never a traceback."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from simsiam_job.util import read_json_object, read_json_or_explain, write_text_atomic
from trainer import contract

RUN_ENV = contract.RUN_DIR_ENV  # <run dir>, on every process of a run: how status and cancel find them
OUTCOMES = "outcomes"           # <run dir>/outcomes/<start>/: each rank's outcome (trainer.contract)


def number(record: dict, key: str, default: int) -> float:
    """A count (int) or a time (float) in a record; ``default`` when it is missing or not a number."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return value


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "pid").read_text())
    except (OSError, ValueError):
        return None


def group_restarts(run_dir: Path, key: str = "restarts") -> int:
    """Counted group restarts (or, key "preemptions", uncounted restarts) of the current attempt."""
    record = read_json_object(run_dir / "exit.json") or read_json_object(run_dir / "restarts.json") or {}
    return int(number(record, key, 0))


def record_cancel(run_dir: Path, reason: str) -> None:
    """The outcome of a cancelled run whose supervisor cannot record it any more."""
    if not (run_dir / "exit.json").exists():
        write_text_atomic(run_dir / "exit.json", json.dumps(
            {"exit_code": None, "reason": reason, "restarts": group_restarts(run_dir),
             "finished": time.time()}))


def read_command(run_dir: Path) -> dict:
    """command.json as submit wrote it (argv, env, env_files, path_prefix); ValueError (one line) if not."""
    path = run_dir / "command.json"
    command = read_json_or_explain(path)

    def text(value) -> bool:
        return isinstance(value, str) and "\0" not in value

    def text_map(value) -> bool:
        return isinstance(value, dict) and all(text(k) and text(v) for k, v in value.items())

    if not (isinstance(command, dict) and isinstance(command.get("argv"), list) and command["argv"]
            and all(text(a) for a in command["argv"]) and text_map(command.get("env"))
            and text_map(command.get("env_files", {})) and text(command.get("path_prefix"))):
        raise ValueError(f"{path} is not the command submit recorded (argv, env, env_files, path_prefix)")
    return command
