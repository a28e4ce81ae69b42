"""Slurm backend: one batch script per job (slurm/job.sbatch.j2), driven by Slurm's own commands.

Each job gets a directory on the shared filesystem, ``<job_root>/<name>/``, holding what was
submitted (``job.sbatch``, the resolved trainer ``config.yaml``, ``job.json``) and the logs
(``logs/rank<N>-<host>.log`` per node, ``logs/batch-*.out|err`` for the script itself).
Jobs are found again by the marker in their ``--comment`` (``simsiam-job:<phase>``), not by a
local database; ``slurm://JOBID`` is the reference.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from simsiam_job import command, templates, validate
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
)
from simsiam_job.backends.slurm.commands import _config_hint, _one_line, _run
from simsiam_job.backends.slurm.parse import (
    LIST_FORMAT,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    SlurmJob,
    _common_state,
    _decisions,
    _reason,
    marker,
    parse_job,
    parse_list,
    parse_marker,
)
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec
from simsiam_job.util import tail_lines, write_json_atomic, write_text_atomic
from trainer import contract

TEMPLATE = "slurm/job.sbatch.j2"
SCRIPT, CONFIG, META = "job.sbatch", "config.yaml", "job.json"


@dataclasses.dataclass(frozen=True)
class Options:
    partition: str = option("", "partition (sbatch --partition); empty: the cluster's default")
    account: str = option("", "account to charge (sbatch --account)")
    qos: str = option("", "quality of service (sbatch --qos)")
    time: str = option("", "time limit, e.g. 2-00:00:00 (sbatch --time); empty: the partition's")
    mem: str = option("", "memory per node, e.g. 200G, 0 = all of it (sbatch --mem)")
    cpus_per_task: int = option(
        0, "CPUs for each node's task (sbatch --cpus-per-task); 0: cpus_per_gpu x GPUs, --procs on CPU")
    cpus_per_gpu: int = option(8, "CPUs per GPU when cpus_per_task is 0 (trainer + data loader workers)")
    gpu_directive: Literal["gpus-per-node", "gres"] = option(
        "gpus-per-node", "how GPUs are requested: --gpus-per-node=G or --gres=gpu:G")
    venv: str = option("", "Python environment on the nodes to activate (PATH/bin/activate)")
    container: Literal["none", "pyxis", "apptainer"] = option(
        "none", "run the trainer in --image via pyxis/enroot (srun --container-image) or apptainer exec")
    container_mounts: tuple[str, ...] = option(
        (), "extra paths mounted into the container (the job, data and output folders always are)")
    job_root: str = option("~/simsiam-jobs",
                           "job directories (script, config, logs) on the shared filesystem")
    port: int = option(0, "rendezvous port on the first node; 0: derived from the job id")
    signal_grace: int = option(300, "seconds before the time limit when the trainer gets TERM to checkpoint")
    requeue: bool = option(True, "let Slurm requeue the job after preemption or node failure")
    group_restarts: int = option(3, GROUP_RESTARTS_HELP + " (in the same allocation)")
    cancel_grace: int = option(60, "seconds cancel waits after TERM before it sends KILL")
    command_timeout: float = option(30.0, "seconds any Slurm command (sbatch, squeue, ...) may take")

    def __post_init__(self) -> None:
        for name in ("partition", "account", "qos"):
            _check_word(getattr(self, name), name, _SLURM_NAME)
        _check_word(self.time, "time", _TIME)
        _check_word(self.mem, "mem", _MEM)
        for name in ("cpus_per_task", "cpus_per_gpu", "port", "signal_grace", "cancel_grace",
                     "group_restarts"):
            if getattr(self, name) < 0:
                raise UsageError(f"slurm option {name} must be >= 0, got {getattr(self, name)}")
        if not self.command_timeout > 0:
            raise UsageError(f"slurm option command_timeout must be > 0, got {self.command_timeout}")
        if self.group_restarts > validate.MAX_GROUP_RESTARTS:
            raise UsageError(f"slurm option group_restarts must be at most {validate.MAX_GROUP_RESTARTS}, "
                             f"got {self.group_restarts}")
        if self.port > 65535:
            raise UsageError(f"slurm option port must be at most 65535, got {self.port}")


# What may stand in an #SBATCH line: Slurm names, times and sizes (no spaces, quotes or newlines).
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:+@-]*$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^$|^UNLIMITED$")
_MEM = re.compile(r"^\d+[KMGT]?$|^$")
# Job directories appear in #SBATCH --output, where '%' is a pattern and spaces end the value.
_PATH_IN_DIRECTIVE = re.compile(r"^[A-Za-z0-9_./+@,=:-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_word(value: str, what: str, pattern: re.Pattern) -> None:
    if not pattern.match(value):
        raise UsageError(f"slurm option {what}={value!r} is not a valid Slurm value")


# Expressions each node's shell expands (command.launch_args receives these placeholders; NUL can
# never come from a user's path or config value, so no user text is ever expanded).
_NODE_EXPR = {
    "\0RANK\0": '"$SLURM_NODEID"',
    "\0NNODES\0": '"$SLURM_NNODES"',
    "\0MASTER\0": '"$MASTER_ADDR:$MASTER_PORT"',
}
_NODE_EXPR_RE = re.compile("|".join(re.escape(k) for k in _NODE_EXPR))


def _node_word(arg: str) -> str:
    """Shell-quote one argument, expanding only our placeholders (as double-quoted variables)."""
    parts, pos = [], 0
    for m in _NODE_EXPR_RE.finditer(arg):
        if m.start() > pos:
            parts.append(shlex.quote(arg[pos:m.start()]))
        parts.append(_NODE_EXPR[m.group()])
        pos = m.end()
    if pos < len(arg) or not parts:
        parts.append(shlex.quote(arg[pos:]))
    return "".join(parts)


def _command_lines(*commands: list[str]) -> str:
    """Quoted words, each command and each option on its own continued line, for a person to read."""
    lines = []
    for words in commands:
        for i, word in enumerate(words):
            if i == 0 or word.startswith("--") or word in ("-o", "-c"):
                lines.append([])
            lines[-1].append(_node_word(word))
    return " \\\n    ".join(" ".join(line) for line in lines if line)


def _abs_path(value: str, what: str) -> str:
    if "\0" in value or "\n" in value:
        raise UsageError(f"{what} {value!r}: a path cannot contain NUL or newline characters")
    return os.path.abspath(os.path.expanduser(value))


class SlurmBackend(Backend[Options]):
    name: ClassVar[str] = "slurm"
    options_class: ClassVar[type] = Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self.grace_seconds = self.options.cancel_grace

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return _run(args, timeout=self.options.command_timeout, **kwargs)

    # ---- render / submit -----------------------------------------------------------------------

    def job_dir(self, spec: JobSpec) -> str:
        root = _abs_path(self.options.job_root, "slurm option job_root")
        if not _PATH_IN_DIRECTIVE.match(root):
            raise UsageError(
                f"slurm option job_root={root!r}: use a path of letters, digits and ._/+@,=:- only "
                "(it appears in #SBATCH lines, where spaces and '%' have other meanings)")
        return f"{root}/{spec.name}"

    def render(self, spec: JobSpec) -> Rendered:
        o = self.options
        job_dir = self.job_dir(spec)
        data_dir = _abs_path(spec.data, "--data") if spec.data else None
        output_root = _abs_path(spec.output, "--output") if spec.output else None
        output_dir = f"{output_root}/{spec.name}" if output_root else f"{job_dir}/output"
        for key, _ in spec.env:
            if not _ENV_NAME.match(key):
                raise UsageError(f"--env {key!r}: not a valid environment variable name")
        if o.container != "none" and not spec.image:
            raise UsageError(f"slurm option container={o.container} needs --image")

        mounts = [job_dir] + [p for p in (data_dir, output_root) if p] + [
            _abs_path(m, "slurm option container_mounts") for m in o.container_mounts]
        if o.container != "none":
            for m in mounts:
                if "," in m or ":" in m:
                    raise UsageError(f"container mount {m!r}: paths with ',' or ':' cannot be mounted")

        launch = command.launch_args(
            spec, master="\0MASTER\0", nnodes="\0NNODES\0", node_rank="\0RANK\0",
            log_dir=f"{job_dir}/logs/paddle-rank\0RANK\0")
        train = command.trainer_args(
            spec, config_path=f"{job_dir}/{CONFIG}", data_dir=data_dir, output_dir=output_dir)
        prefix = []
        if o.container == "apptainer":
            prefix = ["apptainer", "exec"] + (["--nv"] if spec.gpus > 0 else []) + [
                "--bind", ",".join(mounts), spec.image]
        node_command = _command_lines(["exec", *prefix], launch, train)
        # The batch script decides between restart, failure and success with the trainer's own
        # decision function, run by the trainer's Python (in the container, where there is one).
        decide_prefix = prefix or (["srun", "--nodes=1", "--ntasks=1", f"--container-image={spec.image}",
                                    f"--container-mounts={','.join(mounts)}"]
                                   if o.container == "pyxis" else [])
        decide = " ".join(shlex.quote(w)
                          for w in [*decide_prefix, "python", "-m", "trainer.contract", "decide"])
        # One task per node runs all its trainers: a GPU's trainer and its data loader workers need
        # cores of their own, and so does each CPU process (where Slurm confines tasks by cgroups).
        if o.cpus_per_task:
            cpus_per_task = o.cpus_per_task
        elif spec.gpus:
            cpus_per_task = o.cpus_per_gpu * spec.gpus
        else:
            cpus_per_task = spec.procs_per_node if spec.procs_per_node > 1 else 0

        script = templates.render_text(
            TEMPLATE,
            name=spec.name, phase=spec.phase.value, marker=marker(spec.phase.value),
            nodes=spec.nodes, gpus=spec.gpus, gpu_directive=o.gpu_directive,
            cpus_per_task=cpus_per_task, mem=o.mem, time=o.time, partition=o.partition,
            account=o.account, qos=o.qos, job_dir=job_dir, log_dir=f"{job_dir}/logs",
            signal_grace=o.signal_grace, requeue=o.requeue, venv=_abs_path(o.venv, "venv") if o.venv else "",
            env=list(spec.env), env_files=list(spec.env_secrets), port=o.port, container=o.container,
            image=spec.image, mounts=mounts, node_command=node_command, group_restarts=o.group_restarts,
            decide=decide, ranks=spec.world_size,
        )
        meta = json.dumps({"name": spec.name, "phase": spec.phase.value, "nodes": spec.nodes,
                           "output_dir": output_dir, "data_dir": data_dir}, indent=2) + "\n"
        return Rendered(text=script, files={SCRIPT: script, CONFIG: spec.config_yaml, META: meta},
                        payload=script)

    def send(self, spec: JobSpec, rendered: Rendered, dry_run: str | None) -> JobRef:
        job_dir = Path(self.job_dir(spec))      # what submit needs, checked by dry runs too
        if job_dir.exists():
            raise UsageError(
                f"job directory {job_dir} already exists (a job named {spec.name!r} ran before): "
                "choose another --name, or remove the directory")
        creatable_dir(job_dir.parent, "slurm option job_root")
        if dry_run == "client":
            return JobRef(self.name, "dry-run")
        if dry_run == "server":
            # sbatch --test-only checks the script against the cluster and queues nothing.
            self._run(["sbatch", "--test-only"], input=rendered.text)
            return JobRef(self.name, "dry-run")

        try:
            # Private: the script holds the --env values, paddle's logs copy the environment.
            job_dir.mkdir(mode=0o700, parents=True)
            (job_dir / "logs").mkdir()
        except OSError as err:
            raise UsageError(f"cannot create the job directory {job_dir}: {err.strerror}") from None
        try:
            for fname, text in rendered.files.items():
                write_text_atomic(job_dir / fname, text)
            proc = self._run(["sbatch", "--parsable", SCRIPT], cwd=str(job_dir))
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)  # nothing was queued: let the name be reused
            raise
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch: unexpected answer {proc.stdout.strip()!r}")
        self._record_attempt(job_dir, job_id)
        return JobRef(self.name, job_id)

    @staticmethod
    def _record_attempt(job_dir: Path, job_id: str) -> None:
        """job.json lists the job ids of every attempt, oldest first."""
        meta = json.loads((job_dir / META).read_text())
        meta["attempts"] = [*meta.get("attempts", []), job_id]
        write_json_atomic(job_dir / META, meta)

    # ---- resume: the same script, config and output directory, as a new job --------------------

    def _resume(self, ref: JobRef, status: JobStatus) -> JobRef:
        job = self._job(ref)
        meta = self._meta(job)
        attempts = meta.get("attempts") or [ref.id]
        if attempts[-1] != ref.id:
            raise UsageError(f"{ref} was resumed already as slurm://{attempts[-1]}: resume that one")
        job_dir = Path(job.workdir)
        phase = (parse_marker(job.comment) or (meta.get("phase", "pretrain"), 1))[0]
        proc = self._run(["sbatch", "--parsable", f"--comment={marker(phase, status.attempt + 1)}", SCRIPT],
                         cwd=str(job_dir))
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch: unexpected answer {proc.stdout.strip()!r}")
        self._record_attempt(job_dir, job_id)
        return JobRef(self.name, job_id)

    # ---- following a job -----------------------------------------------------------------------

    def _job(self, ref: JobRef) -> SlurmJob:
        job_id = ref.id
        if not re.fullmatch(r"\d+", job_id):
            raise UsageError(f"{ref}: a Slurm job id is a number")
        squeue = self._run(["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT], check=False)
        if squeue.returncode != 0 and "Invalid job id" not in squeue.stderr:
            raise BackendError(f"squeue: {_one_line(squeue.stderr) or f'exit code {squeue.returncode}'}"
                               f"{_config_hint(squeue.stderr)}")
        scontrol = self._run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
        job = parse_job(job_id, squeue.stdout, scontrol)
        if job is None:  # finished and forgotten by slurmctld: accounting, where there is any
            sacct = self._run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", SACCT_FIELDS], check=False)
            job = parse_job(job_id, "", "", sacct.stdout if sacct.returncode == 0 else "")
        if job is None:
            raise NotFoundError(
                f"{ref}: no such job (Slurm forgets finished jobs after MinJobAge unless accounting is on)")
        return job

    def status(self, ref: JobRef) -> JobStatus:
        job = self._job(ref)
        state = _common_state(job.state)
        hosts = (self._run(["scontrol", "show", "hostnames", job.nodelist]).stdout.split()
                 if job.nodelist else [])
        nodes = tuple(NodeStatus(rank=i, state=state, host=h, restarts=job.restarts)
                      for i, h in enumerate(hosts))
        output_dir = self._meta(job).get("output_dir")
        decisions = _decisions(job)
        restarts = decisions[-1]["restarts"] if decisions else 0
        preemptions = sum(1 for d in decisions
                          if d.get("action") == contract.RESTART and not d.get("counted"))
        reason = _reason(job.state, job.reason, job.restarts, job.exit_code)
        last = decisions[-1] if decisions else {}
        if state is State.FAILED and last.get("action") == contract.FAIL:
            reason = last.get("reason")     # the batch script's verdict names the rank and why
        elif state is State.RUNNING and last.get("action") == contract.RESTART:
            reason = (f"group restart {restarts} of at most {last.get('bound')}"
                      + (f", preempted {preemptions} time{'s' if preemptions != 1 else ''}"
                         if preemptions else "")
                      + f", after: {last.get('reason')}")
        return JobStatus(
            ref=ref, state=state, reason=reason,
            nodes=nodes, progress=self._progress(job, output_dir), output=output_dir,
            attempt=(parse_marker(job.comment) or ("", 1))[1],
            detail={"slurm_state": job.state, "slurm_reason": job.reason, "name": job.name,
                    "job_dir": job.workdir, "restarts": job.restarts, "exit_code": job.exit_code,
                    "group_restarts": restarts, "preemptions": preemptions},
        )

    def _progress(self, job: SlurmJob, output_dir: str | None) -> dict | None:
        """The trainer's newest step record: from metrics.jsonl on the shared filesystem, else from
        rank 0's progress lines in its log (an output directory the login node cannot see)."""
        record = contract.read_last_step(Path(output_dir, contract.METRICS)) if output_dir else None
        if record is None and job.workdir:
            logs = self._log_files(job.workdir, 0)
            if logs:
                record = contract.last_progress(tail_lines(logs[-1]))
        return record

    def _log_files(self, job_dir: str, rank: int) -> list[Path]:
        files = list(Path(job_dir, "logs").glob(f"rank{rank}-*.log"))
        return sorted(files, key=lambda p: p.stat().st_mtime)

    @staticmethod
    def _meta(job: SlurmJob) -> dict:
        """job.json of the job's directory ({} when the job was not submitted by simsiam-job)."""
        try:
            meta = json.loads(Path(job.workdir, META).read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _nodes(self, job: SlurmJob) -> int:
        nodes = self._meta(job).get("nodes")
        if not isinstance(nodes, int):
            raise NotFoundError(f"slurm://{job.id}: {job.workdir} is not a simsiam-job directory")
        return nodes

    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        job = self._job(ref)
        nodes = self._nodes(job)
        rank = 0 if rank is None else rank
        if not all_ranks and not 0 <= rank < nodes:
            raise UsageError(f"--rank {rank}: {ref} has {nodes} node(s), ranks 0..{nodes - 1}")
        # A requeue on other nodes adds files for the same rank: each rank reads all of its own.
        readers = {r: FileLines(lambda r=r: self._log_files(job.workdir, r), tail)
                   for r in (range(nodes) if all_ranks else [rank])}

        def read(final: bool) -> list[str]:
            return [f"[rank {r}] {ln}" if all_ranks else ln
                    for r, reader in readers.items() for ln in reader.read(final)]

        yield from follow_lines(read, lambda: _common_state(self._job(ref).state).finished,
                                follow=follow, interval=1.0)

    # ---- cancel: scancel sends TERM to every process (the trainer checkpoints) ----------------

    def _stop(self, ref: JobRef) -> str | None:
        job = self._job(ref)
        if _common_state(job.state).finished:
            return f"{ref} already finished ({job.state})"
        self._run(["scancel", ref.id])
        return None

    def _stopped(self, ref: JobRef) -> bool:
        return _common_state(self._job(ref).state).finished

    def _kill(self, ref: JobRef) -> str:
        self._run(["scancel", "--signal=KILL", "--full", ref.id], check=False)
        return f"still running {self.grace_seconds:g} s after TERM, killed"

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        # Every job slurmctld still knows (finished ones for MinJobAge): yours, or all users'.
        args = ["squeue", "-h", "--states=all", "-o", LIST_FORMAT] + ([] if all_jobs else ["--me"])
        return parse_list(self._run(args).stdout, dt.datetime.now())

    def output_location(self, ref: JobRef) -> str:
        job = self._job(ref)
        output_dir = self._meta(job).get("output_dir")
        if not isinstance(output_dir, str):
            raise NotFoundError(f"{ref}: {job.workdir} is not a simsiam-job directory")
        return output_dir
