"""Local backend: ``python -m paddle.distributed.launch`` on this machine, detached from the CLI.

A run lives in ``$XDG_DATA_HOME/simsiam-job/runs/<job name>/`` (default
``~/.local/share/simsiam-job/runs/``)::

    spec.json      the job as submitted (and its attempt)     config.yaml   the resolved trainer config
    command.json   argv + env that was run     pid           the supervisor's process id
    logs/          launch.log (paddle's launcher and the supervisor's notes), workerlog.<rank>
    outcomes/N/    how each rank ended in the group's N-th start (trainer.contract.Outcome)
    restarts.json  the group restarts (and preemptions) of this attempt so far, and why
    exit.json      outcome: the deciding exit code, the reason, the restarts   cancelled   written by cancel
    attempts/N/    what an earlier attempt left (exit.json, ...) when it was resumed
    output/        the trainer's output directory (unless --output was given)

The supervisor (``python -m simsiam_job.backends.local.supervisor RUN_DIR``, supervisor.py) leads
its own session, so the job outlives the CLI; it runs paddle's launcher, waits, reads how every rank
ended (each rank records its outcome, trainer.outcome) and lets ``trainer.contract.decide`` say what
follows: success; a restart of the whole group (a crash, a lost rank or launcher: at most
``group_restarts`` times; a preemption: not counted); or failure with the trainer's own line.

Every process the run starts carries RUN_ENV=<run dir> in its environment. paddle puts each
trainer in a session of its own, and a killed launcher leaves its trainers to init, so the run's
processes are found by that marker, not by a process group: status says RUNNING while any of them
lives, and cancel signals all of them, whether or not the supervisor is still there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from simsiam_job import validate
from simsiam_job.backends.base import (
    GROUP_RESTARTS_HELP,
    Backend,
    FileLines,
    JobRef,
    JobStatus,
    JobSummary,
    NodeStatus,
    Rendered,
    State,
    creatable_dir,
    follow_lines,
    option,
    poll,
)
from simsiam_job.backends.local import index
from simsiam_job.backends.local.processes import run_processes, signal_run, supervisor_alive
from simsiam_job.backends.local.records import (
    RUN_ENV,
    group_restarts,
    number,
    read_command,
    read_pid,
    record_cancel,
)
from simsiam_job.backends.local.supervisor import start_supervisor
from simsiam_job.command import launch_args, trainer_args
from simsiam_job.errors import NotFoundError, UsageError
from simsiam_job.spec import JobSpec, Phase
from simsiam_job.util import read_json_object, write_text_atomic
from trainer import contract

RECENT_SECONDS = 24 * 3600      # `list` without --all hides runs that finished before this


@dataclasses.dataclass(frozen=True)
class Options:
    runs_dir: str | None = option(None, "where runs are kept (default $XDG_DATA_HOME/simsiam-job/runs)")
    grace_seconds: float = option(
        60.0, "cancel: seconds between SIGTERM (the trainer checkpoints) and SIGKILL")
    python: str | None = option(
        None, "Python interpreter with paddle and simsiam-train (default: the one running simsiam-job)")
    group_restarts: int = option(3, GROUP_RESTARTS_HELP)

    def __post_init__(self) -> None:
        validate.at_least_zero("group_restarts", self.group_restarts, validate.MAX_GROUP_RESTARTS)
        validate.at_least_zero("grace_seconds", self.grace_seconds)


class LocalBackend(Backend[Options]):
    name = "local"
    options_class = Options

    def __init__(self, options: Options | None = None):
        super().__init__(options)
        self.grace_seconds = self.options.grace_seconds

    # ---- locations ------------------------------------------------------------------------------

    @property
    def runs_dir(self) -> Path:
        if self.options.runs_dir:
            path = Path(self.options.runs_dir).expanduser().absolute()
        else:
            base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            path = Path(base) / "simsiam-job" / "runs"
        try:
            str(path).encode()      # the run's records, its processes' marker and the index are text
        except UnicodeEncodeError:
            raise UsageError(f"runs directory {str(path)!r} is not UTF-8 text: choose another "
                             "(--set runs_dir=DIR, or XDG_DATA_HOME)") from None
        return path

    def _run_dir(self, ref: JobRef) -> Path:
        run_dir = self.runs_dir / ref.id
        if not validate.DNS1123_LABEL.match(ref.id) or not (run_dir / "spec.json").is_file():
            raise NotFoundError(f"no local run {ref.id!r} in {self.runs_dir} (see: simsiam-job list)")
        return run_dir

    # ---- render / submit ------------------------------------------------------------------------

    def render(self, spec: JobSpec) -> Rendered:
        if spec.nodes != 1:
            raise UsageError(f"the local backend runs on one node, got --nodes {spec.nodes}; "
                             "use --backend kubernetes or slurm for more")
        run_dir = self.runs_dir / spec.name
        output_dir = (Path(spec.output).absolute() / spec.name) if spec.output else run_dir / "output"
        data_dir = str(Path(spec.data).absolute()) if spec.data else None
        python = self.options.python or sys.executable
        argv = launch_args(spec, master=None, nnodes=1, node_rank="0", log_dir=str(run_dir / "logs"),
                           python=python)
        argv += trainer_args(spec, config_path=str(run_dir / "config.yaml"), data_dir=data_dir,
                             output_dir=str(output_dir))
        procs = spec.gpus or spec.procs_per_node
        env = {
            "PYTHONUNBUFFERED": "1",
            # Share the cores between the processes instead of each grabbing all of them.
            "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // procs)),
            RUN_ENV: str(run_dir),
            contract.JOB_ENV: spec.name,    # the trainer's lock names the job; a restart takes its own over
            contract.JOB_ID_ENV: str(run_dir),
            **dict(spec.env),
        }
        # --env-secret: the supervisor reads each file when the run starts; only its path is kept.
        env_files = dict(spec.env_secrets)
        # simsiam-train is looked up on PATH: put the interpreter's bin directory first.
        path_prefix = str(Path(python).parent)
        text = "\n".join([
            f"# local run {spec.name}: {spec.phase.value}, {procs} process(es)"
            + (" on the first visible GPUs (CUDA_VISIBLE_DEVICES)" if spec.gpus else " on CPU"),
            f"# run directory: {run_dir}",
            f"cd {shlex.quote(str(run_dir))}",
            f"PATH={shlex.quote(path_prefix)}:\"$PATH\" "
            + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            + "".join(f' {k}="$(cat {shlex.quote(p)})"' for k, p in env_files.items()) + " \\",
            "  " + shlex.join(argv),
        ]) + "\n"
        payload = {"argv": argv, "env": env, "env_files": env_files, "path_prefix": path_prefix,
                   "run_dir": str(run_dir),
                   "output_dir": str(output_dir), "data_dir": data_dir}
        return Rendered(text=text, files={"run.sh": text, "config.yaml": spec.config_yaml}, payload=payload)

    def send(self, spec: JobSpec, rendered: Rendered, dry_run: str | None) -> JobRef:
        payload = rendered.payload
        ref = JobRef(self.name, spec.name)
        # Everything submit needs on this machine, checked before a dry run returns too.
        data_dir = payload["data_dir"]
        if data_dir is not None:
            needed = ["train"] + (["val"] if spec.phase is Phase.LINEAR_PROBE else [])
            for sub in needed:
                _image_folder(Path(data_dir, sub), spec.data)
        pretrained = spec.config["Global"].get("pretrained_model")
        if spec.phase is Phase.LINEAR_PROBE and pretrained and not Path(pretrained).is_file():
            raise UsageError(f"pretrained encoder not found: {pretrained}")
        run_dir = Path(payload["run_dir"])
        if run_dir.exists():
            raise UsageError(f"a local run named {spec.name!r} exists already ({run_dir}); choose "
                             f"another --name (or continue it: simsiam-job resume {ref})")
        creatable_dir(run_dir.parent, "runs directory")
        if spec.output:
            creatable_dir(Path(payload["output_dir"]), "--output")
        python = payload["argv"][0]
        if not os.path.isfile(python) or not os.access(python, os.X_OK):
            raise UsageError(f"local option python={python}: not an executable file")
        if dry_run:
            return ref
        # Private: paddle's launcher copies its environment (--env, --env-secret values) into logs/.
        run_dir.mkdir(mode=0o700, parents=True)
        (run_dir / "logs").mkdir()
        Path(payload["output_dir"]).mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(spec.config_yaml)
        (run_dir / "command.json").write_text(json.dumps(payload, indent=2))
        record = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                  if f.name not in ("config", "config_yaml", "options")}
        record.update(phase=spec.phase.value, env=[list(p) for p in spec.env], created=time.time(),
                      output_dir=payload["output_dir"], ranks=spec.world_size,
                      options=dataclasses.asdict(self.options), attempt=1)
        write_text_atomic(run_dir / "spec.json", json.dumps(record, indent=2))
        start_supervisor(run_dir)
        return ref

    # ---- follow ---------------------------------------------------------------------------------

    def status(self, ref: JobRef) -> JobStatus:
        run_dir = self._run_dir(ref)
        spec = read_json_object(run_dir / "spec.json") or {}
        state, reason, exit_code = self._state(run_dir)
        output_dir = spec.get("output_dir")
        output_dir = output_dir if isinstance(output_dir, str) else str(run_dir / "output")
        restarts = group_restarts(run_dir)
        detail = {"run_dir": str(run_dir), "output_dir": output_dir, "exit_code": exit_code,
                  "group_restarts": restarts, "preemptions": group_restarts(run_dir, "preemptions"),
                  "processes": run_processes(run_dir)}
        node = NodeStatus(rank=0, state=state, host=socket.gethostname(), reason=reason,
                          exit_code=exit_code, restarts=restarts)
        return JobStatus(ref=ref, state=state, reason=reason, nodes=(node,), detail=detail,
                         progress=contract.read_last_step(Path(output_dir) / contract.METRICS),
                         output=output_dir, attempt=int(number(spec, "attempt", 1)))

    def _state(self, run_dir: Path) -> tuple[State, str | None, int | None]:
        cancelled = (run_dir / "cancelled").exists()
        done = read_json_object(run_dir / "exit.json")
        if done is not None:
            code = done.get("exit_code")
            if cancelled:
                return State.CANCELLED, done.get("reason") or "cancelled by the user", code
            if code == 0:
                return State.SUCCEEDED, None, code
            return State.FAILED, done.get("reason") or contract.describe_exit(code), code
        pid = read_pid(run_dir)
        if pid is None:
            return State.PENDING, "starting", None
        supervised = supervisor_alive(pid, run_dir)
        processes = run_processes(run_dir)
        if supervised or processes:
            if not supervised:
                return State.RUNNING, (f"its supervisor (pid {pid}) is gone, {len(processes)} process(es) of "
                                       "the run still run; nothing will restart or record them "
                                       f"(stop them: simsiam-job cancel local://{run_dir.name})"), None
            if cancelled:
                return State.RUNNING, "cancelling: waiting for the trainer to checkpoint and exit", None
            if not (run_dir / "logs" / "workerlog.0").exists():
                return State.PENDING, "starting the trainer processes", None
            restarting = read_json_object(run_dir / "restarts.json")
            if restarting:
                preempted = int(number(restarting, "preemptions", 0))
                return State.RUNNING, (f"group restart {restarting.get('restarts')} of at most "
                                       f"{restarting.get('bound')}"
                                       + (f", preempted {_times(preempted)}" if preempted else "")
                                       + f", after: {restarting.get('cause')}"), None
            return State.RUNNING, None, None
        if cancelled:
            return State.CANCELLED, "cancelled by the user (its supervisor was gone)", None
        return State.FAILED, (f"the run's supervisor (pid {pid}) was killed and no process of the run is "
                              "left; no outcome was recorded (continue from the newest checkpoint: "
                              f"simsiam-job resume local://{run_dir.name})"), None

    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        run_dir = self._run_dir(ref)
        ranks = int(number(read_json_object(run_dir / "spec.json") or {}, "ranks", 1))
        if all_ranks:
            wanted = list(range(ranks))
        else:
            rank = 0 if rank is None else rank
            if not 0 <= rank < ranks:
                raise UsageError(f"--rank {rank} is out of range: {ref} has {ranks} rank(s), 0..{ranks - 1}")
            wanted = [rank]
        logs_dir = run_dir / "logs"
        files = {r: logs_dir / f"workerlog.{r}" for r in wanted}
        if not any(p.exists() for p in files.values()) and self._state(run_dir)[0].finished:
            files = {0: logs_dir / "launch.log"}  # the trainer never started: the launcher says why
            all_ranks = False
        readers = {r: FileLines(lambda p=path: [p], tail) for r, path in files.items()}

        def read(final: bool) -> list[str]:
            return [f"[rank {r}] {ln}" if all_ranks else ln
                    for r, reader in readers.items() for ln in reader.read(final)]

        yield from follow_lines(read, lambda: self._state(run_dir)[0] not in (State.PENDING, State.RUNNING),
                                follow=follow)

    # ---- cancel: TERM to every process of the run (each trainer writes a checkpoint and exits),
    # KILL to what is left after the grace period; the supervisor restarts nothing once the run
    # is marked cancelled -------------------------------------------------------------------------

    def _stop(self, ref: JobRef) -> str | None:
        run_dir = self._run_dir(ref)
        state = self._state(run_dir)[0]
        if state.finished:
            return f"{ref} had already finished: {state.value}"
        (run_dir / "cancelled").touch()
        # the grace period the run was submitted with (the supervisor uses it too)
        options = (read_json_object(run_dir / "spec.json") or {}).get("options")
        grace = options.get("grace_seconds") if isinstance(options, dict) else None
        if isinstance(grace, (int, float)) and 0 <= grace < float("inf"):
            self.grace_seconds = float(grace)
        supervised = supervisor_alive(read_pid(run_dir) or 0, run_dir)
        processes = signal_run(run_dir, signal.SIGTERM)
        gone = "" if supervised else " (its supervisor was gone)"
        if not processes and not supervised:
            record_cancel(run_dir, "cancelled by the user; nothing of the run was running")
            return f"cancelled {ref}: nothing of it was running{gone}"
        self.stopped_after_term = (f"sent SIGTERM to {len(processes)} process(es) of the run{gone}; "
                                   "all exited after it (the trainer checkpoints on SIGTERM)")
        return None

    def _stopped(self, ref: JobRef) -> bool:
        run_dir = self._run_dir(ref)
        if run_processes(run_dir):
            return False
        if supervisor_alive(read_pid(run_dir) or 0, run_dir):
            return (run_dir / "exit.json").exists()
        record_cancel(run_dir, "cancelled by the user (its supervisor was gone)")
        return True

    def _kill(self, ref: JobRef) -> str:
        run_dir = self._run_dir(ref)
        killed = signal_run(run_dir, signal.SIGKILL)
        # the supervisor records the outcome once the launcher is gone; without one, cancel does
        if not poll(lambda: (run_dir / "exit.json").exists(), timeout=10) or not killed:
            record_cancel(run_dir, "cancelled by the user: killed after the grace period")
        return (f"sent SIGTERM, then SIGKILL to {len(killed)} process(es) still running "
                f"{self.grace_seconds:g} s later")

    # ---- resume: the next attempt in the same run directory and output directory ----------------

    def _resume(self, ref: JobRef, status: JobStatus) -> JobRef:
        run_dir = self._run_dir(ref)
        try:
            spec = _recorded(run_dir)
        except ValueError as err:
            raise UsageError(f"cannot resume {ref}: {err}") from None
        attempt = status.attempt + 1
        history = run_dir / "attempts" / str(status.attempt)
        history.mkdir(parents=True, exist_ok=True)
        for name in ("exit.json", "cancelled", "restarts.json", "pid"):
            if (run_dir / name).exists():
                os.replace(run_dir / name, history / name)
        spec.update(attempt=attempt, resumed=time.time())
        write_text_atomic(run_dir / "spec.json", json.dumps(spec, indent=2))
        start_supervisor(run_dir)
        return ref

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        rows = []
        now = time.time()
        if not self.runs_dir.is_dir():
            return rows
        for run_dir in self.runs_dir.iterdir():
            spec = read_json_object(run_dir / "spec.json")
            if spec is None or not validate.DNS1123_LABEL.match(run_dir.name):  # runs are named by job names
                continue
            state = self._state(run_dir)[0]
            finished = number(read_json_object(run_dir / "exit.json") or {}, "finished", 0)
            if not all_jobs and state.finished and finished and now - finished > RECENT_SECONDS:
                continue
            created = number(spec, "created", 0)
            rows.append(JobSummary(ref=JobRef(self.name, run_dir.name), name=run_dir.name,
                                   phase=str(spec.get("phase", "?")), state=state,
                                   age_seconds=(now - created) if created else None,
                                   attempt=int(number(spec, "attempt", 1))))
        rows.sort(key=lambda row: row.age_seconds if row.age_seconds is not None else float("inf"))
        return rows

    def output_location(self, ref: JobRef) -> str:
        run_dir = self._run_dir(ref)
        output_dir = (read_json_object(run_dir / "spec.json") or {}).get("output_dir")
        if not isinstance(output_dir, str):
            raise UsageError(f"{run_dir / 'spec.json'} records no output directory (not a run's record)")
        return output_dir

    # ---- the run index: later commands find a run by its JOBREF alone (index.py) ----------------

    def remember(self, ref: JobRef) -> None:
        index.remember(ref.id, self.runs_dir)

    @classmethod
    def located_options(cls, ref: JobRef, options: Any, environ: Mapping[str, str] = os.environ) -> Any:
        runs_dir = index.recorded_runs_dir(ref.id, environ)
        return dataclasses.replace(options, runs_dir=runs_dir) if runs_dir else options

    def list_everywhere(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """``list`` plus the recorded runs that live outside this backend's runs directory."""
        rows = self.list(all_jobs=all_jobs)
        for runs_dir, run_ids in index.runs_by_dir().items():
            if Path(runs_dir) != self.runs_dir:
                elsewhere = LocalBackend(dataclasses.replace(self.options, runs_dir=runs_dir))
                rows += [row for row in elsewhere.list(all_jobs=all_jobs) if row.ref.id in run_ids]
        return rows


