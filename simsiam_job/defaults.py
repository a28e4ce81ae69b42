"""User defaults: the config file, SIMSIAM_JOB_* environment variables and ``--set KEY=VALUE``.

Precedence, highest first: command-line flags (``--set`` included), environment variables, the
config file, the built-in defaults. The config file (``$SIMSIAM_JOB_CONFIG``, else
``$XDG_CONFIG_HOME/simsiam-job/config.yaml``, else ``~/.config/simsiam-job/config.yaml``)::

    backend: kubernetes            # top-level defaults for submit/render flags
    image: registry.example.com/simsiam:1.0
    kubernetes:                    # one section per backend: that backend's Options fields
      namespace: ml-team
    slurm:
      partition: gpu

Environment: ``SIMSIAM_JOB_BACKEND``, ``SIMSIAM_JOB_IMAGE``, ... for the top-level keys and
``SIMSIAM_JOB_<BACKEND>_<FIELD>`` (e.g. ``SIMSIAM_JOB_SLURM_PARTITION``) for backend options.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simsiam_job.backends.base import BACKEND_NAMES
from simsiam_job.errors import UsageError
from simsiam_job.util import did_you_mean

# Top-level keys: defaults for the submit/render flags of the same name.
TOP_LEVEL_KEYS = ("backend", "image", "data", "output", "nodes", "gpus")
ENV_PREFIX = "SIMSIAM_JOB_"


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("SIMSIAM_JOB_CONFIG"):
        return Path(environ["SIMSIAM_JOB_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "simsiam-job" / "config.yaml"


def _closest(word: str, choices: Sequence[str]) -> str:
    close = did_you_mean(word, choices, cutoff=0.5)
    return f" (did you mean {close!r}?)" if close else f"; valid: {', '.join(choices) or 'none'}"


def load_user_config(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The config file as a dict ({} if there is none), its keys checked. A file named by
    SIMSIAM_JOB_CONFIG must exist (a typo there would silently drop every setting); /dev/null
    says "no settings"."""
    path = config_path(environ)
    if str(path) == os.devnull:     # SIMSIAM_JOB_CONFIG=/dev/null: no settings, on purpose
        return {}
    if not path.is_file():
        if environ.get("SIMSIAM_JOB_CONFIG"):
            raise UsageError(f"SIMSIAM_JOB_CONFIG names {path}, which "
                             + ("is not a regular file" if path.exists() else "does not exist"))
        return {}
    from trainer.config import ConfigError, read_yaml  # lazily: YAML is not needed for --help

    try:
        data = read_yaml(path)
    except ConfigError as err:
        raise UsageError(f"user config: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    valid = TOP_LEVEL_KEYS + BACKEND_NAMES
    for key, value in data.items():
        if key not in valid:
            raise UsageError(f"{path}: unknown setting {key!r}{_closest(str(key), valid)}")
        if key in BACKEND_NAMES and not isinstance(value, dict):
            raise UsageError(f"{path}: section {key!r} must be a mapping of option: value")
    return data


def top_level_default(key: str, user_config: Mapping[str, Any], environ: Mapping[str, str] = os.environ):
    """Env var over config file; None when neither sets ``key``."""
    env = environ.get(ENV_PREFIX + key.upper())
    if env not in (None, ""):
        return env
    return user_config.get(key)


# ---- backend options ---------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, tp: Any, what: str) -> Any:
    """Convert a string (from --set or the environment) or a YAML value to the field's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _convert(value, inner[0], what)
    if origin is typing.Literal:
        if value not in args:
            raise UsageError(f"{what}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"{what}: expected a comma-separated list, got {value!r}")
        return tuple(_convert(v.strip() if isinstance(v, str) else v, args[0], what)
                     for v in items if v != "")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise UsageError(f"{what}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise UsageError(f"{what}: expected a number, got {value!r}")
        kind = "an integer" if tp is int else "a finite number"
        try:
            number = tp(value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{what}: expected {kind}, got {value!r}") from None
        if (isinstance(value, float) and tp is int and number != value) or \
                (tp is float and not math.isfinite(number)):
            raise UsageError(f"{what}: expected {kind}, got {value!r}")  # 2.5 or .inf from the config file
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UsageError(f"{what}: expected a string, got {value!r}")
        return str(value)
    return value


def option_fields(options_cls: type) -> dict[str, tuple[Any, str]]:
    """field name -> (type, help) of a backend's Options dataclass."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: (hints[f.name], f.metadata.get("help", "")) for f in dataclasses.fields(options_cls)}


def resolve_options(
    backend: str, options_cls: type, sets: Sequence[str] = (), *,
    user_config: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ,
) -> Any:
    """Build ``options_cls`` from the config file section, the environment and ``--set KEY=VALUE``."""
    fields = option_fields(options_cls)
    names = list(fields)

    def check(key: str, source: str) -> str:
        name = key.strip().replace("-", "_").lower()
        if name not in fields:
            raise UsageError(f"unknown {backend} option {key!r} in {source}{_closest(name, names)}")
        return name

    raw: dict[str, tuple[Any, str]] = {}
    section = (user_config if user_config is not None else load_user_config(environ)).get(backend) or {}
    for key, value in section.items():
        raw[check(str(key), f"{config_path(environ)} [{backend}]")] = (
            value, f"{backend}.{key} in the config file")
    prefix = f"{ENV_PREFIX}{backend.upper()}_"
    for env_key, value in environ.items():
        if env_key.startswith(prefix):
            raw[check(env_key[len(prefix):], env_key)] = (value, env_key)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        raw[check(key, "--set")] = (value, f"--set {key.strip()}")
    values = {name: _convert(value, fields[name][0], what) for name, (value, what) in raw.items()}
    try:
        return options_cls(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{backend} options: {err}") from None
