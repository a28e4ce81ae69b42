"""Which checkpoint a run resumes from, and how every rank gets it.

Rank 0 chooses (Global.checkpoint if set, else the newest valid checkpoint in the output directory
when Global.auto_resume is on), loads it, and broadcasts the whole state to the other ranks. So
every rank starts from identical parameters, optimizer state and position, and no rank but rank 0
needs to see the output directory: a JobSet's workers mount no output volume at all. Ranks
choosing for themselves could also resume from different steps after a restart (a checkpoint
written by only some, a newest file one rank cannot read yet) and then train out of step.
"""
from __future__ import annotations

import logging

import numpy as np

from trainer import checkpoint as ckpt
from trainer import dist
from trainer.config import ConfigError
from trainer.sections import Global

log = logging.getLogger("trainer")


def resume_state(settings: Global, checkpoints, env):
    """(path, state) to resume from on every rank, or None for a fresh start. A checkpoint rank 0
    cannot use stops every rank with rank 0's line (none waits)."""
    decision = None
    if env.is_main:
        try:
            chosen = _choose_checkpoint(settings, checkpoints)
            decision = ("state", None if chosen is None else (str(chosen[0]), _to_host(chosen[1])))
        except ConfigError as e:
            decision = ("error", str(e))
    kind, value = dist.broadcast_from_main(decision, env)
    if kind == "error":
        raise ConfigError(value)
    if value is None:
        return None
    return (chosen if env.is_main else (value[0], _to_device(value[1])))


def _choose_checkpoint(settings: Global, checkpoints):
    if settings.checkpoint:
        try:
            return settings.checkpoint, ckpt.load_checkpoint(settings.checkpoint)
        except ValueError as e:
            raise ConfigError(f"Global.checkpoint: {e}") from None
    if settings.auto_resume:
        found = ckpt.latest_valid_checkpoint(checkpoints)
        if found is None:
            log.info("auto_resume: no valid checkpoint in %s, starting fresh", checkpoints)
        return found
    return None


def _to_host(value):
    """The state with every tensor as a numpy array (what a broadcast can carry)."""
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    if hasattr(value, "numpy") and hasattr(value, "place"):
        return ("tensor", value.numpy())
    return value


def _to_device(value):
    import paddle
    if (isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor"
            and isinstance(value[1], np.ndarray)):
        return paddle.to_tensor(value[1])
    if isinstance(value, dict):
        return {k: _to_device(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v) for v in value)
    return value
