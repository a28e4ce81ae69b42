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

The supervisor (``python -m simsiam_job.backends.local RUN_DIR``) leads its own session, so the
job outlives the CLI; it runs paddle's launcher, waits, reads how every rank ended (each rank
records its outcome, trainer.outcome) and lets ``trainer.contract.decide`` say what follows:
success; a restart of the whole group (a crash, a lost rank or launcher: at most
``group_restarts`` times; a preemption: not counted); or failure with the trainer's own line.

Every process the run starts carries RUN_ENV=<run dir> in its environment. paddle puts each
trainer in a session of its own, and a killed launcher leaves its trainers to init, so the run's
processes are found by that marker, not by a process group: status says RUNNING while any of them
lives, and cancel signals all of them, whether or not the supervisor is still there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from simsiam_job import validate
from simsiam_job.backends.base import (
    GROUP_RESTARTS_HELP, BaseBackend, FileLines, JobRef, JobStatus, JobSummary, NodeStatus, Rendered,
    State, creatable_dir, follow_lines, option, poll,
)
from simsiam_job.command import launch_args, trainer_args
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec, Phase
from trainer import contract

RUN_ENV = contract.RUN_DIR_ENV  # <run dir>, on every process of a run: how status and cancel find them
OUTCOMES = "outcomes"           # <run dir>/outcomes/<start>/: each rank's outcome (trainer.contract)
RECENT_SECONDS = 24 * 3600      # `list` without --all hides runs that finished before this


@dataclasses.dataclass(frozen=True)
class Options:
    runs_dir: str | None = option(None, "where runs are kept (default $XDG_DATA_HOME/simsiam-job/runs)")
    grace_seconds: float = option(60.0, "cancel: seconds between SIGTERM (the trainer checkpoints) and SIGKILL")
    python: str | None = option(
        None, "Python interpreter with paddle and simsiam-train (default: the one running simsiam-job)")
    group_restarts: int = option(3, GROUP_RESTARTS_HELP)

    def __post_init__(self) -> None:
        validate.at_least_zero("group_restarts", self.group_restarts, validate.MAX_GROUP_RESTARTS)
        validate.at_least_zero("grace_seconds", self.grace_seconds)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    """A record of the run; None when it is missing or is not a JSON object."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _number(record: dict, key: str, default: int) -> float:
    """A count (int) or a time (float) in a record; ``default`` when it is missing or not a number."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return value


