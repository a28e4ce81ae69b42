"""Edits of paddle's launcher command (``python -m paddle.distributed.launch ...``) that each pod's
supervisor (trainer.rendezvous) makes once it knows where its group meets. Paddle-free."""

from __future__ import annotations

LAUNCHER = "paddle.distributed.launch"


def with_master(argv: list[str], master: str, round_: int = 0) -> list[str]:
    """``argv`` (a ``python -m paddle.distributed.launch ...`` command) with ``--master`` added; with
    a round, its ``--job_id`` (the key space of the master's store) made that round's own."""
    if LAUNCHER not in argv:
        raise ValueError(f"expected a `python -m {LAUNCHER} ...` command after --, got {argv[:3]}")
    at = argv.index(LAUNCHER) + 1
    argv = [*argv[:at], "--master", master, *argv[at:]]
    if round_:
        if "--job_id" in argv[at:]:
            i = argv.index("--job_id", at) + 1
            argv[i] = f"{argv[i]}-round-{round_}"
        else:
            argv[at:at] = ["--job_id", f"round-{round_}"]
    return argv


def with_rank(argv: list[str], rank: int) -> list[str]:
    """``argv`` with the launcher's ``--rank`` (and the node's log folder, ``.../rank-N``) set to
    ``rank``: a JobSet's worker pods count from 0 in their own Job, their node rank is 1 higher."""
    at = argv.index(LAUNCHER) + 1
    argv = list(argv)
    for i in range(at, len(argv) - 1):
        if argv[i] == "--rank":
            argv[i + 1] = str(rank)
        elif argv[i] == "--log_dir":
            argv[i + 1] = argv[i + 1].rpartition("/rank-")[0] + f"/rank-{rank}" if "/rank-" in argv[i + 1] \
                else argv[i + 1]
    return argv


def launcher_nodes(argv: list[str]) -> int:
    """The launcher's ``--nnodes``."""
    at = argv.index(LAUNCHER) + 1
    if "--nnodes" in argv[at:-1]:
        value = argv[argv.index("--nnodes", at) + 1]
        if value.isdigit():
            return int(value)
    return 1
