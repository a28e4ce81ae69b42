"""Backends by name. Modules are imported lazily: ``simsiam-job --help`` or a local job never
imports the kubernetes backend (nor, through it, the kubernetes client)."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from simsiam_job.backends.base import BACKEND_NAMES, Backend
from simsiam_job.errors import UsageError


def _module(name: str) -> ModuleType:
    if name not in BACKEND_NAMES:
        close = difflib.get_close_matches(name, BACKEND_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown backend {name!r}{hint}; choose one of: {', '.join(BACKEND_NAMES)}")
    module_name = f"simsiam_job.backends.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UsageError(f"the {name} backend is not part of this installation") from None


def options_class(name: str) -> type:
    """The backend's ``Options`` dataclass (every field has a default and a help text)."""
    return _module(name).Options


def get_backend(name: str, options: Any = None) -> Backend:
    """An instance of backend ``name``, constructed with ``options`` (its defaults if None)."""
    module = _module(name)
    for obj in vars(module).values():
        if isinstance(obj, type) and getattr(obj, "name", None) == name and hasattr(obj, "submit"):
            return obj(options if options is not None else module.Options())
    raise RuntimeError(f"simsiam_job.backends.{name} defines no backend class with name = {name!r}")