def _alive(pid: int, run_dir: Path) -> bool:
    """True if ``pid`` is still this run's supervisor (not a recycled pid, not a zombie)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and str(run_dir).encode() in cmdline


class LocalBackend(BaseBackend):
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
        _write_atomic(run_dir / "spec.json", json.dumps(record, indent=2))
        _start_supervisor(run_dir)
        return ref

    # ---- follow ---------------------------------------------------------------------------------

    def status(self, ref: JobRef) -> JobStatus:
        run_dir = self._run_dir(ref)
        spec = _read_json(run_dir / "spec.json") or {}
        state, reason, exit_code = self._state(run_dir)
        output_dir = spec.get("output_dir")
        output_dir = output_dir if isinstance(output_dir, str) else str(run_dir / "output")
        restarts = _group_restarts(run_dir)
        detail = {"run_dir": str(run_dir), "output_dir": output_dir, "exit_code": exit_code,
                  "group_restarts": restarts, "preemptions": _group_restarts(run_dir, "preemptions"),
                  "processes": run_processes(run_dir)}
        node = NodeStatus(rank=0, state=state, host=socket.gethostname(), reason=reason,
                          exit_code=exit_code, restarts=restarts)
        return JobStatus(ref=ref, state=state, reason=reason, nodes=(node,), detail=detail,
                         progress=contract.read_last_step(Path(output_dir) / contract.METRICS),
                         output=output_dir, attempt=int(_number(spec, "attempt", 1)))

    def _state(self, run_dir: Path) -> tuple[State, str | None, int | None]:
        cancelled = (run_dir / "cancelled").exists()
        done = _read_json(run_dir / "exit.json")
        if done is not None:
            code = done.get("exit_code")
            if cancelled:
                return State.CANCELLED, done.get("reason") or "cancelled by the user", code
            if code == 0:
                return State.SUCCEEDED, None, code
            return State.FAILED, done.get("reason") or contract.describe_exit(code), code
        pid = _pid(run_dir)
        if pid is None:
            return State.PENDING, "starting", None
        supervised = _alive(pid, run_dir)
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
            restarting = _read_json(run_dir / "restarts.json")
            if restarting:
                preempted = int(_number(restarting, "preemptions", 0))
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
        ranks = int(_number(_read_json(run_dir / "spec.json") or {}, "ranks", 1))
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
        options = (_read_json(run_dir / "spec.json") or {}).get("options")
        grace = options.get("grace_seconds") if isinstance(options, dict) else None
        if isinstance(grace, (int, float)) and 0 <= grace < float("inf"):
            self.grace_seconds = float(grace)
        supervised = _alive(_pid(run_dir) or 0, run_dir)
        processes = _signal_all(run_dir, signal.SIGTERM)
        gone = "" if supervised else " (its supervisor was gone)"
        if not processes and not supervised:
            _record_cancel(run_dir, "cancelled by the user; nothing of the run was running")
            return f"cancelled {ref}: nothing of it was running{gone}"
        self.stopped_after_term = (f"sent SIGTERM to {len(processes)} process(es) of the run{gone}; "
                                   "all exited after it (the trainer checkpoints on SIGTERM)")
        return None

    def _stopped(self, ref: JobRef) -> bool:
        run_dir = self._run_dir(ref)
        if run_processes(run_dir):
            return False
        if _alive(_pid(run_dir) or 0, run_dir):
            return (run_dir / "exit.json").exists()
        _record_cancel(run_dir, "cancelled by the user (its supervisor was gone)")
        return True

    def _kill(self, ref: JobRef) -> str:
        run_dir = self._run_dir(ref)
        killed = _signal_all(run_dir, signal.SIGKILL)
        # the supervisor records the outcome once the launcher is gone; without one, cancel does
        if not poll(lambda: (run_dir / "exit.json").exists(), timeout=10) or not killed:
            _record_cancel(run_dir, "cancelled by the user: killed after the grace period")
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
        _write_atomic(run_dir / "spec.json", json.dumps(spec, indent=2))
        _start_supervisor(run_dir)
        return ref

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        rows = []
        now = time.time()
        if not self.runs_dir.is_dir():
            return rows
        for run_dir in self.runs_dir.iterdir():
            spec = _read_json(run_dir / "spec.json")
            if spec is None or not validate.DNS1123_LABEL.match(run_dir.name):  # runs are named by job names
                continue
            state = self._state(run_dir)[0]
            finished = _number(_read_json(run_dir / "exit.json") or {}, "finished", 0)
            if not all_jobs and state.finished and finished and now - finished > RECENT_SECONDS:
                continue
            created = _number(spec, "created", 0)
            rows.append(JobSummary(ref=JobRef(self.name, run_dir.name), name=run_dir.name,
                                   phase=str(spec.get("phase", "?")), state=state,
                                   age_seconds=(now - created) if created else None,
                                   attempt=int(_number(spec, "attempt", 1))))
        rows.sort(key=lambda row: row.age_seconds if row.age_seconds is not None else float("inf"))
        return rows

    def output_location(self, ref: JobRef) -> str:
        run_dir = self._run_dir(ref)
        output_dir = (_read_json(run_dir / "spec.json") or {}).get("output_dir")
        if not isinstance(output_dir, str):
            raise UsageError(f"{run_dir / 'spec.json'} records no output directory (not a run's record)")
        return output_dir


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


def _pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "pid").read_text())
    except (OSError, ValueError):
        return None


def _group_restarts(run_dir: Path, key: str = "restarts") -> int:
    """Counted group restarts (or, key "preemptions", uncounted restarts) of the current attempt."""
    record = _read_json(run_dir / "exit.json") or _read_json(run_dir / "restarts.json") or {}
    return int(_number(record, key, 0))


def _times(n: int) -> str:
    return f"{n} time" + ("" if n == 1 else "s")


def _record_cancel(run_dir: Path, reason: str) -> None:
    """The outcome of a cancelled run whose supervisor cannot record it any more."""
    if not (run_dir / "exit.json").exists():
        _write_atomic(run_dir / "exit.json", json.dumps(
            {"exit_code": None, "reason": reason, "restarts": _group_restarts(run_dir), "finished": time.time()}))


def run_processes(run_dir: Path) -> list[int]:
    """The live processes of this run (paddle's launcher, every trainer): those of this user that
    carry RUN_ENV=<run dir> in their environment, wherever they were re-parented. Zombies are dead."""
    marker = f"{RUN_ENV}={run_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signal_all(run_dir: Path, sig: int) -> list[int]:
    """Send ``sig`` to every live process of the run; returns the ones it reached."""
    reached = []
    for pid in run_processes(run_dir):
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


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
    _read_command(run_dir)
    path = run_dir / "spec.json"
    spec = _read_json(path)
    options = (spec or {}).get("options")
    if not isinstance(options, dict) or not isinstance(spec.get("attempt"), int):
        raise ValueError(f"{path} is not the record submit wrote (a JSON object with the attempt and the options)")
    known = {f.name for f in dataclasses.fields(Options)}
    try:
        Options(**{k: v for k, v in options.items() if k in known})   # what the supervisor will read
    except (TypeError, ValueError, UsageError) as err:
        raise ValueError(f"{path}: bad options: {err}") from None
    return spec


def _read_command(run_dir: Path) -> dict:
    """command.json as submit wrote it (argv, env, env_files, path_prefix); ValueError (one line) if not."""
    path = run_dir / "command.json"
    try:
        command = json.loads(path.read_bytes())
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} is not JSON") from None

    def text(value) -> bool:
        return isinstance(value, str) and "\0" not in value

    def text_map(value) -> bool:
        return isinstance(value, dict) and all(text(k) and text(v) for k, v in value.items())

    if not (isinstance(command, dict) and isinstance(command.get("argv"), list) and command["argv"]
            and all(text(a) for a in command["argv"]) and text_map(command.get("env"))
            and text_map(command.get("env_files", {})) and text(command.get("path_prefix"))):
        raise ValueError(f"{path} is not the command submit recorded (argv, env, env_files, path_prefix)")
    return command


def _start_supervisor(run_dir: Path) -> None:
    with open(run_dir / "logs" / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simsiam_job.backends.local", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=run_dir,
        )
    # The supervisor writes its pid once it runs (a pid read from /proc too early shows an
    # empty command line); wait for that, so status never sees a run without one.
    while not (run_dir / "pid").exists():
        if proc.poll() is not None:
            log_text = (run_dir / "logs" / "supervisor.log").read_text(errors="replace").strip()
            raise BackendError(f"the local supervisor exited at once ({proc.returncode}): "
                               f"{(log_text.splitlines() or ['no output'])[-1]}")
        time.sleep(0.02)


# ---- the supervisor ------------------------------------------------------------------------------

def _stop_leftovers(run_dir: Path, grace: float, say) -> None:
    """After the launcher ended: no trainer may run on unseen. TERM (each checkpoints), then KILL."""
    left = _signal_all(run_dir, signal.SIGTERM)
    if not left:
        return
    say(f"{len(left)} trainer process(es) outlived paddle's launcher: sent SIGTERM")
    if not poll(lambda: not run_processes(run_dir), timeout=grace):
        say(f"sent SIGKILL to {len(_signal_all(run_dir, signal.SIGKILL))} process(es) still running after {grace:g} s")
        poll(lambda: not run_processes(run_dir), timeout=10)


def _read_secrets(env_files: dict[str, str]) -> dict[str, str]:
    """--env-secret values, read now, at run time (like a shell's "$(cat FILE)": without the
    trailing newline); never written anywhere by us."""
    values = {}
    for name, path in env_files.items():
        try:
            values[name] = Path(path).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or err
            raise ValueError(f"--env-secret {name}: cannot read {path}: {reason}") from None
    return values


def _start_outcomes(run_dir: Path, start: int, launcher_code: int, ranks: int) -> list[contract.Outcome]:
    """How this start's ranks ended, as they (or their keepers) recorded it; paddle's launcher
    speaks for itself when it was killed, or when it ended before any rank recorded a word."""
    outcomes = contract.read_outcomes(run_dir / OUTCOMES / str(start))
    if launcher_code < 0 or (launcher_code and not outcomes):
        outcomes.append(contract.Outcome(contract.End.CRASHED, None, launcher_code, time=time.time()))
    return outcomes


def supervise(run_dir: Path) -> int:
    """Run paddle's launcher until the group succeeds, fails for good, or is cancelled; after each
    start, contract.decide says from the ranks' outcomes whether to restart the whole group (a
    crash or lost rank: at most ``group_restarts`` times; a preemption: uncounted), fail, or
    finish; record the outcome. TERM is ignored here: this process must outlive the group to
    record how it ended."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    _write_atomic(run_dir / "pid", str(os.getpid()))
    spec = _read_json(run_dir / "spec.json") or {}
    options = spec.get("options") or {}
    bound = int(options.get("group_restarts", 3))
    grace = float(options.get("grace_seconds", 60.0))
    ranks = int(_number(spec, "ranks", 1))
    restarts = preemptions = 0
    with open(run_dir / "logs" / "launch.log", "ab") as log:
        def say(message: str) -> None:
            log.write(f"simsiam-job: {message}\n".encode(errors="backslashreplace"))
            log.flush()

        try:
            command = _read_command(run_dir)    # a bad record is this run's outcome, not a crash
            env = {**os.environ, **command["env"], RUN_ENV: str(run_dir)}
            env["PATH"] = command["path_prefix"] + os.pathsep + env.get("PATH", "")
            env.update(_read_secrets(command.get("env_files", {})))
            outcome = None
        except ValueError as err:
            say(f"error: {err}")
            outcome = {"exit_code": 2, "reason": str(err)}
        start = 0
        while outcome is None:
            if start and (run_dir / "cancelled").exists():    # cancelled between two starts
                outcome = {"exit_code": None, "reason": "cancelled by the user"}
                break
            start += 1
            env[contract.OUTCOME_DIR_ENV] = str(run_dir / OUTCOMES / str(start))
            try:
                proc = subprocess.Popen(command["argv"], cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
                launcher_code = proc.wait()
            except OSError as err:
                say(f"error: cannot start {command['argv'][0]}: {err}")
                outcome = {"exit_code": 127, "reason": f"cannot start {command['argv'][0]}: {err}"}
                break
            _stop_leftovers(run_dir, grace, say)
            decision = contract.decide(_start_outcomes(run_dir, start, launcher_code, ranks),
                                       restarts=restarts, bound=bound, ranks=ranks)
            if (run_dir / "cancelled").exists() and decision.action != contract.FINISH:
                outcome = {"exit_code": decision.exit_code, "reason": f"cancelled by the user ({decision.reason})"}
                break
            if decision.action != contract.RESTART:
                outcome = {"exit_code": decision.exit_code, "reason": decision.reason}
                break
            if decision.counted:
                restarts += 1
                say(f"group restart {restarts} of at most {bound}: {decision.reason}; starting every rank "
                    "again (they resume from the newest checkpoint)")
            else:
                preemptions += 1
                say(f"{decision.reason}; starting every rank again, not counted as a group restart")
            _write_atomic(run_dir / "restarts.json", json.dumps(
                {"restarts": restarts, "bound": bound, "preemptions": preemptions, "cause": decision.reason,
                 "time": time.time()}))
        if outcome["reason"]:
            say(f"outcome: {outcome['reason']}")
    outcome.update(restarts=restarts, preemptions=preemptions, finished=time.time())
    _write_atomic(run_dir / "exit.json", json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
