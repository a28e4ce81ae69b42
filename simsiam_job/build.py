"""Build the one JobSpec from command-line flags and user defaults, validating everything once.

The trainer config is checked with the trainer's own (paddle-free) config module, so a typo in a
key fails here, with the closest valid key, before anything reaches a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from simsiam_job import defaults
from simsiam_job.backends import backend_class, options_class
from simsiam_job.backends.base import JobRef, State
from simsiam_job.errors import UsageError
from simsiam_job.spec import JobSpec, Phase, validate_name
from trainer.contract import PHASE_TASKS, reserved_env

# The shipped recipe each phase runs when no -c is given (trainer/configs/).
DEFAULT_CONFIGS = {
    Phase.PRETRAIN: "simsiam_resnet50_pt_in1k_1n8c_dp_fp32",
    Phase.LINEAR_PROBE: "simsiam_resnet50_lp_in1k_1n8c_dp_fp32",
    Phase.SMOKE: "simsiam_smoke_gpu",
}
# ... and where --gpus 0 (CPU) needs a smaller one to finish in minutes.
CPU_DEFAULT_CONFIGS = {Phase.SMOKE: "simsiam_smoke_cpu"}
DEFAULT_IMAGE = "ghcr.io/simsiam-job/simsiam:0.1.0"
MAX_GPUS_PER_NODE = 16
MAX_NODES = 4096
# A registry reference, or an image file for Slurm's containers (/images/simsiam.sif): no spaces or
# control characters, and no leading '-' that a command line would read as an option.
_IMAGE = re.compile(r"^[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]{0,1023}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OVERRIDE_KEY = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
# Config keys every backend sets on the trainer's command line (simsiam_job/command.py), which
# would silently win over an -o of the same key: the flag that sets each one instead.
LAUNCHER_KEYS = {
    "Global.output_dir": "--output (the job writes LOCATION/<job name>/)",
    "Global.device": "--gpus (0 runs on CPU)",
    "Global.auto_resume": "no flag: jobs always resume from their newest checkpoint",
}
DATA_KEYS = {"DataLoader.Train.dataset.root": "train", "DataLoader.Eval.dataset.root": "val"}


def generated_name(phase: Phase) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"simsiam-{phase.value}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


@dataclasses.dataclass
class Request:
    """What the user typed (None = not given: the user defaults or built-ins apply)."""

    phase: str
    backend: str | None = None
    nodes: int | None = None
    gpus: int | None = None
    procs: int = 1
    config: str | None = None
    overrides: Sequence[str] = ()
    image: str | None = None
    name: str | None = None
    data: str | None = None
    output: str | None = None
    from_ref: str | None = None
    env: Sequence[str] = ()
    env_secrets: Sequence[str] = ()
    sets: Sequence[str] = ()


def _int_default(key: str, given: int | None, user: Mapping[str, Any], fallback: int,
                 environ: Mapping[str, str]) -> int:
    if given is not None:
        return given
    value = defaults.top_level_default(key, user, environ)
    if value is None:
        return fallback
    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("+-").isdigit()):
        raise UsageError(f"default {key} from the environment or config file is not an integer: {value!r}")
    return int(text)


def _check_overrides(overrides: Sequence[str], data: str | None) -> None:
    for item in overrides:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if not sep or not _OVERRIDE_KEY.match(key):
            raise UsageError(f"malformed -o {item!r}: expected Dotted.Key=VALUE, e.g. -o Global.epochs=10")
        if any(c in item for c in "\n\r\0"):
            # A YAML plain scalar would fold the line break silently: say how to keep it instead.
            raise UsageError(f"-o {key}: the value contains a line break or NUL; write a "
                             'YAML string to keep it, e.g. -o Key="line 1\\nline 2"')
        for owned, flag in LAUNCHER_KEYS.items():
            if owned == key or owned.startswith(key + "."):
                raise UsageError(f"-o {key}: the launcher sets {owned}; use {flag}")
        if data is not None and key in DATA_KEYS:
            raise UsageError(f"-o {key}: the data location {data} sets it (to {data}/{DATA_KEYS[key]}); "
                             "give one or the other")


def _image(image: str) -> str:
    if not _IMAGE.match(image):
        raise UsageError(f"--image {image!r} is not an image reference "
                         "(e.g. registry.example.com/simsiam:1.0, "
                         "or an image file; no spaces, control characters or leading '-')")
    return image


def _env_pairs(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise UsageError(f"malformed --env {item!r}: expected NAME=VALUE with NAME a valid variable name")
        _not_reserved("--env", name)
        if "\0" in value:
            raise UsageError(f"--env {name}: the value contains a NUL byte")
        pairs.append((name, value))
    return tuple(pairs)


def _not_reserved(flag: str, name: str) -> None:
    if reserved_env(name):
        raise UsageError(f"{flag} {name}: {name} is set by simsiam-job, paddle's launcher or the cluster "
                         "for every trainer process and cannot be given (reserved names: docs/launcher.md)")


def _env_secrets(items: Sequence[str], backend: str, env_names: set[str]) -> tuple[tuple[str, str], ...]:
    """``--env-secret NAME=REF`` -> (NAME, REF), checked for the backend: SECRET/KEY on Kubernetes,
    else a file that only the user can read (its path is kept, never its content)."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not _ENV_NAME.match(name) or not ref:
            raise UsageError(f"malformed --env-secret {item!r}: expected NAME=SECRET/KEY (kubernetes) "
                             "or NAME=FILE (slurm, local)")
        _not_reserved("--env-secret", name)
        if name in env_names or name in (n for n, _ in pairs):
            raise UsageError(f"--env-secret {name}: {name} is set twice (by --env or --env-secret)")
        pairs.append((name, backend_class(backend).secret_reference(name, ref)))
    return tuple(pairs)


