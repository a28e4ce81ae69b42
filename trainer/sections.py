"""Typed, frozen views of a validated config's sections (trainer.config_schema.validate's dict).

The dict stays the document: it is what config.yaml is written from, in PASSL's schema. Code that
reads a setting reads it here, by attribute, so a typo is an AttributeError at the first run
rather than a KeyError deep in an epoch. Paddle-free.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Global:
    """The Global section after validation (defaults filled in); PASSL-only keys are left out."""

    task_type: str
    checkpoint: str | None
    auto_resume: bool
    pretrained_model: str | None
    output_dir: str
    device: str
    save_interval: int
    save_interval_steps: int
    save_interval_minutes: float
    max_num_latest_checkpoint: int
    eval_during_train: bool
    eval_interval: int
    eval_unit: str
    accum_steps: int
    epochs: int
    max_train_step: int | None
    print_batch_step: int
    use_visualdl: bool
    seed: int | None
    num_threads: int | None
    collapse_warn_fraction: float
    collapse_patience: int
    to_static: bool
    peer_timeout_seconds: float

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Global:
        """The Global section of a validated config."""
        section = config["Global"]
        return cls(**{field.name: section[field.name] for field in dataclasses.fields(cls)})
