"""The one YAML reader of both programs (trainer configs, the launcher's user config file, -o
values): a config must never make us hang or swallow memory. Paddle-free, like trainer.config.
"""
from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def _underflows(text: str, number: float) -> bool:
    """A literal such as 1e-400 that is not zero but that a float reads as 0.0."""
    return number == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]) is not None


class ConfigError(ValueError):
    """A bad config file, key or value; the message is one line meant for the user."""


class NotYAMLError(ConfigError):
    """Text that does not parse as YAML (an -o value may still be meant as a plain string)."""



MAX_YAML_BYTES = 1 << 20        # PASSL's largest configs are a few KB
MAX_ALIAS_EXPANSION = 10_000    # values that aliases (*name) may add: "billion laughs" files need millions


class _BudgetLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand it beyond the budget (the
    loader shares an anchored value, but every reader of the result walks each copy)."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    number = yaml.SafeLoader.construct_yaml_float(loader, node)
    if _underflows(node.value, number):
        raise ConfigError(f"{node.value} (line {node.start_mark.line + 1}) is too small for a float: it "
                          "would be read as 0.0")
    return number


_BudgetLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _check_expansion(root: yaml.Node | None) -> None:
    sizes: dict[int, int] = {}          # node id -> nodes in its expanded subtree
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to a value that contains it (a recursive alias)")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        sizes[key] = total
        if total - len(sizes) > MAX_ALIAS_EXPANSION:
            raise ConfigError(f"YAML aliases expand it beyond {MAX_ALIAS_EXPANSION} values "
                              "(refused: a config never needs that many)")
        return total

    if root is not None:
        size(root)


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """YAML keeps the last of two equal keys and drops the first without a word: refuse that."""
    seen: set[str] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":
            if key.value in seen:
                raise ConfigError(f"key '{key.value}' appears twice in one mapping "
                                  f"(line {key.start_mark.line + 1})")
            seen.add(key.value)


def safe_load(text: str, source: str = "value") -> Any:
    """yaml.safe_load within the budgets; ConfigError naming `source` and the line on failure."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_YAML_BYTES >> 20} MiB (refused: "
                          "a config is a few KB)")
    try:
        return yaml.load(text, Loader=_BudgetLoader)
    except ConfigError as e:
        raise ConfigError(f"cannot load {source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise NotYAMLError(f"cannot parse {source}{where}: {problem}") from None
    except (ValueError, OverflowError) as e:     # e.g. a date such as 2024-13-45
        raise NotYAMLError(f"cannot parse {source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse {source}: nested too deeply") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file through safe_load; ConfigError when it is missing, too large or unreadable."""
    path = Path(path)
    try:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)   # /proc files and growing files have no honest size
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_YAML_BYTES >> 20} MiB (refused: a config "
                              "is a few KB)")
        text = data.decode()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {path}: not UTF-8 text") from None
    return safe_load(text, str(path))


def dump(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (sections in their given order)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
