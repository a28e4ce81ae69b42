"""Never a silently wrong run: a diverged run stops before it can overwrite a good checkpoint, a
checkpoint that does not fit the model is refused with the parameter that differs, and checkpoint
retention counts only checkpoints that load (files that merely look like one are reported, never
counted, never deleted).
"""
from __future__ import annotations

import logging
from pathlib import Path

import paddle

from trainer import checkpoint as ckpt
from trainer.config import ConfigError

log = logging.getLogger("trainer")


class Diverged(Exception):
    """A non-finite loss or parameter; the CLI exits contract.EXIT_DIVERGED with this line."""


class NonFiniteLoss:
    """Remembers, on the device, the first global step whose loss was not finite, so a step never
    waits for the device; read back (one number) only where the run must know: at logged steps and
    before a save."""

    def __init__(self):
        self.first_bad = paddle.zeros([], dtype="int64")     # 0 = none so far (steps count from 1)

    def observe(self, loss, global_step: int) -> None:
        bad = paddle.logical_not(paddle.isfinite(loss.astype("float32"))).all()
        fresh = paddle.logical_and(bad, self.first_bad == 0)
        self.first_bad = paddle.where(fresh, paddle.full([], global_step, dtype="int64"), self.first_bad)

    def first_bad_step(self) -> int:
        return int(self.first_bad)


def first_nonfinite_parameter(model: paddle.nn.Layer) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, else None (one device read)."""
    named = [(name, p) for name, p in model.named_parameters()]
    if not named:
        return None
    finite = paddle.stack([paddle.isfinite(p.astype("float32")).all() for _, p in named]).numpy()
    for (name, _), ok in zip(named, finite, strict=True):
        if not ok:
            return name
    return None


def diverged_message(global_step: int, epoch: int, what: str) -> str:
    return (f"training diverged at global step {global_step} (epoch {epoch}): {what}; no checkpoint was "
            "written after it (lower Optimizer.lr.learning_rate, or check the data)")


# ---- resume -------------------------------------------------------------------------------------

def check_model_state(model: paddle.nn.Layer, state: dict, source) -> None:
    """ConfigError naming the first tensor of `state` (a checkpoint's model state) that the model
    lacks or holds in another shape, or the first model tensor the checkpoint lacks."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise ConfigError(f"checkpoint {source} does not fit the model: it has {name!r}, which "
                              f"{type(model).__name__} does not (another Model.name?)")
        want, got = list(own[name].shape), list(getattr(tensor, "shape", []))
        if want != got:
            raise ConfigError(f"checkpoint {source} does not fit the model: {name} has shape {got} in "
                              f"the checkpoint and {want} in the model (another Model.* setting?)")
    missing = [name for name in own if name not in state]
    if missing:
        raise ConfigError(f"checkpoint {source} does not fit the model: it lacks {missing[0]!r}"
                          + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))


# ---- retention ----------------------------------------------------------------------------------

class Retention:
    """Keeps the newest `keep` valid checkpoints (0 = all). A file named like a checkpoint that does
    not load is junk: reported once by name, never counted, never deleted (it may not be ours)."""

    def __init__(self, directory, keep: int):
        self.directory, self.keep = Path(directory), keep
        self.valid: set[str] = set()             # names known to load (written or checked by us)
        self.junk: dict[str, str] = {}           # name -> why, reported once

    def written(self, path) -> None:
        self.valid.add(Path(path).name)

    def apply(self) -> list[Path]:
        """Delete valid checkpoints beyond the newest `keep`; returns the deleted paths."""
        if self.keep <= 0:
            return []
        valid = []
        for path in ckpt.list_checkpoints(self.directory):
            if path.name in self.junk:
                continue
            if path.name not in self.valid:
                try:
                    ckpt.load_checkpoint(path)
                    self.valid.add(path.name)
                except ValueError as e:
                    self.junk[path.name] = str(e)
                    log.warning("WARNING: %s; it is not counted in Global.max_num_latest_checkpoint "
                                "and is left as it is", e)
                    continue
            valid.append(path)
        old = valid[:-self.keep]
        for path in old:
            path.unlink(missing_ok=True)
            self.valid.discard(path.name)
        return old
