"""Learning-rate schedules as pure functions of the position in training (epoch, step in epoch).

Being stateless, a schedule resumes exactly from the (epoch, step) a checkpoint stores.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from trainer.sections import LRScheduler


@dataclass(frozen=True)
class LRSchedule:
    """PASSL's lr section. `decay_unit` epoch: lr changes at epoch boundaries; step: every step."""
    name: str
    learning_rate: float
    epochs: int
    steps_per_epoch: int
    decay_unit: str = "epoch"
    eta_min: float = 0.0
    warmup_epoch: float = 0.0
    warmup_start_lr: float = 0.0
    warmup_prefix: bool = False
    milestones: tuple = field(default_factory=tuple)
    gamma: float = 0.1

    @classmethod
    def from_config(cls, section: LRScheduler, *, epochs: int, steps_per_epoch: int,
                    decay_unit: str | None = None) -> LRSchedule:
        """The schedule an LRScheduler view describes; `decay_unit` (Optimizer.lr_decay_unit)
        applies where the section gives none."""
        return cls(name=section.name, learning_rate=section.learning_rate, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, decay_unit=section.decay_unit or decay_unit or "epoch",
                   eta_min=section.eta_min, warmup_epoch=section.warmup_epoch,
                   warmup_start_lr=section.warmup_start_lr, warmup_prefix=section.warmup_prefix,
                   milestones=section.milestones, gamma=section.gamma)

    def __call__(self, epoch: int, step: int = 0) -> float:
        """The lr for step `step` (0-based) of epoch `epoch` (0-based)."""
        per_step = self.decay_unit == "step"
        t = epoch * self.steps_per_epoch + step if per_step else epoch
        unit = self.steps_per_epoch if per_step else 1
        total, warmup = self.epochs * unit, self.warmup_epoch * unit
        if t < warmup:
            return self.warmup_start_lr + (self.learning_rate - self.warmup_start_lr) * t / warmup
        if self.name == "Constant":
            return self.learning_rate
        if self.name == "MultiStepDecay":
            return self.learning_rate * self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.warmup_prefix:       # timm: the cosine starts after the warm-up
            t, total = t - warmup, total - warmup
        progress = t / max(total, 1)
        return self.eta_min + 0.5 * (self.learning_rate - self.eta_min) * (1 + math.cos(math.pi * progress))
