"""PASSL-schema YAML configs: load, apply `-o Dotted.Key=VALUE` overrides, validate.

The schema and its checks are in trainer.config_schema, the safe YAML reader in trainer.config_yaml.

A config written for PASSL's SimSiam must load unchanged, so the schema (trainer.config_schema)
lists PASSL's keys, including the ones this trainer does not use. Anything else is an error that
names the key and the closest valid one. This module must not import paddle: the launcher validates
configs with it.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.config_schema import (  # noqa: F401
    LARGEST_DEVICE_MEMORY,
    LARGEST_HOST_MEMORY,
    MODEL_NAMES,
    _did_you_mean,
    validate,
)
from trainer.config_yaml import MAX_YAML_BYTES, ConfigError, NotYAMLError, dump, read_yaml, safe_load  # noqa: F401
from trainer.sections import Config, Model

SHIPPED_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def shipped_config(name: str) -> Path:
    """Path of a config shipped in trainer/configs (name with or without .yaml)."""
    path = SHIPPED_CONFIGS_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if not path.is_file():
        names = sorted(p.stem for p in SHIPPED_CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"no shipped config named {name!r}{_did_you_mean(name, names)}")
    return path



# ---------------------------------------------------------------------------------------------
# The batch as a whole against a machine's memory: lower bounds only (what cannot fit never will)

_SIZED_OPS = ("RandomResizedCrop", "RandCropImage", "CenterCrop", "CenterCropImage", "Resize", "ResizeImage")


def _view_pixels(ops: list[Any]) -> int | None:
    """Pixels of one view at least: the last op that sets a size decides (a Resize to one number
    sets the shorter side, so the view has at least size x size); None when no op sets one."""
    pixels: int | None = None
    for entry in ops:
        (name, params), = entry.items()
        params = params or {}
        size = params.get("resize_short") or params.get("size") if name in _SIZED_OPS else None
        if size is not None:
            pixels = size * size if isinstance(size, int) else size[0] * size[1]
    return pixels


def _sample_pixels(ops: list[Any]) -> int | None:
    """Pixels of all the views one image gives, at least (None when a view's size is unknown)."""
    for entry in ops:
        (name, params), = entry.items()
        if name == "TwoViewsTransform":
            views = [_view_pixels(params["base_transform1"]), _view_pixels(params["base_transform2"])]
            first, second = views
            return None if first is None or second is None else first + second
    return _view_pixels(ops)


def _first_layer_bytes(model: Model) -> float:
    """Per input pixel, the first convolution's float32 output alone (what any forward pass holds):
    `width` channels at the stem's stride, 2 in ImageNet ResNets, 1 in the CIFAR one."""
    if model.name.startswith("pixels"):
        return 4.0                          # the pixels themselves, as float32
    return float((model.width or 64) * 4 / (1 if "cifar" in model.name else 4))


def check_memory(cfg: Mapping[str, Any], *, host_memory: int, device_memory: int | None, processes: int,
                 machine: str) -> None:
    """ConfigError unless the batches fit `machine`: each of the `processes` ranks on it holds its
    loaders' batch buffers (num_workers x prefetch_factor + 1 uint8 batches, one without workers)
    in host memory, and its model's first-layer output for the largest batch on the device
    (`device_memory` None: in host memory too, as on CPUs)."""
    config = Config.of(cfg)
    host: float = 0
    device, largest = 0.0, ""
    for split, data in (("Train", config.train_data), ("Eval", config.eval_data)):
        pixels = None if data is None else _sample_pixels(data.dataset.transform or [])
        if data is None or pixels is None:
            continue
        batch, workers = data.sampler.batch_size, data.loader.num_workers
        buffers = workers * data.loader.prefetch_factor + 1 if workers else 1
        host += buffers * batch * pixels * 3
        layer = batch * pixels * _first_layer_bytes(config.model)
        if layer > device:
            device, largest = layer, f"DataLoader.{split}'s batch of {batch} x {pixels:,} pixels"
    gib = 1 << 30
    if device_memory is not None and device > device_memory:
        raise ConfigError(f"{largest} needs at least {device / gib:,.1f} GiB of GPU memory for the model's "
                          f"first layer alone, and a GPU has at most {device_memory / gib:,.0f} GiB; "
                          "lower the batch size or the image size (docs/trainer.md, Bounds)")
    if device_memory is None:
        host += device
    if host * processes > host_memory:
        raise ConfigError(f"the data loaders' batches{' and the model' if device_memory is None else ''} "
                          f"need at least {host * processes / gib:,.1f} GiB of memory for {processes} "
                          f"process(es), and {machine} has {host_memory / gib:,.1f} GiB; lower the batch "
                          "size, the image size or loader.num_workers (docs/trainer.md, Bounds)")


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or the lowest limit of the cgroups it
    runs in (a pod's memory limit, a Slurm job's --mem; cgroup v2 or v1's memory controller)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return memory
    for line in lines:          # "0::/path" (v2), "4:memory:/path" (v1)
        _, controllers, own = line.split(":", 2)
        if controllers not in ("", "memory"):
            continue
        root = Path("/sys/fs/cgroup", "memory" if controllers else "")
        name = "memory.limit_in_bytes" if controllers else "memory.max"
        for group in (root / own.strip("/"), *(root / own.strip("/")).parents):
            try:
                limit = (group / name).read_text().strip()
            except OSError:
                limit = ""
            if limit.isdigit():
                memory = min(memory, int(limit))
            if group == root:
                break
    return memory


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `Dotted.Key=VALUE` overrides (VALUE parsed as a YAML scalar or list) to a copy."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {item!r} (expected Dotted.Key=VALUE)")
        try:
            value = safe_load(text, f"-o {key.strip()}") if text.strip() else None
        except NotYAMLError:
            value = text            # not YAML: keep the raw string (e.g. a path with a colon)
        parts = key.strip().split(".")
        node: Any = cfg
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth + 1])
            step: int | str = part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"bad override key '{key}': '{where}' is not an index of "
                                      f"a {len(node)}-item list")
                step = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"bad override key '{key}': '{'.'.join(parts[:depth])}' "
                                  "is not a section")
            if last:
                node[step] = value
            else:
                if isinstance(node, dict) and node.get(step) is None:
                    node[step] = {}
                node = node[step]
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a PASSL-schema YAML file, apply overrides, validate; ConfigError on any problem."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} is not a YAML mapping of sections")
    return validate(apply_overrides(raw, overrides))
