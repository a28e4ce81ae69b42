"""simsiam-job: submit SimSiam jobs to Kubernetes, Slurm or this machine, and follow them.

Start-up cost matters (it runs on laptops, in shell completion): this module imports only typer;
Jinja, YAML, the trainer's config module and the backends load inside the commands that use them.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated

import typer

from simsiam_job import __version__
from simsiam_job.cli_flags import BackendArg, Overrides, PhaseArg, Sets, job_spec, with_job_flags

app = typer.Typer(
    name="simsiam-job",
    help="Run SimSiam pretraining and linear probes on Kubernetes, Slurm or this machine.\n\n"
         "Example: simsiam-job submit pretrain --backend kubernetes --nodes 2 --gpus 8",
    rich_markup_mode=None,   # plain help: rich costs ~100 ms of start-up
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class DryRun(str, Enum):
    client = "client"
    server = "server"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"simsiam-job {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Run SimSiam pretraining and linear probes on Kubernetes, Slurm or this machine.

    \b
    Examples:
      simsiam-job quickstart                          # a real small run on this machine
      simsiam-job submit pretrain --gpus 0 --wait     # local, CPU
      simsiam-job submit pretrain --backend kubernetes --nodes 2 --gpus 8
      simsiam-job status kubernetes://ml/simsiam-pretrain-x7k2p
    """


@app.command()
@with_job_flags
def submit(
    phase: Annotated[PhaseArg, typer.Argument(
        help="pretrain, linear-probe or smoke (a short check of the cluster).")],
    flags: dict,    # the job flags shared with render (cli_flags.JOB_FLAGS)
    dry_run: Annotated[DryRun | None, typer.Option(
        "--dry-run", help="client: validate and print the job reference only; server: also let "
                          "the backend validate (Kubernetes server-side dry run).")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job to its end with a progress "
                                                             "line; exit with its outcome.")] = False,
) -> None:
    """Submit a job and print its reference (local://ID, kubernetes://NS/NAME, slurm://JOBID).

    \b
    Examples:
      simsiam-job submit pretrain --gpus 0 --procs 2 -c my.yaml --data ./fmnist --wait
      simsiam-job submit pretrain --backend kubernetes --nodes 2 --gpus 8 --data pvc:imagenet
      simsiam-job submit linear-probe --from local://simsiam-pretrain-x7k2p --data ./fmnist
    """
    from simsiam_job.backends import get_backend

    spec = job_spec(phase, flags, check_from=dry_run is None)
    job_backend = get_backend(spec.backend, spec.options)
    ref = job_backend.submit(spec, dry_run=dry_run.value if dry_run else None)
    if dry_run:
        _err(f"dry run ({dry_run.value}): {ref} would be created; nothing was started")
        typer.echo(str(ref))
        return
    job_backend.remember(ref)  # a backend with a run index: later commands find it by its JOBREF alone
    typer.echo(str(ref))
    if wait:
        raise typer.Exit(_follow(ref, job_backend))
    _err(f"follow it:  {_follow_hint(ref)}")


@app.command()
@with_job_flags
def render(
    phase: Annotated[PhaseArg, typer.Argument(
        help="pretrain, linear-probe or smoke (a short check of the cluster).")],
    flags: dict,    # the job flags shared with render (cli_flags.JOB_FLAGS)
    out: Annotated[str | None, typer.Option(
        "--out", help="Write the files into this directory instead of printing.")] = None,
) -> None:
    """Print exactly what submit would send, without contacting any cluster.

    Kubernetes: a YAML stream (pipe it to `kubectl apply -f -`); Slurm: the batch script;
    local: the command line and environment.

    \b
    Examples:
      simsiam-job render pretrain --backend kubernetes --nodes 16 --gpus 8 | kubectl apply -f -
      simsiam-job render pretrain --backend slurm --nodes 2 --gpus 8 --out job/
    """
    from simsiam_job.backends import get_backend

    spec = job_spec(phase, flags, check_from=False)
    rendered = get_backend(spec.backend, spec.options).render(spec)
    if out is None:
        sys.stdout.write(rendered.text)
        return
    from pathlib import Path

    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for file_name, content in rendered.files.items():
            (out_dir / file_name).write_text(content)
    except OSError as err:
        from simsiam_job.errors import UsageError

        raise UsageError(f"--out {out}: {err.strerror}: {err.filename}") from None
    _err(f"wrote {', '.join(sorted(rendered.files))} to {out_dir}")


MAX_TAIL = 10**7   # lines; more is "everything", which logs without --tail prints

JobRefArg = Annotated[str, typer.Argument(
    metavar="JOBREF", help="local://ID, kubernetes://NAMESPACE/NAME or slurm://JOBID.")]


