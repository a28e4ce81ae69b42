"""JobSpec: the one description of a job that every backend reads.

Built and validated once (``simsiam_job.build_spec`` from CLI flags + user defaults); frozen after.
Everything a backend needs is here; backends must not read flags, files or the environment.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from simsiam_job.errors import UsageError
from simsiam_job.validate import DNS1123_LABEL


class Phase(str, enum.Enum):
    PRETRAIN = "pretrain"
    LINEAR_PROBE = "linear-probe"
    SMOKE = "smoke"


MAX_NAME_LEN = 52  # 63 minus room for the suffixes Kubernetes adds to pods of an indexed Job


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LEN or not DNS1123_LABEL.match(name):
        raise UsageError(
            f"invalid job name {name!r}: use at most {MAX_NAME_LEN} lowercase letters, digits and "
            "'-', starting and ending with a letter or digit (DNS-1123 label)"
        )
    return name


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str                       # DNS-1123 label, unique per namespace / user
    phase: Phase
    backend: str                    # "local" | "kubernetes" | "slurm"
    nodes: int                      # >= 1
    gpus: int                       # per node; 0 = CPU processes
    image: str                      # container image (kubernetes; slurm with containers)
    config_source: str              # the -c file as given (for display)
    config: Mapping[str, Any]       # resolved trainer config (after -o overrides), validated
    config_yaml: str                # the same, as the YAML text the trainer will read
    data: str | None = None         # data location; meaning is backend-specific (path, pvc:NAME/sub)
    output: str | None = None       # output location; likewise
    from_ref: str | None = None     # linear-probe --from JOBREF (the pretrain job)
    env: tuple[tuple[str, str], ...] = ()          # --env NAME=VALUE for the trainer processes
    # --env-secret NAME=REF: the value is read where the job runs, never written by us. REF is
    # SECRET/KEY on Kubernetes, elsewhere the absolute path of a file only the user can read.
    env_secrets: tuple[tuple[str, str], ...] = ()
    options: Any = None             # the backend's own frozen Options dataclass
    procs_per_node: int = 1         # CPU processes per node when gpus == 0

    def __post_init__(self) -> None:
        validate_name(self.name)
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    @property
    def labels(self) -> dict[str, str]:
        """Labels on every object we create (kubectl get ... -l app.kubernetes.io/managed-by=simsiam-job)."""
        return {
            "app.kubernetes.io/name": "simsiam",
            "app.kubernetes.io/managed-by": "simsiam-job",
            "app.kubernetes.io/instance": self.name,
            "simsiam-job/phase": self.phase.value,
        }

    @property
    def world_size(self) -> int:
        return self.nodes * (self.gpus if self.gpus > 0 else self.procs_per_node)