def _times(n: int) -> str:
    return f"{n} time" + ("" if n == 1 else "s")


def _image_folder(path: Path, data: str) -> None:
    """UsageError unless ``path`` is a folder with at least one class folder (the trainer reads the
    images themselves)."""
    layout = "expected an ImageFolder: <data>/train/<class>/<image>"
    try:
        classes = [e for e in os.scandir(path) if not e.name.startswith(".") and e.is_dir()]
    except FileNotFoundError:
        raise UsageError(f"--data {data}: no {path.name}/ folder in {path.parent} ({layout})") from None
    except OSError as err:
        raise UsageError(f"--data {data}: {err.filename or path}: {err.strerror} ({layout})") from None
    if not classes:
        raise UsageError(f"--data {data}: {path} has no class folders ({layout})")


def _recorded(run_dir: Path) -> dict:
    """What resume starts from, checked before anything changes: the run directory and its records
    are the caller's own and nobody else may write there (resume runs the recorded command as the
    caller), and both records are what submit wrote. Returns spec.json; ValueError (one line) if not."""
    for path, is_kind, kind in ((run_dir, stat.S_ISDIR, "a directory"),
                                (run_dir / "spec.json", stat.S_ISREG, "a regular file"),
                                (run_dir / "command.json", stat.S_ISREG, "a regular file"),
                                (run_dir / "logs", stat.S_ISDIR, "a directory")):
        try:
            st = path.lstat()       # a symbolic link could lead anywhere: refused as not a file
        except OSError as err:
            raise ValueError(f"{path}: {err.strerror}") from None
        if not is_kind(st.st_mode):
            raise ValueError(f"{path} is not {kind}")
        if st.st_uid != os.geteuid():
            raise ValueError(f"{path} belongs to another user (uid {st.st_uid}); resume would run what "
                             "it records as you")
        if path == run_dir and st.st_mode & 0o022:
            raise ValueError(f"other users may write into {path} (mode {stat.S_IMODE(st.st_mode):04o}); "
                             "resume would run what it records as you")
    read_command(run_dir)
    path = run_dir / "spec.json"
    spec = read_json_object(path)
    options = (spec or {}).get("options")
    if not isinstance(options, dict) or not isinstance(spec.get("attempt"), int):
        raise ValueError(f"{path} is not the record submit wrote "
                         "(a JSON object with the attempt and the options)")
    known = {f.name for f in dataclasses.fields(Options)}
    try:
        Options(**{k: v for k, v in options.items() if k in known})   # what the supervisor will read
    except (TypeError, ValueError, UsageError) as err:
        raise ValueError(f"{path}: bad options: {err}") from None
    return spec


