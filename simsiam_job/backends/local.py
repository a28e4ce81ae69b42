"""Local backend: ``python -m paddle.distributed.launch`` on this machine, detached from the CLI.

A run lives in ``$XDG_DATA_HOME/simsiam-job/runs/<job name>/`` (default
``~/.local/share/simsiam-job/runs/``)::

    spec.json      the job as submitted        config.yaml   the resolved trainer config
    command.json   argv + env that was run     pid           the supervisor's process id
    logs/          launch.log (paddle's launcher), workerlog.<rank> (one per trainer process)
    exit.json      exit code, written when the launcher ends    cancelled   written by cancel
    output/        the trainer's output directory (unless --output was given)

The supervisor (``python -m simsiam_job.backends.local RUN_DIR``) leads its own session, so the
job outlives the CLI; it runs the launcher, waits, and records the exit code. A supervisor that is
gone without an exit record is reported as such (UNKNOWN), never guessed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from simsiam_job.backends.base import (
    BaseBackend, FileLines, JobRef, JobStatus, JobSummary, NodeStatus, Rendered, State,
    follow_lines, option,
)
from simsiam_job.command import launch_args, trainer_args
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec, Phase
from trainer import contract

RUN_ENV = "SIMSIAM_JOB_RUN_ID"  # set on every process of a run: lets cancel find stray workers
RECENT_SECONDS = 24 * 3600      # `list` without --all hides runs that finished before this


@dataclasses.dataclass(frozen=True)
class Options:
    runs_dir: str | None = option(None, "where runs are kept (default $XDG_DATA_HOME/simsiam-job/runs)")
    grace_seconds: float = option(60.0, "cancel: seconds between SIGTERM (the trainer checkpoints) and SIGKILL")
    python: str | None = option(
        None, "Python interpreter with paddle and simsiam-train (default: the one running simsiam-job)")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
            return Path(self.options.runs_dir).expanduser().absolute()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "simsiam-job" / "runs"

    def _run_dir(self, ref: JobRef) -> Path:
        run_dir = self.runs_dir / ref.id
        if "/" in ref.id or ref.id in ("", ".", "..") or not (run_dir / "spec.json").is_file():
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
            RUN_ENV: spec.name,
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
        data_dir = payload["data_dir"]
        if data_dir is not None:
            needed = ["train"] + (["val"] if spec.phase is Phase.LINEAR_PROBE else [])
            for sub in needed:
                if not Path(data_dir, sub).is_dir():
                    raise UsageError(f"--data {spec.data}: no {sub}/ folder in {data_dir} "
                                     "(expected an ImageFolder: <data>/train/<class>/<image>)")
        pretrained = spec.config["Global"].get("pretrained_model")
        if spec.phase is Phase.LINEAR_PROBE and pretrained and not Path(pretrained).is_file():
            raise UsageError(f"pretrained encoder not found: {pretrained}")
        run_dir = Path(payload["run_dir"])
        if run_dir.exists():
            raise UsageError(f"a local run named {spec.name!r} exists already ({run_dir}); choose "
                             "another --name")
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
                      options=dataclasses.asdict(self.options))
        _write_atomic(run_dir / "spec.json", json.dumps(record, indent=2))
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
        return ref

    # ---- follow ---------------------------------------------------------------------------------

    def status(self, ref: JobRef) -> JobStatus:
        run_dir = self._run_dir(ref)
        spec = _read_json(run_dir / "spec.json") or {}
        state, reason, exit_code = self._state(run_dir)
        output_dir = spec.get("output_dir", str(run_dir / "output"))
        detail = {"run_dir": str(run_dir), "output_dir": output_dir, "exit_code": exit_code}
        node = NodeStatus(rank=0, state=state, host=socket.gethostname(), reason=reason, exit_code=exit_code)
        return JobStatus(ref=ref, state=state, reason=reason, nodes=(node,), detail=detail,
                         progress=contract.read_last_step(Path(output_dir) / contract.METRICS),
                         output=output_dir)

    def _state(self, run_dir: Path) -> tuple[State, str | None, int | None]:
        cancelled = (run_dir / "cancelled").exists()
        done = _read_json(run_dir / "exit.json")
        if done is not None:
            code = done.get("exit_code")
            if cancelled:
                return State.CANCELLED, "cancelled by the user", code
            if code == 0:
                return State.SUCCEEDED, None, code
            return State.FAILED, self._failure_reason(run_dir, code), code
        try:
            pid = int((run_dir / "pid").read_text())
        except (OSError, ValueError):
            return State.PENDING, "starting", None
        if _alive(pid, run_dir):
            if cancelled:
                return State.RUNNING, "cancelling: waiting for the trainer to checkpoint and exit", None
            if not (run_dir / "logs" / "workerlog.0").exists():
                return State.PENDING, "starting the trainer processes", None
            return State.RUNNING, None, None
        return State.UNKNOWN, (f"the run's supervisor (pid {pid}) is gone and recorded no exit status "
                               "(killed, or the machine restarted); its logs are in "
                               f"{run_dir / 'logs'}"), None

    def _failure_reason(self, run_dir: Path, code: int | None) -> str:
        """The trainer's own last error line if there is one."""
        for log in sorted((run_dir / "logs").glob("workerlog.*")) + [run_dir / "logs" / "launch.log"]:
            lines = _last_lines(log, 200)
            for line in reversed(lines):
                if "error:" in line.lower():  # "simsiam-train: error: ...", "ValueError: ..."
                    return f"exit code {code}: {line.strip()[:300]}"
        return f"exit code {code} (see: simsiam-job logs local://{run_dir.name} --all)"

    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        run_dir = self._run_dir(ref)
        ranks = int((_read_json(run_dir / "spec.json") or {}).get("ranks", 1))
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

    # ---- cancel: TERM to the run's process group; paddle's launcher passes it to every trainer
    # process, which writes a checkpoint and exits -------------------------------------------------

    def _pid(self, run_dir: Path) -> int | None:
        try:
            return int((run_dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def _stop(self, ref: JobRef) -> str | None:
        run_dir = self._run_dir(ref)
        state = self._state(run_dir)[0]
        if state.finished:
            return f"{ref} had already finished: {state.value}"
        (run_dir / "cancelled").touch()
        pid = self._pid(run_dir)
        if pid is None or not _alive(pid, run_dir):
            _kill_run_processes(ref.id, signal.SIGKILL)
            return f"cancelled {ref} (its supervisor was already gone)"
        os.killpg(pid, signal.SIGTERM)
        return None

    def _stopped(self, ref: JobRef) -> bool:
        run_dir = self._run_dir(ref)
        pid = self._pid(run_dir)
        return pid is None or not _alive(pid, run_dir)

    def _kill(self, ref: JobRef) -> str:
        run_dir = self._run_dir(ref)
        pid = self._pid(run_dir)
        if pid is not None and _alive(pid, run_dir):
            os.killpg(pid, signal.SIGKILL)
        _kill_run_processes(ref.id, signal.SIGKILL)
        if not (run_dir / "exit.json").exists():
            _write_atomic(run_dir / "exit.json", json.dumps({"exit_code": -9, "killed": True, "finished": time.time()}))
        return f"killed after {self.grace_seconds:g} s without exiting on SIGTERM"

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        rows = []
        now = time.time()
        if not self.runs_dir.is_dir():
            return rows
        for run_dir in self.runs_dir.iterdir():
            spec = _read_json(run_dir / "spec.json")
            if spec is None:
                continue
            state = self._state(run_dir)[0]
            finished = (_read_json(run_dir / "exit.json") or {}).get("finished")
            if not all_jobs and state.finished and finished and now - finished > RECENT_SECONDS:
                continue
            created = spec.get("created")
            rows.append(JobSummary(ref=JobRef(self.name, run_dir.name), name=run_dir.name,
                                   phase=spec.get("phase", "?"), state=state,
                                   age_seconds=(now - created) if created else None))
        rows.sort(key=lambda row: row.age_seconds if row.age_seconds is not None else float("inf"))
        return rows

    def output_location(self, ref: JobRef) -> str:
        spec = _read_json(self._run_dir(ref) / "spec.json") or {}
        return spec["output_dir"]


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return list(deque(f, maxlen=n))
    except OSError:
        return []


def _kill_run_processes(run_id: str, sig: int) -> None:
    """Signal every process of this user that carries the run's marker in its environment
    (paddle starts each trainer in its own session, out of reach of the supervisor's group)."""
    marker = f"{RUN_ENV}={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), sig)
        except (OSError, ProcessLookupError):
            continue


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


def supervise(run_dir: Path) -> int:
    """Run the launcher, wait for it, record its exit code. TERM is ignored here: it also reaches
    the launcher (same process group), and this process must outlive it to record the outcome."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    _write_atomic(run_dir / "pid", str(os.getpid()))
    command = json.loads((run_dir / "command.json").read_text())
    env = {**os.environ, **command["env"]}
    env["PATH"] = command["path_prefix"] + os.pathsep + env.get("PATH", "")
    with open(run_dir / "logs" / "launch.log", "ab") as log:
        try:
            env.update(_read_secrets(command.get("env_files", {})))
        except ValueError as err:
            log.write(f"error: {err}\n".encode())
            _write_atomic(run_dir / "exit.json", json.dumps({"exit_code": 2, "finished": time.time()}))
            return 0
        try:
            proc = subprocess.Popen(command["argv"], cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
            code = proc.wait()
        except OSError as err:
            log.write(f"error: cannot start {command['argv'][0]}: {err}\n".encode())
            code = 127
    _write_atomic(run_dir / "exit.json", json.dumps({"exit_code": code, "finished": time.time()}))
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
