"""Automatic mixed precision from the config's FP16 section, for every task.

FP16.level O0 (off), O1 (autocast: listed ops in low precision) or O2 (low-precision weights with
float32 master copies), in FP16.dtype float16 (with a GradScaler) or bfloat16 (no scaling needed
unless FP16.GradScaler asks for it). Every key of the section reaches paddle: the GradScaler keys
go to paddle.amp.GradScaler, fp16_custom_white_list/black_list to paddle.amp.auto_cast. Paddle runs
AMP on GPUs only (on CPU autocast and O2 leave everything in float32), so a CPU run with a level
other than O0 is refused rather than silently trained in float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import paddle

from trainer.config import ConfigError
from trainer.sections import Fp16, GradScaler


class Amp:
    def __init__(self, fp16: Fp16 | Mapping | None, device: str = "gpu"):
        """`fp16`: the config's FP16 view, or a section as a mapping (tests and benches write one)."""
        if not isinstance(fp16, Fp16):
            fp16 = Fp16.of(fp16)
        self.level, self.dtype = fp16.level, fp16.dtype
        # paddle's auto_cast takes lists
        self.white_list = None if fp16.white_list is None else list(fp16.white_list)
        self.black_list = None if fp16.black_list is None else list(fp16.black_list)
        self.scaler = None
        if self.level == "O0":
            return
        if not device.startswith("gpu"):
            raise ConfigError(f"FP16.level {self.level} needs Global.device gpu: paddle runs mixed "
                              "precision on GPUs only (use FP16.level O0 on CPU)")
        if self.dtype == "float16" or fp16.grad_scaler:
            scaler = fp16.grad_scaler or GradScaler()
            self.scaler = paddle.amp.GradScaler(**dataclasses.asdict(scaler))

    def describe(self) -> str:
        return "AMP off" if self.level == "O0" else f"AMP {self.level} {self.dtype}"

    def decorate(self, model, optimizer):
        if self.level == "O2":
            return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=self.dtype)
        return model, optimizer

    def autocast(self):
        if self.level == "O0":
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(level=self.level, dtype=self.dtype, custom_white_list=self.white_list,
                                    custom_black_list=self.black_list)

    def backward_and_step(self, loss, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        optimizer.clear_grad()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def set_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)
