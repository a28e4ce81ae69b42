"""The flags ``submit`` and ``render`` share, declared once: ``with_job_flags`` adds them to a
command's parameters (after its first, the phase) and hands them to it as one dict, ``flags``;
``job_spec`` turns the phase and those flags into the validated JobSpec.

No ``from __future__ import annotations`` here: Typer reads these annotations as objects.
"""

import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer


class PhaseArg(str, Enum):
    pretrain = "pretrain"
    linear_probe = "linear-probe"
    smoke = "smoke"


class BackendArg(str, Enum):
    local = "local"
    kubernetes = "kubernetes"
    slurm = "slurm"


Backend = Annotated[BackendArg | None, typer.Option(
    "--backend", "-b", help="Where to run (default: SIMSIAM_JOB_BACKEND, the config file, else local).")]
Nodes = Annotated[int | None, typer.Option("--nodes", "-n", metavar="N", help="Number of nodes (default 1).")]
Gpus = Annotated[int | None, typer.Option(
    "--gpus", "-g", metavar="G", help="GPUs per node; 0 runs on CPU (default 0).")]
Procs = Annotated[int, typer.Option("--procs", metavar="P", help="CPU processes per node when --gpus 0.")]
Config = Annotated[str | None, typer.Option(
    "--config", "-c", metavar="CONFIG",
    help="Trainer config (PASSL YAML); default: the shipped recipe for the phase.")]
Overrides = Annotated[list[str] | None, typer.Option(
    "--override", "-o", metavar="KEY=VALUE",
    help="Config override Dotted.Key=VALUE (repeatable), e.g. -o Global.epochs=10.")]
Image = Annotated[str | None, typer.Option(
    "--image", metavar="IMAGE", help="Container image (kubernetes; slurm with containers).")]
Name = Annotated[str | None, typer.Option(
    "--name", metavar="NAME", help="Job name (DNS-1123 label); default simsiam-<phase>-<random>.")]
Data = Annotated[str | None, typer.Option(
    "--data", metavar="LOCATION",
    help="Dataset location holding train/ (and val/ for the probe), ImageNet layout.")]
Output = Annotated[str | None, typer.Option(
    "--output", metavar="LOCATION", help="Where outputs go; the job writes LOCATION/<job name>/.")]
From = Annotated[str | None, typer.Option(
    "--from", metavar="JOBREF",
    help="linear-probe: the finished pretrain job whose encoder to probe (a JOBREF).")]
Env = Annotated[list[str] | None, typer.Option(
    "--env", "-e", metavar="NAME=VALUE",
    help="Environment variable NAME=VALUE for the trainer processes (repeatable).")]
EnvSecret = Annotated[list[str] | None, typer.Option(
    "--env-secret", metavar="NAME=REF", help="Environment variable NAME read from a secret where the job "
    "runs, never written by simsiam-job (repeatable). REF: SECRET/KEY on kubernetes; a file only you "
    "can read (chmod 600) on slurm and local.")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Backend option KEY=VALUE (repeatable); `simsiam-job options BACKEND` lists them.")]

# Parameter name -> (annotation, default), in the order --help lists them.
JOB_FLAGS: dict[str, tuple[Any, Any]] = {
    "backend": (Backend, None), "nodes": (Nodes, None), "gpus": (Gpus, None), "procs": (Procs, 1),
    "config": (Config, None), "override": (Overrides, None), "image": (Image, None), "name": (Name, None),
    "data": (Data, None), "output": (Output, None), "from_": (From, None), "env": (Env, None),
    "env_secret": (EnvSecret, None), "set_": (Sets, None),
}


def with_job_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command(phase, flags, **own)`` as Typer sees ``command(phase, <JOB_FLAGS>, **own)``."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()
           if p.name != "flags"]
    shared = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                annotation=annotation) for name, (annotation, default) in JOB_FLAGS.items()]
    parameters = [own[0], *shared, *own[1:]]

    @functools.wraps(command)
    def with_flags(**kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in JOB_FLAGS}
        return command(flags=flags, **kwargs)

    del with_flags.__wrapped__      # Typer must read the signature below, not the command's own
    with_flags.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_flags.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_flags


def job_spec(phase: PhaseArg, flags: dict[str, Any], *, check_from: bool) -> Any:
    """The validated JobSpec of ``phase`` with the job flags (simsiam_job.build)."""
    from simsiam_job.build import Request, build_spec

    backend = flags["backend"]
    return build_spec(Request(
        phase=phase.value, backend=backend.value if backend else None, nodes=flags["nodes"],
        gpus=flags["gpus"], procs=flags["procs"], config=flags["config"], overrides=flags["override"] or (),
        image=flags["image"], name=flags["name"], data=flags["data"], output=flags["output"],
        from_ref=flags["from_"], env=flags["env"] or (), env_secrets=flags["env_secret"] or (),
        sets=flags["set_"] or ()), check_from=check_from)
