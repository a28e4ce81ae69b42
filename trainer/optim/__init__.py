"""The optimizer of every task: momentum SGD or LARS, with per-group learning rates.

The paper fixes the predictor's lr while the encoder follows the cosine schedule. Paddle scales a
parameter's lr by `param.optimize_attr['learning_rate']`, so the optimizer's own lr is kept at 1.0
and that per-parameter factor holds each group's absolute lr, set before every step by GroupLR.
This stays exact even where the schedule reaches 0 (a ratio to the schedule would not).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import paddle
from paddle import nn

from trainer.config import ConfigError
from trainer.optim.lars import MomentumLARC
from trainer.optim.schedule import LRSchedule
from trainer.sections import LRScheduler, Optimizer
from trainer.sections import ParamGroup as ParamGroupSection


@dataclass
class ParamGroup:
    name: str
    params: list
    fixed_lr: float | None      # None: follows the schedule


def param_groups(model: nn.Layer, sections: tuple[ParamGroupSection, ...]) -> list[ParamGroup]:
    """Trainable parameters split by top-level sub-module name (PASSL's param_groups: encoder, predictor).

    Frozen parameters (stop_gradient, e.g. the projector's last bias) are left out, so the optimizer
    never touches them (no update, no weight decay).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    if not sections:
        return [ParamGroup("all", [p for _, p in trainable], None)]
    groups = [ParamGroup(section.name, [], section.lr) for section in sections]
    by_name = {g.name: g for g in groups}
    for name, param in trainable:
        top = name.split(".", 1)[0]
        if top not in by_name:
            raise ConfigError(f"parameter '{name}' is in no Optimizer.param_groups entry "
                              f"(groups: {', '.join(by_name)}; model parts: "
                              f"{', '.join(sorted({n.split('.', 1)[0] for n, _ in trainable}))})")
        by_name[top].params.append(param)
    empty = [g.name for g in groups if not g.params]
    if empty:
        raise ConfigError(f"Optimizer.param_groups names '{empty[0]}', which matches no trainable "
                          "parameters of the model")
    return groups


class GroupLR:
    """Sets every group's lr for a position in training; returns them for logging."""

    def __init__(self, schedule: LRSchedule, groups: list[ParamGroup]):
        self.schedule, self.groups = schedule, groups

    def set(self, epoch: int, step: int) -> dict[str, float]:
        lrs = {}
        scheduled = self.schedule(epoch, step)
        for group in self.groups:
            lr = scheduled if group.fixed_lr is None else group.fixed_lr
            for param in group.params:
                param.optimize_attr["learning_rate"] = lr
            lrs[group.name] = lr
        return lrs


def build_optimizer(model: nn.Layer, section: Optimizer | Mapping, *, epochs: int, steps_per_epoch: int,
                    lr_section: LRScheduler | None = None):
    """(paddle optimizer, GroupLR) for the Optimizer view (or an Optimizer section as a mapping,
    as tests and benches write one), the one factory of every task.

    The schedule is Optimizer.lr, else `lr_section` (PASSL's top-level LRScheduler section, which
    the linear-probe configs use). Names: Momentum and SGD (momentum 0) with L2 weight decay;
    MomentumLARC or LARS (the linear-probe recipe), which fold weight decay into the trust ratio.
    """
    opt = section if isinstance(section, Optimizer) else Optimizer.of(section)
    schedule_section = opt.lr or lr_section
    if schedule_section is None:
        raise ConfigError("missing required section 'LRScheduler' (or 'Optimizer.lr')")
    groups = param_groups(model, opt.param_groups)
    schedule = LRSchedule.from_config(schedule_section, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      decay_unit=opt.lr_decay_unit)
    parameters = [{"params": g.params} for g in groups]
    if opt.name in ("MomentumLARC", "LARS"):
        optimizer = MomentumLARC(1.0, parameters, momentum=opt.momentum, weight_decay=opt.weight_decay,
                                 trust_coefficient=opt.trust_coefficient, clip=opt.clip, eps=opt.epsilon)
    elif opt.name in ("Momentum", "SGD"):
        optimizer = paddle.optimizer.Momentum(
            learning_rate=1.0,
            momentum=opt.momentum if opt.name == "Momentum" else 0.0,
            parameters=parameters,
            weight_decay=paddle.regularizer.L2Decay(opt.weight_decay) if opt.weight_decay else None,
            use_nesterov=opt.use_nesterov,
            multi_precision=opt.multi_precision,
        )
    else:
        raise ConfigError(f"bad value for 'Optimizer.name': {opt.name!r} "
                          "(Momentum, SGD, MomentumLARC or LARS)")
    return optimizer, GroupLR(schedule, groups)
