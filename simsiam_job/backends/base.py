"""The one interface every backend implements (local, kubernetes, slurm).

A backend reads only the JobSpec. ``render`` is pure (no cluster access) and returns exactly
what ``submit`` sends. Backends never import paddle; the kubernetes client is imported lazily
inside the kubernetes backend's methods, never at module import.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

from simsiam_job.errors import UsageError


class State(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def finished(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclasses.dataclass(frozen=True)
class JobRef:
    """``local://RUNID``, ``kubernetes://NAMESPACE/NAME``, ``slurm://JOBID``."""

    backend: str
    id: str  # local: run id; kubernetes: "NAMESPACE/NAME"; slurm: job id

    def __str__(self) -> str:
        return f"{self.backend}://{self.id}"

    @classmethod
    def parse(cls, text: str) -> "JobRef":
        backend, sep, rest = text.partition("://")
        if not sep or not rest or backend not in BACKEND_NAMES:
            raise UsageError(
                f"not a job reference: {text!r} (expected local://ID, kubernetes://NAMESPACE/NAME "
                "or slurm://JOBID)"
            )
        return cls(backend, rest)


BACKEND_NAMES = ("local", "kubernetes", "slurm")


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """One node (rank) of a job: a pod index on Kubernetes, a node of the allocation on Slurm."""

    rank: int
    state: State
    host: str | None = None
    restarts: int = 0
    reason: str | None = None  # e.g. "Unschedulable: 0/5 nodes are available: ...", "OOMKilled"
    exit_code: int | None = None


@dataclasses.dataclass(frozen=True)
class JobStatus:
    ref: JobRef
    state: State
    reason: str | None = None  # one line a person can act on
    nodes: tuple[NodeStatus, ...] = ()
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)  # backend extras for --json


@dataclasses.dataclass(frozen=True)
class JobSummary:
    """One row of ``simsiam-job list``."""

    ref: JobRef
    name: str
    phase: str
    state: State
    age_seconds: float | None


@dataclasses.dataclass(frozen=True)
class Rendered:
    """What submit would send.

    ``text`` is printed by ``simsiam-job render``; ``files`` (file name -> content) is written by
    ``render --out DIR``; ``payload`` is the backend's own form (k8s: list of manifest dicts;
    slurm: script text; local: {"argv": [...], "env": {...}, ...}).
    """

    text: str
    files: dict[str, str]
    payload: Any


class Backend(Protocol):
    """Constructed as ``Backend(options)`` with the backend's own ``Options`` dataclass."""

    name: ClassVar[str]

    def render(self, spec: "JobSpec") -> Rendered: ...

    def submit(self, spec: "JobSpec", dry_run: str | None = None) -> JobRef:
        """dry_run: None, "client" (render only) or "server" (backend validates, nothing runs)."""
        ...

    def status(self, ref: JobRef) -> JobStatus: ...

    def logs(
        self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
        follow: bool = False, tail: int | None = None,
    ) -> Iterator[str]:
        """Yield log lines (no trailing newline); with all_ranks, lines are prefixed "[rank N] "."""
        ...

    def cancel(self, ref: JobRef) -> str:
        """Stop the job (TERM first so the trainer checkpoints); return a one-line report."""
        ...

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]: ...

    def output_location(self, ref: JobRef) -> str:
        """Where a job's output directory is, as later jobs of this backend see it
        (``linear-probe --from REF`` reads ``<output>/encoder.pdparams`` from there)."""
        ...


from simsiam_job.spec import JobSpec  # noqa: E402  (type names only; spec imports nothing heavy)
