"""The one interface every backend implements (local, kubernetes, slurm), and what they share.

A backend reads only the JobSpec. ``render`` is pure (no cluster access) and returns exactly
what ``submit`` sends. Backends never import paddle; the kubernetes client is imported lazily
inside the kubernetes backend's methods, never at module import. A backend imports this module
and never another backend.

Shared here: ``REGISTRY`` (backend name -> its class, imported lazily), ``option`` (how every
Options field is declared), ``Backend`` (the abstract interface: submit = render + send; cancel =
TERM, grace, KILL; the hooks through which generic code asks a backend what only it knows),
``poll`` (wait for a condition), ``follow_lines`` and ``FileLines`` (following logs to the job's end).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import os
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from simsiam_job.errors import UsageError


class State(str, enum.Enum):
    QUEUED = "QUEUED"       # held by an admission layer (Kueue) until its quota fits the whole job
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
    def parse(cls, text: str) -> JobRef:
        backend, sep, rest = text.partition("://")
        if not sep or not rest or backend not in BACKEND_NAMES:
            raise UsageError(
                f"not a job reference: {text!r} (expected local://ID, kubernetes://NAMESPACE/NAME "
                "or slurm://JOBID)"
            )
        return cls(backend, rest)


# Every backend, by name: "module:Class", imported only when the backend is used (``simsiam-job
# --help`` or a local job never imports the kubernetes backend, nor through it the client).
REGISTRY = {
    "local": "simsiam_job.backends.local:LocalBackend",
    "kubernetes": "simsiam_job.backends.kubernetes:KubernetesBackend",
    "slurm": "simsiam_job.backends.slurm:SlurmBackend",
}
BACKEND_NAMES = tuple(REGISTRY)


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
    progress: dict | None = None    # the trainer's newest step record (trainer.contract), as written
    output: str | None = None       # where the job's output directory lives, in the user's words
    attempt: int = 1                # 2 after the first `simsiam-job resume`, and so on


@dataclasses.dataclass(frozen=True)
class JobSummary:
    """One row of ``simsiam-job list``."""

    ref: JobRef
    name: str
    phase: str
    state: State
    age_seconds: float | None
    attempt: int = 1


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


# ---- what every backend shares -----------------------------------------------------------------

def option(default: Any, help: str) -> Any:
    """One field of a backend's frozen ``Options`` dataclass. Every field has a default and a help
    text; ``--set KEY=VALUE``, the config file's section and ``SIMSIAM_JOB_<BACKEND>_<KEY>`` fill
    it (simsiam_job/defaults.py), ``simsiam-job options BACKEND`` lists it."""
    return dataclasses.field(default=default, metadata={"help": help})


GROUP_RESTARTS_HELP = ("whole-group restarts after a crash or a lost rank before the job fails; "
                       "preemptions are not counted; exit 2 (bad input) and 3 (diverged) never restart")


def creatable_dir(path: Path, what: str) -> None:
    """UsageError unless ``path`` is a directory this user may write into, or one that can be made
    (its nearest existing folder is a directory this user may write): what submit will need, checked
    by dry runs too."""
    existing = path
    while True:
        try:
            st = existing.stat()
            break
        except FileNotFoundError:
            existing = existing.parent
        except OSError as err:          # a file on the way (ENOTDIR), a symlink loop, no permission
            raise UsageError(f"{what} {path}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: you may not write into {existing}")


T = TypeVar("T")


def poll(check: Callable[[], T], *, timeout: float, interval: float = 0.5) -> T | None:
    """``check()`` until it returns something true (returned) or ``timeout`` seconds pass (None).
    It is always called at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def follow_lines(read: Callable[[bool], Iterable[str]], finished: Callable[[], bool], *,
                 follow: bool, interval: float = 0.5) -> Iterator[str]:
    """A log to the job's end: ``read(final)`` returns the lines that are new since its last call.
    Whether the job has finished is asked before each read, so the read after the end still gets
    the last lines; without ``follow`` there is one read."""
    while True:
        done = not follow or finished()
        yield from read(done)
        if done:
            return
        time.sleep(interval)


class FileLines:
    """Lines appended to log files since the last read. ``paths()`` is asked on every read, so
    files that appear later (a rank that starts late, a requeued job on another node) are picked
    up; a partial last line waits for its end unless the read is final."""

    def __init__(self, paths: Callable[[], list[Path]], tail: int | None = None):
        self._paths = paths
        self._offsets: dict[Path, int] = {}
        self._tail = tail

    def read(self, final: bool = False) -> list[str]:
        lines: list[str] = []
        for path in self._paths():
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            cut = len(data) if final else data.rfind(b"\n") + 1
            self._offsets[path] = self._offsets.get(path, 0) + cut
            lines += data[:cut].decode("utf-8", "replace").splitlines()
        if self._tail is not None:  # --tail applies to the first read only
            lines, self._tail = (lines[-self._tail:] if self._tail else []), None
        return lines


OptionsT = TypeVar("OptionsT")


