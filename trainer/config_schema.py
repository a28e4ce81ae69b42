"""The PASSL schema: every section, key and value a config may hold, and `validate`, which checks
a config against it. Paddle-free, like trainer.config.

A config written for PASSL's SimSiam must load unchanged, so the schema lists PASSL's keys,
including the ones this trainer does not use. Anything else is an error that names the key and the
closest valid one.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from trainer.config_yaml import ConfigError, _underflows

# ---------------------------------------------------------------------------------------------
# Value checkers: each takes (value, dotted_path) and returns the (possibly normalised) value.

Check = Callable[[Any, str], Any]


def _bad(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"bad value for '{path}': {value!r} (expected {expected})")


def _any(value: Any, path: str) -> Any:
    return value


def _str(*choices: str) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, str) or (choices and value not in choices):
            raise _bad(path, value, "one of: " + ", ".join(choices) if choices else "a string")
        return value
    return check


def _bool(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise _bad(path, value, "True or False")
    return value


# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) or a quoted "0.1" as a string; PASSL turns
# such strings into numbers, so a number the schema wants may arrive as text.
INT_LIMIT = 2**63 - 1
_INT_TEXT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_FLOAT_TEXT = re.compile(r"^[-+]?([0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)([eE][-+]?[0-9]+)?$")


def _number(value: Any, pattern: re.Pattern[str], kind: type) -> Any:
    """`value` as a `kind` when it is one or is a string spelling one; None otherwise."""
    if isinstance(value, str) and pattern.match(value.strip()):
        try:
            value = kind(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return None
    return value


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        number = _number(value, _INT_TEXT, int)
        if number is not None and not -INT_LIMIT <= number <= INT_LIMIT:
            number = None           # beyond what paddle's int64 holds: a typo, not a setting
        if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
            raise _bad(path, value, _range("an integer", lo, hi))
        return number
    return check


def _float(lo: float | None = None, hi: float | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        number = _number(value, _FLOAT_TEXT, float)
        if number is None:
            raise _bad(path, value, _range("a number", lo, hi))
        if isinstance(value, str) and _underflows(value, number):
            raise _bad(path, value, "a number a float can hold: this one would be read as 0.0")
        try:
            number = float(number)
        except OverflowError:       # an integer too large for a float
            number = math.inf
        # YAML's .nan and .inf are numbers, but never a learning rate, a decay or a probability.
        if not math.isfinite(number):
            raise _bad(path, value, _range("a finite number", lo, hi))
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise _bad(path, value, _range("a number", lo, hi))
        return number
    return check


def _range(what: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{what} in [{lo}, {hi}]"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what


def _optional(check: Check) -> Check:
    def wrapped(value: Any, path: str) -> Any:
        return None if value is None else check(value, path)
    return wrapped


def _none_or(check: Check) -> Check:
    """Like _optional, also accepting the string "None" (Python spelling in PASSL's YAML files)."""
    def wrapped(value: Any, path: str) -> Any:
        return None if value in (None, "None") else check(value, path)
    return wrapped


def _list_of(check: Check, length: int | None = None) -> Check:
    def wrapped(value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
            expected = f"a list of {length} items" if length else "a list"
            raise _bad(path, value, expected)
        return [check(v, f"{path}.{i}") for i, v in enumerate(value)]
    return wrapped


# ---------------------------------------------------------------------------------------------
# Upper bounds of sizes and counts: what one machine can hold (docs/trainer.md, "Bounds"). Each
# value has a fixed ceiling here; check_memory() then bounds the batch as a whole, at render time
# against the largest machine and at start against the machine the trainer runs on.

LARGEST_HOST_MEMORY = 4 << 40       # bytes: twice the memory of today's largest 8-GPU servers
LARGEST_DEVICE_MEMORY = 192 << 30   # bytes: the largest GPU's memory (192 GB)
MAX_IMAGE_SIDE = 65535              # pixels: JPEG's limit; no image file is larger
MAX_BATCH = 1 << 20                 # per rank: 2^20 two-view 32x32 images are 6 GiB of pixels alone
MAX_PROCESSES = 1024                # loader workers, CPU threads per rank: more than any machine's cores
MAX_FEATURE_DIM = 1 << 16           # Model.dim, pred_dim: a 65536^2 float32 layer, its gradient and
                                    # momentum are 48 GiB
MAX_CLASSES = 1 << 20               # a 2048 x 2^20 float32 classifier is 8 GiB
MAX_WIDTH = 1024                    # ResNet width: 16x the standard 64, ~3e9 parameters (a ResNet-18)
MAX_EPOCHS = 1_000_000


def _size(value: Any, path: str) -> Any:
    if isinstance(value, (list, tuple)):
        return _list_of(_int(1, MAX_IMAGE_SIDE), 2)(value, path)
    return _int(1, MAX_IMAGE_SIDE)(value, path)


class Section:
    """A mapping with a fixed set of keys; `defaults` are filled in when absent."""

    def __init__(self, keys: Mapping[str, Check], defaults: Mapping[str, Any] | None = None,
                 required: Sequence[str] = ()):
        self.keys = dict(keys)
        self.defaults = dict(defaults or {})
        self.required = tuple(required)

    def __call__(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise _bad(path, value, "a mapping of keys")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in self.keys:
                raise _unknown_key(path, str(key), self.keys)
            out[key] = self.keys[key](item, _join(path, key))
        for key, default in self.defaults.items():
            out.setdefault(key, copy.deepcopy(default))
        for key in self.required:
            if out.get(key) is None:
                raise ConfigError(f"missing required key '{_join(path, key)}'")
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if not close:
        close = [c for c in candidates if c.lower() == word.lower()]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key(path: str, key: str, valid: Mapping[str, Any]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5) or \
        [v for v in valid if v.lower() == key.lower()]
    hint = f" (did you mean '{_join(path, close[0])}'?)" if close else \
        f" (valid keys: {', '.join(sorted(valid))})"
    return ConfigError(f"unknown key '{_join(path, key)}'{hint}")


class OpList:
    """PASSL's list of ops by name: `- OpName: {param: value}` (params may be empty)."""

    def __init__(self, ops: Mapping[str, Section]):
        self.ops = ops

    def __call__(self, value: Any, path: str) -> list[dict[str, Any]]:
        if not isinstance(value, (list, tuple)):
            raise _bad(path, value, "a list of '- OpName: {...}' entries")
        out: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            where = f"{path}.{i}"
            if isinstance(entry, str):          # bare op name, e.g. "- ToTensor"
                entry = {entry: None}
            if not isinstance(entry, Mapping) or len(entry) != 1:
                raise _bad(where, entry, "one '- OpName: {...}' entry")
            (name, params), = entry.items()
            if name not in self.ops:
                raise ConfigError(f"unknown op '{name}' at '{where}'{_did_you_mean(name, self.ops)}")
            out.append({name: self.ops[name](params, f"{where}.{name}")})
        return out


# ---------------------------------------------------------------------------------------------
# The schema. Keys marked "PASSL, unused" are accepted so PASSL configs load unchanged.

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "lanczos", "hamming", "area")

_SIMPLE_OPS: dict[str, Section] = {
    "RandomResizedCrop": Section({"size": _size, "scale": _list_of(_float(0, 1), 2),
                                  "ratio": _list_of(_float(0), 2),
                                  "interpolation": _str(*INTERPOLATIONS)}),
    "ColorJitter": Section({"p": _float(0, 1), "brightness": _float(0), "contrast": _float(0),
                            "saturation": _float(0), "hue": _float(0, 0.5)}),
    "RandomGrayscale": Section({"p": _float(0, 1)}),
    "SimCLRGaussianBlur": Section({"p": _float(0, 1), "sigma": _list_of(_float(0), 2)}),
    "RandomHorizontalFlip": Section({"p": _float(0, 1), "prob": _float(0, 1)}),
    "ToTensor": Section({"data_format": _str("CHW", "HWC")}),
    "Normalize": Section({"mean": _list_of(_float()), "std": _list_of(_float(0)),
                          "data_format": _str("CHW", "HWC")}),
    "Resize": Section({"size": _size, "interpolation": _str(*INTERPOLATIONS)}),
    "CenterCrop": Section({"size": _size}),
    # PASSL's classification-style op names (its linear-probe configs use them).
    "DecodeImage": Section({"to_rgb": _bool, "channel_first": _bool, "to_np": _bool}),
    "ResizeImage": Section({"size": _size, "resize_short": _int(1, MAX_IMAGE_SIDE),
                            "interpolation": _str(*INTERPOLATIONS), "backend": _str("cv2", "pil")}),
    "CenterCropImage": Section({"size": _size}),
    "RandCropImage": Section({"size": _size, "scale": _list_of(_float(0, 1), 2),
                              "ratio": _list_of(_float(0), 2),
                              "interpolation": _str(*INTERPOLATIONS), "backend": _str("cv2", "pil")}),
    "RandFlipImage": Section({"flip_code": _int(-1, 1)}),
    "NormalizeImage": Section({"scale": _any, "mean": _list_of(_float()),
                               "std": _list_of(_float(0)), "order": _str("hwc", "chw", ""),
                               "output_fp16": _bool, "channel_num": _int(3, 4)}),
    "ToCHWImage": Section({}),
}
TRANSFORM_OPS: dict[str, Section] = dict(_SIMPLE_OPS)
TRANSFORM_OPS["TwoViewsTransform"] = Section(
    {"base_transform1": OpList(_SIMPLE_OPS), "base_transform2": OpList(_SIMPLE_OPS)},
    required=("base_transform1", "base_transform2"))

DATASET_NAMES = ("ImageFolder",)

# Model.name: what trainer/models registers (a test keeps the two equal). Listed here so that the
# launcher, which never imports paddle, refuses an unknown model before a job is scheduled.
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "cifar_resnet18")
MODEL_NAMES = (*(f"simsiam_{b}_pretrain" for b in BACKBONE_NAMES),
               *(f"simsiam_{b}_linearprobe" for b in BACKBONE_NAMES),
               *(f"{b}_linearprobe" for b in BACKBONE_NAMES), "pixels_linearprobe")


def _model_name(value: Any, path: str) -> Any:
    if not isinstance(value, str) or value not in MODEL_NAMES:
        close = difflib.get_close_matches(str(value), MODEL_NAMES, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(MODEL_NAMES)}"
        raise ConfigError(f"bad value for '{path}': {value!r} ({hint})")
    return value

_dataset = Section({
    "name": _str(*DATASET_NAMES),
    "root": _optional(_str()),
    "image_root": _optional(_str()),            # PASSL's ImageNetDataset spelling of root
    "cls_label_path": _optional(_str()),        # PASSL, unused (labels come from class folders)
    "transform": OpList(TRANSFORM_OPS),
    "transform_ops": OpList(TRANSFORM_OPS),
    "max_bad_fraction": _float(0, 1),
    "delimiter": _str(),                        # PASSL, unused
    "multi_label": _bool,                       # PASSL, unused
    "class_num": _int(1, MAX_CLASSES),          # PASSL, unused
}, required=("name",))

_sampler = Section({
    "name": _str("DistributedBatchSampler", "BatchSampler"),
    "batch_size": _int(1, MAX_BATCH),
    "drop_last": _bool,
    "shuffle": _bool,
}, required=("batch_size",))

_loader = Section({
    "num_workers": _int(0, MAX_PROCESSES),
    "use_shared_memory": _bool,
    "prefetch_factor": _int(1, MAX_PROCESSES),
    "collate_fn": _any,                         # PASSL, unused
})

_data_split = Section({"dataset": _dataset, "sampler": _sampler, "loader": _loader},
                      required=("dataset", "sampler"))

_scheduler = Section({
    "name": _str("TimmCosine", "Constant", "MultiStepDecay"),
    "learning_rate": _float(0),
    "decay_unit": _str("epoch", "step"),
    "eta_min": _float(0),
    "warmup_epoch": _float(0),
    "warmup_start_lr": _float(0),
    "warmup_prefix": _bool,
    "last_epoch": _int(),
    "T_max": _optional(_int(1)),
    "milestones": _list_of(_int(0)),
    "gamma": _float(0),
    "by_epoch": _bool,                          # PASSL, unused (decay_unit says it)
}, required=("name", "learning_rate"))

_param_group = Section({
    "name": _str(),
    "lr": _float(0),
    "weight_decay": _float(0),
    "no_weight_decay_name": _any,
}, required=("name",))

_optimizer = Section({
    "name": _str("Momentum", "MomentumLARC", "LARS", "SGD"),
    "momentum": _float(0, 1),
    "weight_decay": _float(0),
    "lr_decay_unit": _str("epoch", "step"),
    "lr": _scheduler,
    "param_groups": _list_of(_param_group),
    "trust_coefficient": _float(0),             # MomentumLARC
    "clip": _bool,                              # MomentumLARC
    "epsilon": _float(0),
    "exclude_from_weight_decay": _list_of(_str()),
    "no_weight_decay_name": _any,               # PASSL, unused
    "one_dim_param_no_weight_decay": _bool,     # PASSL, unused
    "use_nesterov": _bool,
    "multi_precision": _bool,
    "grad_clip": _any,                          # PASSL, unused
    "tensor_fusion": _bool,                     # PASSL, unused
}, required=("name",))

# [{CELoss: {weight: 1.0}}]; the linear-probe loop interprets it
_loss_list = _list_of(_any)

SCHEMA = Section({
    "Global": Section({
        "task_type": _str("ContrastiveLearning", "Classification", "Smoke"),
        "train_loop": _str(),                   # PASSL, unused (the task type picks the loop)
        "validate_loop": _str(),                # PASSL, unused
        "checkpoint": _optional(_str()),
        "auto_resume": _bool,
        "pretrained_model": _optional(_str()),
        "finetune": _bool,
        "output_dir": _str(),
        "device": _str("gpu", "cpu"),
        "save_interval": _int(1),
        "save_interval_steps": _int(0),        # ours: also save every N steps (0 = off)
        "save_interval_minutes": _float(0),    # ours: also save every N minutes (0 = off)
        "max_num_latest_checkpoint": _int(0),
        "eval_during_train": _bool,
        "eval_interval": _int(1),
        "eval_unit": _str("epoch", "step"),
        "accum_steps": _int(1),
        "epochs": _int(1, MAX_EPOCHS),
        "max_train_step": _optional(_int(1)),  # stop after this many global steps (smoke runs)
        "print_batch_step": _int(1),
        "use_visualdl": _bool,
        "seed": _optional(_int(0)),
        "num_threads": _optional(_int(1, MAX_PROCESSES)),  # ours: CPU threads; None = from cores available
        "collapse_warn_fraction": _float(0, 1),  # ours: warn when z_std < this x 1/sqrt(dim) ...
        "collapse_patience": _int(1),            # ... for this many consecutive logs
        "image_shape": _list_of(_int(1)),       # PASSL, unused
        "save_inference_dir": _str(),           # PASSL, unused
        "to_static": _bool,                     # compile the train step with paddle.jit.to_static
        "peer_timeout_seconds": _float(0),      # ours: a rank silent this long is lost (0 = no watchdog)
        "max_num_checkpoint": _int(0),          # PASSL, unused
    }, defaults={
        "task_type": "ContrastiveLearning", "checkpoint": None, "auto_resume": False,
        "pretrained_model": None, "output_dir": "./output", "device": "gpu",
        "save_interval": 1, "save_interval_steps": 0, "save_interval_minutes": 0.0,
        "max_num_latest_checkpoint": 0, "eval_during_train": False, "eval_interval": 1,
        "eval_unit": "epoch", "accum_steps": 1, "epochs": 100, "max_train_step": None,
        "print_batch_step": 10, "use_visualdl": False, "seed": 0, "num_threads": None,
        "collapse_warn_fraction": 0.2, "collapse_patience": 3, "to_static": False,
        "peer_timeout_seconds": 30.0,
    }),
    "FP16": Section({
        "level": _str("O0", "O1", "O2"),
        "dtype": _str("float16", "bfloat16"),
        "GradScaler": Section({"init_loss_scaling": _float(0), "incr_every_n_steps": _int(1),
                               "decr_every_n_nan_or_inf": _int(1), "incr_ratio": _float(1),
                               "decr_ratio": _float(0, 1), "use_dynamic_loss_scaling": _bool}),
        "fp16_custom_white_list": _list_of(_str()),
        "fp16_custom_black_list": _list_of(_str()),
    }, defaults={"level": "O0", "dtype": "float16"}),
    "DistributedStrategy": Section({
        "data_parallel": _bool,
        "data_sharding": _bool,                 # PASSL, unused
        "tensor_parallel": _any,                # PASSL, unused
        "sharding": _any,                       # PASSL, unused
        "recompute": _any,                      # PASSL, unused
    }),
    "Model": Section({
        "name": _model_name,
        "class_num": _int(1, MAX_CLASSES),
        "dim": _int(1, MAX_FEATURE_DIM),
        "pred_dim": _int(1, MAX_FEATURE_DIM),
        "width": _int(1, MAX_WIDTH),
        "pretrained": _optional(_str()),
        "zero_init_residual": _bool,
    }, required=("name",)),
    "Optimizer": _optimizer,
    "LRScheduler": _scheduler,
    "Loss": Section({"Train": _loss_list, "Eval": _loss_list}),
    "Metric": Section({"Train": _list_of(_any), "Eval": _list_of(_any)}),
    # PASSL writes the batch dimension as `None`, which YAML reads as the string "None".
    "Export": Section({"export_type": _str(), "input_shape": _list_of(_none_or(_int(1)))}),
    "DataLoader": Section({"Train": _data_split, "Eval": _data_split}),
    "Infer": _any,                              # PASSL, unused
})


# ---------------------------------------------------------------------------------------------

def validate(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key and value; return a new dict with Global/FP16 defaults filled in."""
    if isinstance(cfg, Mapping) and "Global" not in cfg and ("epochs" in cfg or "model" in cfg):
        raise ConfigError("this looks like a PASSL 1.x config (top-level 'epochs'/'model'); "
                          "simsiam-train reads PASSL 2.x configs (sections Global, Model, Optimizer, "
                          "DataLoader), e.g. tasks/ssl/simsiam/configs/ in PASSL")
    out = SCHEMA(cfg, "")
    for section in ("Model", "Optimizer", "DataLoader"):
        if section not in out:
            raise ConfigError(f"missing required section '{section}'")
    if out["Global"]["task_type"] == "ContrastiveLearning" and "Train" not in out["DataLoader"]:
        raise ConfigError("missing required section 'DataLoader.Train'")
    return out