def build_spec(req: Request, *, check_from: bool = True, environ: Mapping[str, str] = os.environ) -> JobSpec:
    """Validate ``req`` and return the frozen JobSpec. ``check_from`` asks the pretrain job's
    backend whether it finished (submit does; render stays pure and only computes the path)."""
    try:
        phase = Phase(req.phase)
    except ValueError:
        raise UsageError(f"unknown phase {req.phase!r}; choose "
                         f"{', '.join(p.value for p in Phase)}") from None
    user = defaults.load_user_config(environ)
    backend = req.backend or defaults.top_level_default("backend", user, environ) or "local"
    options = defaults.resolve_options(backend, options_class(backend), req.sets,
                                       user_config=user, environ=environ)

    nodes = _int_default("nodes", req.nodes, user, 1, environ)
    gpus = _int_default("gpus", req.gpus, user, 0, environ)
    _check_size(nodes, gpus, req.procs)
    name = validate_name(req.name) if req.name is not None else generated_name(phase)
    overrides = list(req.overrides)
    data = req.data or defaults.top_level_default("data", user, environ)
    # Synthetic images: a default data location does not apply, a given one is a mistake.
    if phase is Phase.SMOKE:
        if req.data is not None:
            raise UsageError(f"--data {req.data}: the smoke phase trains on synthetic images and reads no "
                             "data set; leave --data out")
        data = None
    # A backend's default data location (Kubernetes' data_pvc) sets the roots as --data does.
    _check_overrides(overrides, data or backend_class(backend).default_data(options))
    if req.from_ref is not None:
        overrides.append(_pretrained_override(req, phase, backend, options, user, environ, check_from))
    config_path, config = _checked_config(req, phase, gpus, overrides)

    from trainer.config import dump

    env = _env_pairs(req.env)
    env_secrets = _env_secrets(req.env_secrets, backend, {n for n, _ in env})
    return JobSpec(
        name=name, phase=phase, backend=backend, nodes=nodes, gpus=gpus,
        image=_image(req.image or defaults.top_level_default("image", user, environ) or DEFAULT_IMAGE),
        config_source=config_path, config=config, config_yaml=dump(config),
        data=data,
        output=req.output or defaults.top_level_default("output", user, environ),
        from_ref=req.from_ref, env=env, env_secrets=env_secrets, options=options, procs_per_node=req.procs,
    )