def _backend_for(ref_text: str):
    from simsiam_job.backends import backend_for
    from simsiam_job.backends.base import JobRef

    ref = JobRef.parse(ref_text)
    return ref, backend_for(ref)


@app.command()
def status(
    jobref: JobRefArg,
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a job's state (QUEUED, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN) and its nodes.

    \b
    Example:
      simsiam-job status local://simsiam-pretrain-x7k2p --json
    """
    ref, backend = _backend_for(jobref)
    st = backend.status(ref)
    if json_:
        import dataclasses
        import json

        data = dataclasses.asdict(st)
        data["ref"] = str(st.ref)
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo(f"{st.ref}  {st.state.value}" + (f"  attempt {st.attempt}" if st.attempt > 1 else "")
               + (f"  ({st.reason})" if st.reason else ""))
    from simsiam_job.progress import format_progress

    progress = format_progress(st.progress)
    if progress:
        typer.echo(f"  progress: {progress}")
    if st.output:
        typer.echo(f"  output: {st.output}")
    for node in st.nodes:
        extra = [f"host {node.host}" if node.host else "",
                 f"restarts {node.restarts}" if node.restarts else "",
                 f"exit {node.exit_code}" if node.exit_code is not None else "", node.reason or ""]
        typer.echo(f"  node {node.rank}: {node.state.value}  " + "  ".join(e for e in extra if e))


@app.command()
def logs(
    jobref: JobRefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    rank: Annotated[int | None, typer.Option("--rank", "-r", help="Which rank (default 0).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="All ranks, lines prefixed [rank N].")] = False,
    tail: Annotated[int | None, typer.Option("--tail", help="Start with the last N lines.")] = None,
) -> None:
    """Print a job's logs (rank 0 unless --rank or --all).

    \b
    Example:
      simsiam-job logs -f --all local://simsiam-pretrain-x7k2p
    """
    from simsiam_job.errors import UsageError

    if all_ and rank is not None:
        raise UsageError("--rank and --all exclude each other")
    if tail is not None and not 0 <= tail <= MAX_TAIL:
        raise UsageError(f"--tail must be between 0 and {MAX_TAIL}, got {tail}")
    ref, backend = _backend_for(jobref)
    for line in backend.logs(ref, rank=rank if rank is not None else 0, all_ranks=all_, follow=follow,
                             tail=tail):
        typer.echo(line)


@app.command()
def cancel(jobref: JobRefArg) -> None:
    """Stop a job: SIGTERM first (the trainer writes a checkpoint), then SIGKILL after a grace period.

    \b
    Example:
      simsiam-job cancel slurm://4242
    """
    ref, backend = _backend_for(jobref)
    typer.echo(backend.cancel(ref))


@app.command()
def resume(
    jobref: JobRefArg,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the new attempt to its end; exit "
                                                             "with its outcome.")] = False,
) -> None:
    """Start a new attempt of a FAILED or CANCELLED job: same config and output location, continuing
    from its newest valid checkpoint. Prints the attempt's reference.

    \b
    Example:
      simsiam-job resume local://simsiam-pretrain-x7k2p
    """
    ref, backend = _backend_for(jobref)
    new_ref = backend.resume(ref)
    typer.echo(str(new_ref))
    _err(f"{new_ref}: attempt {backend.status(new_ref).attempt}, resuming from the newest checkpoint "
         f"in {backend.output_location(new_ref)}")
    if wait:
        raise typer.Exit(_follow(new_ref, backend))


@app.command("list")
def list_(
    backend: Annotated[BackendArg | None, typer.Option(
        "--backend", "-b",
        help="Only this backend (default: local and the configured default).")] = None,
    all_: Annotated[bool, typer.Option(
        "--all", "-a",
        help="Older finished runs too (local); all namespaces (kubernetes); all users (slurm).")] = False,
) -> None:
    """List jobs created by simsiam-job, newest first.

    \b
    Example:
      simsiam-job list --backend kubernetes --all
    """
    from simsiam_job import defaults
    from simsiam_job.backends import get_backend, options_class

    if backend is not None:
        names = [backend.value]
    else:
        default = defaults.top_level_default("backend", defaults.load_user_config()) or "local"
        names = ["local"] + ([default] if default != "local" else [])
    from simsiam_job.errors import BackendError, UsageError

    rows, failed = [], []
    for name in names:
        options = defaults.resolve_options(name, options_class(name))
        try:
            rows += get_backend(name, options).list_everywhere(all_jobs=all_)
        except (BackendError, UsageError) as err:  # one unreachable cluster must not hide the other jobs
            if backend is not None:
                raise
            failed.append(f"error: {name}: {' '.join(str(err).split())}")
    for line in failed:
        _err(line)
    if not rows:
        _err("no jobs" + ("" if all_ else " (add --all for older ones)"))
        raise typer.Exit(1 if failed else 0)
    table = [("JOBREF", "PHASE", "STATE", "ATTEMPT", "AGE")] + [
        (str(r.ref), r.phase, r.state.value, str(r.attempt), _age(r.age_seconds)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if failed:
        raise typer.Exit(1)


@app.command()
def options(backend: Annotated[BackendArg, typer.Argument(help="local, kubernetes or slurm.")],
            set_: Sets = None) -> None:
    """List a backend's options (set with --set KEY=VALUE, SIMSIAM_JOB_<BACKEND>_<KEY> or the config file).

    \b
    Example:
      simsiam-job options kubernetes
    """
    from simsiam_job import defaults
    from simsiam_job.backends import options_class

    cls = options_class(backend.value)
    current = defaults.resolve_options(backend.value, cls, set_ or ())
    for field_name, (_, help_text) in defaults.option_fields(cls).items():
        typer.echo(f"{field_name:24} {getattr(current, field_name)!r:28} {help_text}")
    _err(f"config file: {defaults.config_path()} (section {backend.value}:)")


@app.command()
def quickstart(
    workdir: Annotated[str, typer.Option(
        "--workdir", help="Where the data set and outputs go.")] = "quickstart",
    procs: Annotated[int, typer.Option("--procs", metavar="P", help="Trainer processes (CPU).")] = 2,
    train: Annotated[int, typer.Option("--train", help="Training images (balanced classes).")] = 5000,
    val: Annotated[int, typer.Option("--val", help="Validation images.")] = 2000,
    override: Overrides = None,
) -> None:
    """Prepare Fashion-MNIST, pretrain SimSiam and linear-probe it on this machine, then compare.

    Prints a table: linear-probe top-1 of the SimSiam encoder vs a randomly initialised encoder
    vs logistic regression on raw pixels.

    \b
    Example:
      simsiam-job quickstart --workdir ~/simsiam-quickstart
    """
    from simsiam_job.quickstart import run

    raise typer.Exit(run(workdir=workdir, procs=procs, echo=typer.echo, err=_err, n_train=train, n_val=val,
                         extra_overrides=tuple(override or ())))


# ---- following a job ---------------------------------------------------------------------------

def _err(message: str) -> None:
    typer.echo(message, err=True)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _follow_hint(ref) -> str:
    return f"simsiam-job status {ref}   |   simsiam-job logs -f {ref}   |   simsiam-job cancel {ref}"


def _follow(ref, backend) -> int:
    """--wait: follow the job to its end; exit 0 only if it SUCCEEDED. Ctrl-C stops following only."""
    from simsiam_job.backends.base import State
    from simsiam_job.progress import follow

    try:
        state = follow(backend, ref)
    except KeyboardInterrupt:
        # The job runs detached (its own session, or a cluster): say so, or a user thinks it stopped.
        _err(("\n" if sys.stderr.isatty() else "") + f"stopped waiting; {ref} keeps running. "
             f"Follow or stop it:  {_follow_hint(ref)}")
        return 130
    if state is State.SUCCEEDED:
        _err(f"{ref} SUCCEEDED; output: {backend.output_location(ref)}")
        return 0
    return 1


def main(argv: list[str] | None = None) -> None:
    """Entry point: our errors become one line ``error: ...`` and their exit code, never a traceback."""
    from simsiam_job.errors import BackendError, NotFoundError, TemplateError, UsageError

    try:
        code = app(args=argv, prog_name="simsiam-job", standalone_mode=False)
    except (UsageError, NotFoundError, BackendError, TemplateError) as err:
        _err(f"error: {' '.join(str(err).split())}")
        code = err.code
    except OSError as err:  # a path the user gave (--set runs_dir, --output) that cannot be written
        where = f"{err.filename}: " if err.filename else ""
        _err(f"error: {where}{err.strerror or err}")
        code = 2
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # noqa: BLE001  (the one place that turns any failure into one line)
        name = type(err).__name__
        if name == "Abort":
            code = 130
        elif hasattr(err, "format_message") and hasattr(err, "exit_code"):  # Click's usage errors
            _err(f"error: {' '.join(err.format_message().split())}")
            code = err.exit_code
        elif os.environ.get("SIMSIAM_JOB_DEBUG"):
            raise
        else:
            _err(f"error: internal error: {name}: {' '.join(str(err).split())} "
                 "(run with SIMSIAM_JOB_DEBUG=1 for the traceback, and please report it)")
            code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
