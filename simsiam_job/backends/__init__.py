"""Backends by name, from the explicit registry in base.py. Modules are imported lazily:
``simsiam-job --help`` or a local job never imports the kubernetes backend (nor, through it, the
kubernetes client)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from simsiam_job.backends.base import BACKEND_NAMES, REGISTRY, Backend, JobRef
from simsiam_job.errors import UsageError
from simsiam_job.util import did_you_mean


def backend_class(name: str) -> type[Backend]:
    """The class registered for backend ``name``; UsageError (with a suggestion) for another name."""
    if name not in REGISTRY:
        close = did_you_mean(name, BACKEND_NAMES)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise UsageError(f"unknown backend {name!r}{hint}; choose one of: {', '.join(BACKEND_NAMES)}")
    module_name, _, class_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UsageError(f"the {name} backend is not part of this installation") from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def options_class(name: str) -> type:
    """The backend's ``Options`` dataclass (every field has a default and a help text)."""
    return backend_class(name).options_class


def get_backend(name: str, options: Any = None) -> Backend:
    """An instance of backend ``name``, constructed with ``options`` (its defaults if None)."""
    return backend_class(name)(options)


def backend_for(ref: JobRef, options: Any = None, environ: Mapping[str, str] = os.environ) -> Backend:
    """The backend instance that holds ``ref`` (its options from the user's defaults unless given),
    pointed at where the backend recorded the job if it keeps a run index."""
    from simsiam_job import defaults

    cls = backend_class(ref.backend)
    if options is None:
        options = defaults.resolve_options(ref.backend, cls.options_class, environ=environ)
    return cls(cls.located_options(ref, options, environ))
