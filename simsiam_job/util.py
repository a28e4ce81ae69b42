"""Small helpers the launcher needs in many places, written once: atomic writes, JSON records read
without surprises, the end of a log file, and did-you-mean hints."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new, never a part:
    a temporary file next to it (same file system), then one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json_object(path: Path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not a JSON object."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_json_or_explain(path: Path) -> Any:
    """The JSON value in ``path``; ValueError with one line saying why when it cannot be read."""
    try:
        return json.loads(path.read_bytes())
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None


def tail_lines(path: Path, size: int = 65536) -> list[str]:
    """The lines in the last ``size`` bytes of ``path`` (the first may be partial); [] if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def did_you_mean(word: str, choices: Sequence[str], *, cutoff: float = 0.6) -> str | None:
    """The choice closest to a mistyped ``word``, if one is close enough."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None
