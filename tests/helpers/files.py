"""Secrets and permissions: what another user of the machine can read, which files hold a value."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

NOBODY = 65534


def another_user_can_read(path: Path, shared: Path) -> bool:
    """Whether a different, unprivileged user could read ``path`` (below ``shared``): for real, by
    reading it as uid/gid 65534 when the tests run as root; else from the modes, as the kernel
    judges them (every folder from ``shared`` down searchable by others, the file readable)."""
    if os.geteuid() == 0:
        return subprocess.run(["cat", str(path)], user=NOBODY, group=NOBODY, extra_groups=[],
                              capture_output=True).returncode == 0
    folders = [path.parent, *[p for p in path.parent.parents if shared in (p, *p.parents)]]
    return all(os.stat(d).st_mode & 0o001 for d in folders) and bool(os.stat(path).st_mode & 0o004)


def files_holding(root: Path, *values: str) -> list[Path]:
    """Every file below ``root`` whose bytes contain any of ``values``."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                  and any(v.encode() in p.read_bytes() for v in values))
