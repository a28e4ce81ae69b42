"""What every training loop shares: the output directory, logs, metrics, progress line, seeding,
CPU threads, preemption (SIGTERM) and the resume choice; the Engine (loop.py) puts them together."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

from trainer import checkpoint as ckpt
from trainer import contract, dist
from trainer.config import ConfigError, dump
from trainer.plot import curves_svg, read_metrics

log = logging.getLogger("trainer")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved. The CLI exits 143 with this message."""


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


# Where a record is in the run, not a measurement: no VisualDL curve for these.
POSITION_FIELDS = ("global_step", "time", "epoch", "epochs", "step", "steps_per_epoch", "total_steps",
                   "eta_seconds")


class RunDir:
    """OUTPUT_DIR with config.yaml, train.log, metrics.jsonl (written by rank 0 only)."""

    def __init__(self, cfg: dict, rank: int):
        self.path = Path(cfg["Global"]["output_dir"])
        self.checkpoints = self.path / contract.CHECKPOINTS
        self.is_main = rank == 0
        self._metrics = None
        self._visualdl = None
        if self.is_main:
            try:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
                (self.path / contract.CONFIG).write_text(dump(cfg))
                self._metrics = open(self.path / contract.METRICS, "a", buffering=1)
            except OSError as e:
                raise ConfigError(f"cannot write to Global.output_dir {self.path}: {e.strerror}") from None
        setup_logging(self.path / contract.TRAIN_LOG if self.is_main else None, rank)
        if self.is_main and cfg["Global"].get("use_visualdl"):
            try:
                from visualdl import LogWriter
            except ImportError:
                raise ConfigError("Global.use_visualdl is True but visualdl is not installed "
                                  "(pip install 'simsiam-job[visualdl]')") from None
            self._visualdl = LogWriter(logdir=str(self.path / "visualdl"))

    def metric(self, **fields) -> None:
        """One JSON line in metrics.jsonl (and scalars to VisualDL when enabled)."""
        if not self.is_main:
            return
        fields.setdefault("time", round(time.time(), 3))
        self._metrics.write(json.dumps(fields) + "\n")
        if fields.get("type") in ("epoch", "eval"):
            self.write_curves()
        if self._visualdl is not None and "global_step" in fields:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and key not in POSITION_FIELDS:
                    self._visualdl.add_scalar(tag=f"{fields.get('type', 'train')}/{key}", value=value,
                                              step=fields["global_step"])

    def write_curves(self) -> None:
        """OUTPUT_DIR/curves.svg from metrics.jsonl so far (loss, z_std, lr, val top-1)."""
        svg = curves_svg(read_metrics(self.path / contract.METRICS), title=str(self.path.name))
        if svg is not None:
            ckpt.atomic_write(self.path / contract.CURVES, svg.encode())

    def close(self) -> None:
        if self._metrics:
            self._metrics.close()
        if self._visualdl is not None:
            self._visualdl.close()


def setup_logging(log_file: Path | None, rank: int) -> None:
    """Rank 0: INFO to stdout and train.log. Other ranks: warnings only, tagged with the rank."""
    logger = logging.getLogger("trainer")
    logger.handlers.clear()
    logger.propagate = False
    if rank == 0:
        logger.setLevel(logging.INFO)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
        if log_file is not None:
            handler = logging.FileHandler(log_file)
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    else:
        logger.setLevel(logging.WARNING)
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        logger.addHandler(stream)


class Progress:
    """Throughput and ETA over a run of `total_steps`, for the rank-0 progress line."""

    def __init__(self, total_steps: int, done_steps: int, images_per_step: int):
        self.total, self.done0 = total_steps, done_steps
        self.images_per_step = images_per_step
        self.start = self.mark = time.monotonic()
        self.mark_step = done_steps

    def tick(self, done_steps: int) -> tuple[float, float]:
        """(images/s since the last tick, seconds left at the average rate since the start)."""
        now = time.monotonic()
        rate = (done_steps - self.mark_step) * self.images_per_step / max(now - self.mark, 1e-9)
        per_step = (now - self.start) / max(done_steps - self.done0, 1)
        self.mark, self.mark_step = now, done_steps
        return rate, per_step * (self.total - done_steps)


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PreemptionSignal:
    """Turns SIGTERM (Kubernetes' and Slurm's preemption signal) into a flag the loop checks between
    steps, so the checkpoint is written from a consistent state."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if not self.requested:
            log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def agree_to_stop(env, stop: bool, due: bool, diverged_at: int = 0) -> tuple[bool, bool, int]:
    """Every rank must save (a collective) and stop at the same step: take the max over ranks.
    `diverged_at`, the first global step with a non-finite loss on this rank (0: none), becomes the
    group's earliest (negated, so the max finds it)."""
    stop, due, earliest = dist.all_reduce_max([stop, due, -diverged_at if diverged_at else -math.inf], env)
    return stop > 0, due > 0, 0 if earliest == -math.inf else int(-earliest)


def resume_state(g: dict, run: RunDir, env):
    """(path, state) to resume from, or None for a fresh start: Global.checkpoint if set, else the
    newest valid checkpoint in the output directory when Global.auto_resume is on.

    Rank 0 alone reads it and sends its bytes to every other rank: ranks choosing for themselves
    could resume from different steps after a restart (a checkpoint written by only some, a newest
    file one rank cannot read yet) and then train out of step, and the other ranks need not see the
    output directory at all (on Kubernetes only rank 0 mounts the output claim). Every rank so
    starts from identical parameters and optimizer state.
    """
    decision = None
    if env.is_main:
        try:
            chosen = _choose_checkpoint(g, run)
            decision = ("path", None) if chosen is None else ("path", str(chosen[0]), _read(chosen[0]))
        except ConfigError as e:            # every rank stops with rank 0's reason, none waits
            decision = ("error", str(e))
    kind, path, *data = dist.broadcast_from_main(decision, env)
    if kind == "error":
        raise ConfigError(path)
    if path is None:
        return None
    if env.is_main:
        return chosen
    return path, ckpt.load_checkpoint(path, data=data[0])


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read checkpoint {path}: {e.strerror}") from None


def _choose_checkpoint(g: dict, run: RunDir):
    if g["checkpoint"]:
        try:
            return g["checkpoint"], ckpt.load_checkpoint(g["checkpoint"])
        except ValueError as e:
            raise ConfigError(f"Global.checkpoint: {e}") from None
    if g["auto_resume"]:
        found = ckpt.latest_valid_checkpoint(run.checkpoints)
        if found is None:
            log.info("auto_resume: no valid checkpoint in %s, starting fresh", run.checkpoints)
        return found
    return None
