"""What each trainer process sets up before it trains: its CPU threads and its random streams."""
from __future__ import annotations

import os
import random

import numpy as np


def cpu_threads(requested: int | None) -> int:
    """Threads per process: the configured number, else the cores this process may use divided
    among the processes paddle.distributed.launch started on this node."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))


def set_cpu_threads(requested: int | None) -> int:
    import paddle
    threads = cpu_threads(requested)
    paddle.base.core.set_num_threads(threads)
    return threads


def seed_everything(seed: int | None, rank: int) -> None:
    """Same paddle seed on every rank (identical initial weights); per-rank numpy/python streams."""
    import paddle
    seed = 0 if seed is None else seed
    paddle.seed(seed)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)
