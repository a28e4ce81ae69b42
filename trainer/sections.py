"""Typed, frozen views of a validated config's sections (trainer.config_schema.validate's dict).

The dict stays the document: it is what config.yaml is written from, in PASSL's schema. Code that
reads a setting reads it here, by attribute, so a typo is an AttributeError at the first run
rather than a KeyError deep in an epoch. Each view is built once, by `Config.of`, after validation.

Defaults: validation fills in Global's and FP16's; the other sections keep only the keys the file
gives (config.yaml must say what the user wrote), so their defaults live here, in the fields.
Keys PASSL has and this trainer does not use are left out. Paddle-free: the launcher imports it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_View = TypeVar("_View", bound="DataclassInstance")


def _same_names(cls: type[_View], section: Mapping[str, Any] | None, **read: Any) -> _View:
    """`cls` from the section's keys that share a field's name (absent keys keep the field's
    default); `read` gives the fields whose value needs more than a copy."""
    section = section or {}
    values = {f.name: section[f.name] for f in dataclasses.fields(cls)
              if f.name in section and f.name not in read}
    return cls(**values, **read)


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


# ---------------------------------------------------------------------------------------------
# FP16: automatic mixed precision (trainer.engine.amp)

@dataclasses.dataclass(frozen=True)
class GradScaler:
    """FP16.GradScaler: paddle.amp.GradScaler's arguments, with paddle's defaults."""

    init_loss_scaling: float = 65536.0
    incr_ratio: float = 2.0
    decr_ratio: float = 0.5
    incr_every_n_steps: int = 2000
    decr_every_n_nan_or_inf: int = 1
    use_dynamic_loss_scaling: bool = True

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> GradScaler:
        return _same_names(cls, section)


@dataclasses.dataclass(frozen=True)
class Fp16:
    """The FP16 section. grad_scaler is None unless the section gives one (float16 then uses
    paddle's defaults; bfloat16 scales only when asked to)."""

    level: str = "O0"
    dtype: str = "float16"
    grad_scaler: GradScaler | None = None
    white_list: tuple[str, ...] | None = None      # fp16_custom_white_list: ops autocast lowers
    black_list: tuple[str, ...] | None = None      # fp16_custom_black_list: ops it keeps in float32

    @classmethod
    def of(cls, section: Mapping[str, Any] | None) -> Fp16:
        section = section or {}
        white, black = section.get("fp16_custom_white_list"), section.get("fp16_custom_black_list")
        scaler = section.get("GradScaler")
        return cls(level=section.get("level", "O0"), dtype=section.get("dtype", "float16"),
                   grad_scaler=GradScaler.of(scaler) if scaler else None,
                   white_list=None if white is None else tuple(white),
                   black_list=None if black is None else tuple(black))


# ---------------------------------------------------------------------------------------------
# Model (trainer.models)

@dataclasses.dataclass(frozen=True)
class Model:
    """The Model section. Every key but the name is None when the file does not give it: the
    factory that `name` picks has its own defaults, and refuses a key it does not take."""

    name: str
    class_num: int | None = None
    dim: int | None = None
    pred_dim: int | None = None
    width: int | None = None
    pretrained: str | None = None
    zero_init_residual: bool | None = None

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Model:
        return _same_names(cls, section)

    def factory_arguments(self) -> dict[str, Any]:
        """The keys the file gives, as keyword arguments of the model's factory."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}


# ---------------------------------------------------------------------------------------------
# Optimizer and LRScheduler (trainer.optim)

@dataclasses.dataclass(frozen=True)
class LRScheduler:
    """Optimizer.lr or the top-level LRScheduler section (trainer.optim.schedule reads it)."""

    name: str
    learning_rate: float
    decay_unit: str | None = None       # None: Optimizer.lr_decay_unit, else epoch
    eta_min: float = 0.0
    warmup_epoch: float = 0.0
    warmup_start_lr: float = 0.0
    warmup_prefix: bool = False
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> LRScheduler:
        return _same_names(cls, section, milestones=tuple(section.get("milestones", ())))


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """One Optimizer.param_groups entry: the parameters under a top-level sub-module `name`,
    at a fixed `lr` (None: they follow the schedule)."""

    name: str
    lr: float | None = None

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> ParamGroup:
        return _same_names(cls, section)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The Optimizer section. lr is its own schedule (else the top-level LRScheduler's); no
    param_groups puts every trainable parameter in one group on the schedule."""

    name: str
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay_unit: str | None = None
    lr: LRScheduler | None = None
    param_groups: tuple[ParamGroup, ...] = ()
    trust_coefficient: float = 0.001    # MomentumLARC/LARS
    clip: bool = False                  # MomentumLARC/LARS
    epsilon: float = 1e-8               # MomentumLARC/LARS
    use_nesterov: bool = False          # Momentum
    multi_precision: bool = False       # Momentum

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Optimizer:
        lr = section.get("lr")
        return _same_names(cls, section, lr=LRScheduler.of(lr) if lr else None,
                           param_groups=tuple(ParamGroup.of(g) for g in section.get("param_groups") or ()))


# ---------------------------------------------------------------------------------------------
# DataLoader (trainer.data)

@dataclasses.dataclass(frozen=True)
class Dataset:
    """DataLoader.<split>.dataset. `transform` is PASSL's list of `- OpName: {params}` entries,
    kept as the file gives it: trainer.data.transforms dispatches each entry by its op name."""

    name: str = "ImageFolder"
    root: str | None = None             # root, or PASSL's spelling image_root
    max_bad_fraction: float = 0.01
    transform: list[Any] | None = None  # transform, or PASSL's spelling transform_ops

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Dataset:
        return _same_names(cls, section, root=section.get("root") or section.get("image_root"),
                           transform=section.get("transform", section.get("transform_ops")))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """DataLoader.<split>.sampler: the batch per rank and the order of the samples."""

    batch_size: int = 1
    shuffle: bool = False
    drop_last: bool = False

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Sampler:
        return _same_names(cls, section)


@dataclasses.dataclass(frozen=True)
class Workers:
    """DataLoader.<split>.loader: the processes that decode and augment ahead of the step."""

    num_workers: int = 0
    prefetch_factor: int = 2

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> Workers:
        return _same_names(cls, section)


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """DataLoader.Train or DataLoader.Eval."""

    dataset: Dataset
    sampler: Sampler
    loader: Workers

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> DataSplit:
        return cls(dataset=Dataset.of(section.get("dataset") or {}),
                   sampler=Sampler.of(section.get("sampler") or {}),
                   loader=Workers.of(section.get("loader") or {}))


# ---------------------------------------------------------------------------------------------
# The linear probe's Loss and Metric sections (trainer.engine.linear_probe)

@dataclasses.dataclass(frozen=True)
class PerSplit:
    """Loss or Metric: PASSL's lists of `- Name: {params}` entries for Train and Eval, kept as
    the file gives them: the probe dispatches each entry by its name (CELoss, TopkAcc)."""

    train: list[Any] | None = None
    eval: list[Any] | None = None

    @classmethod
    def of(cls, section: Mapping[str, Any] | None) -> PerSplit:
        section = section or {}
        return cls(train=section.get("Train"), eval=section.get("Eval"))

    def of_split(self, split: str) -> list[Any] | None:
        """The entries of "Train" or "Eval" (the names the config and the error messages use)."""
        return self.train if split == "Train" else self.eval


# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
    """Every section the trainer reads. `global_` is the Global section (a Python keyword)."""

    global_: Global
    fp16: Fp16
    model: Model
    optimizer: Optimizer
    lr_scheduler: LRScheduler | None    # PASSL's linear-probe configs put the schedule here
    train_data: DataSplit | None        # DataLoader.Train
    eval_data: DataSplit | None         # DataLoader.Eval
    loss: PerSplit
    metric: PerSplit

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Config:
        """The views of a validated config (trainer.config.load_config's dict)."""
        data, lr = config["DataLoader"], config.get("LRScheduler")
        return cls(global_=Global.of(config), fp16=Fp16.of(config.get("FP16")),
                   model=Model.of(config["Model"]), optimizer=Optimizer.of(config["Optimizer"]),
                   lr_scheduler=LRScheduler.of(lr) if lr else None,
                   train_data=DataSplit.of(data["Train"]) if data.get("Train") else None,
                   eval_data=DataSplit.of(data["Eval"]) if data.get("Eval") else None,
                   loss=PerSplit.of(config.get("Loss")), metric=PerSplit.of(config.get("Metric")))