class Backend(abc.ABC, Generic[OptionsT]):
    """The one interface every backend implements, constructed as ``Backend(options)`` with its own
    frozen ``Options`` dataclass (its defaults if None). A backend provides ``render`` and ``send``
    (submit), ``_stop``/``_stopped``/``_kill`` (cancel), ``_resume``, ``status``, ``logs``, ``list``
    and ``output_location``; the base decides the order. Generic code (cli.py, build.py) asks a
    backend, never its name, what differs between backends: the hooks below."""

    name: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else self.options_class()

    @abc.abstractmethod
    def render(self, spec: JobSpec) -> Rendered:
        """What submit would send; pure (no cluster access)."""

    def submit(self, spec: JobSpec, dry_run: str | None = None) -> JobRef:
        """render + send: what is sent is exactly what ``render`` prints. dry_run: "client"
        (render and the backend's own local checks only), "server" (the cluster judges it)."""
        if dry_run not in (None, "client", "server"):
            raise UsageError(f"--dry-run must be 'client' or 'server', not {dry_run!r}")
        return self.send(spec, self.render(spec), dry_run)

    @abc.abstractmethod
    def send(self, spec: JobSpec, rendered: Rendered, dry_run: str | None) -> JobRef:
        """Start what ``render`` returned (or, with dry_run, only check it)."""

    @abc.abstractmethod
    def status(self, ref: JobRef) -> JobStatus: ...

    @abc.abstractmethod
    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """Yield log lines (no trailing newline); with all_ranks, lines are prefixed "[rank N] "."""

    @abc.abstractmethod
    def list(self, *, all_jobs: bool = False) -> list[JobSummary]: ...

    @abc.abstractmethod
    def output_location(self, ref: JobRef) -> str:
        """Where a job's output directory is, as later jobs of this backend see it
        (``linear-probe --from REF`` reads ``<output>/encoder.pdparams`` from there)."""

    # ---- cancel: TERM, the grace period, KILL ---------------------------------------------------

    grace_seconds: float = 60.0  # overridden from the backend's options
    stopped_after_term: ClassVar[str] = "stopped after TERM"

    def cancel(self, ref: JobRef) -> str:
        """TERM first, so the trainer writes a checkpoint; KILL what is still there after the grace
        period. Returns one line saying which of the two ended the job."""
        already = self._stop(ref)
        if already is not None:
            return already
        if poll(lambda: self._stopped(ref), timeout=self.grace_seconds, interval=0.5):
            return f"cancelled {ref}: {self.stopped_after_term}"
        return f"cancelled {ref}: " + self._kill(ref)

    @abc.abstractmethod
    def _stop(self, ref: JobRef) -> str | None:
        """Send TERM; return a line instead when there is nothing to stop."""

    @abc.abstractmethod
    def _stopped(self, ref: JobRef) -> bool: ...

    @abc.abstractmethod
    def _kill(self, ref: JobRef) -> str:
        """KILL whatever is left; return what happened, e.g. "killed after 60 s"."""

    # ---- resume: a new attempt of a finished, unsuccessful job -----------------------------------

    def resume(self, ref: JobRef) -> JobRef:
        """Refuse a job that still runs or already succeeded (one line, exit 2); else start the
        next attempt with the same config and output location (``_resume``)."""
        st = self.status(ref)
        if st.state is State.SUCCEEDED:
            raise UsageError(f"{ref} already succeeded (attempt {st.attempt}): nothing to resume")
        if st.state not in (State.FAILED, State.CANCELLED):
            raise UsageError(f"{ref} is {st.state.value} (attempt {st.attempt}): only a FAILED or "
                             f"CANCELLED job can be resumed (stop it first: simsiam-job cancel {ref})")
        return self._resume(ref, st)

    @abc.abstractmethod
    def _resume(self, ref: JobRef, status: JobStatus) -> JobRef: ...

    # ---- what generic code asks a backend instead of testing its name ---------------------------

    @classmethod
    def default_data(cls, options: Any) -> str | None:
        """The data location a job reads when --data is not given (none unless the backend has one)."""
        return None

    @classmethod
    def secret_reference(cls, name: str, ref: str) -> str:
        """``--env-secret NAME=REF`` checked for this backend: by default the absolute path of a
        file that exists, is readable and that nobody else can read (its content is never read)."""
        return secret_file(name, ref)

    @classmethod
    def located_options(cls, ref: JobRef, options: Any, environ: Mapping[str, str] = os.environ) -> Any:
        """``options`` pointed at where ``ref`` was recorded, for backends that keep a run index."""
        return options

    def remember(self, ref: JobRef) -> None:
        """Record a submitted job where later commands look it up by its JOBREF alone (no-op unless
        the backend keeps a run index)."""

    def list_everywhere(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """``list`` plus the jobs a run index records outside this backend's configured location."""
        return self.list(all_jobs=all_jobs)


def secret_file(name: str, path: str) -> str:
    """The absolute path of a secret file that exists, is readable and that nobody else can read."""
    if "\0" in path or "\n" in path:
        raise UsageError(f"--env-secret {name}: a file path cannot contain NUL or newline characters")
    full = os.path.abspath(os.path.expanduser(path))
    try:
        st = os.stat(full)
    except OSError as err:
        raise UsageError(f"--env-secret {name}={path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"--env-secret {name}={path}: not a regular file")
    if st.st_mode & 0o077:
        raise UsageError(f"--env-secret {name}={path}: group or others have access to this file (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); make it yours alone: "
                         f"chmod 600 {shlex.quote(full)}")
    if not os.access(full, os.R_OK):
        raise UsageError(f"--env-secret {name}={path}: you cannot read this file")
    return full


from simsiam_job.spec import JobSpec  # noqa: E402  (type names only; spec imports nothing heavy)
