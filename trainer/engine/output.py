"""The run's output directory (OUTPUT_DIR: config.yaml, train.log, metrics.jsonl, curves.svg,
visualdl/) as rank 0 writes it, and the trainer's logging set-up."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from trainer import checkpoint as ckpt
from trainer import contract
from trainer.config import ConfigError, dump
from trainer.plot import curves_svg, read_metrics
from trainer.sections import Global

log = logging.getLogger("trainer")

# Where a record is in the run, not a measurement: no VisualDL curve for these.
POSITION_FIELDS = ("global_step", "time", "epoch", "epochs", "step", "steps_per_epoch", "total_steps",
                   "eta_seconds")


class OutputDir:
    """OUTPUT_DIR with config.yaml, train.log, metrics.jsonl (written by rank 0 only)."""

    def __init__(self, cfg: dict, settings: Global, rank: int):
        """`cfg`: the validated config, written as config.yaml; `settings`: its Global section."""
        self.path = Path(settings.output_dir)
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
        if self.is_main and settings.use_visualdl:
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