def _check_size(nodes: int, gpus: int, procs: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be between 1 and {MAX_NODES}, got {nodes}")
    if not 0 <= gpus <= MAX_GPUS_PER_NODE:
        raise UsageError(f"--gpus is per node and must be between 0 (CPU) and {MAX_GPUS_PER_NODE}, "
                         f"got {gpus}")
    if not 1 <= procs <= 256:
        raise UsageError(f"--procs must be between 1 and 256, got {procs}")
    if procs != 1 and gpus > 0:
        raise UsageError("--procs sets CPU processes per node; with --gpus G each node runs G processes")


def _pretrained_override(req: Request, phase: Phase, backend: str, options: Any, user: dict[str, Any],
                         environ: Mapping[str, str], check_from: bool) -> str:
    """``Global.pretrained_model=...``: the encoder of the pretrain job ``--from`` names."""
    if phase is not Phase.LINEAR_PROBE:
        raise UsageError("--from is for linear-probe: it names the pretrain job whose encoder to probe")
    ref = JobRef.parse(req.from_ref)
    source_options = options if ref.backend == backend else defaults.resolve_options(
        ref.backend, options_class(ref.backend), (), user_config=user, environ=environ)
    source_class = backend_class(ref.backend)
    source = source_class(source_class.located_options(ref, source_options, environ))
    pretrained = _pretrained_path(ref, source, check_from)
    return "Global.pretrained_model=" + json.dumps(pretrained)


def _checked_config(req: Request, phase: Phase, gpus: int,
                    overrides: list[str]) -> tuple[str, dict[str, Any]]:
    """The config file (given or shipped) with the overrides, checked: it loads, its batches fit the
    largest machine, and its task is the phase's. Returns its path and the resolved config."""
    from trainer.config import (
        LARGEST_DEVICE_MEMORY,
        LARGEST_HOST_MEMORY,
        ConfigError,
        check_memory,
        load_config,
        shipped_config,
    )
    from trainer.sections import Global

    try:
        default = (gpus == 0 and CPU_DEFAULT_CONFIGS.get(phase)) or DEFAULT_CONFIGS[phase]
        config_path = req.config if req.config is not None else str(shipped_config(default))
        config = load_config(config_path, overrides)
        # Where the job runs is not known here: its batches must fit the largest machine (the
        # trainer checks its own machine when it starts).
        check_memory(config, host_memory=LARGEST_HOST_MEMORY, processes=gpus or req.procs,
                     device_memory=LARGEST_DEVICE_MEMORY if gpus else None,
                     machine="the largest machine a job may run on")
    except ConfigError as err:
        raise UsageError(f"config: {err}") from None
    task = Global.of(config).task_type
    expected = PHASE_TASKS[phase.value]
    if task != expected:
        raise UsageError(f"{config_path} is a {task} config, but the phase {phase.value} needs "
                         f"Global.task_type {expected}")
    return config_path, config


def _pretrained_path(ref: JobRef, source, check: bool) -> str:
    """``<output of the pretrain job>/encoder.pdparams``, as the probe job will see it."""
    if check:
        status = source.status(ref)  # NotFoundError (exit 1) when there is no such job
        if status.state is not State.SUCCEEDED:
            raise UsageError(f"{ref} is {status.state.value}, not SUCCEEDED: its encoder is not "
                             f"ready (follow it with: simsiam-job status {ref})")
    return f"{source.output_location(ref).rstrip('/')}/encoder.pdparams"
