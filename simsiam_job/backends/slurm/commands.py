"""Running Slurm's own commands (sbatch, squeue, scontrol, sacct, scancel): each bounded by a
timeout, its failure one line with a hint."""

from __future__ import annotations

import os
import re
import subprocess

from simsiam_job.errors import BackendError


def _one_line(text: str) -> str:
    """Slurm's message, one line: the most specific 'error:' line, without the command's prefix."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    failed = [ln for ln in lines if "failed:" in ln] or [ln for ln in lines if "error" in ln] or lines
    line = failed[-1]
    return re.sub(r"^\w+: (error: )?", "", line)


# How Slurm's commands say they found no configuration (they retry for a minute first).
_NO_CONFIG = ("Unable to process configuration file", "cannot stat file", "ClusterName needs to be specified")


def _config_hint(stderr: str) -> str:
    if any(sign in stderr for sign in _NO_CONFIG):
        return ("; no Slurm configuration: set SLURM_CONF to the cluster's slurm.conf, or run this "
                "on a login node of the cluster")
    return ""


def _run(args: list[str], *, timeout: float, cwd: str | None = None, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess:
    """One Slurm command, bounded by ``timeout``; its failure becomes one line with a hint."""
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        # Slurm would retry for a minute before saying so.
        raise BackendError(f"SLURM_CONF={conf} does not exist: point it at the cluster's slurm.conf")
    try:
        proc = subprocess.run(args, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BackendError(f"{args[0]} not found: is Slurm's client installed and on PATH?") from None
    except subprocess.TimeoutExpired as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        raise BackendError(f"{args[0]} did not answer in {timeout:g} s: is slurmctld reachable?"
                           f"{_config_hint(said)} (--set command_timeout=SECONDS to wait longer)") from None
    if check and proc.returncode != 0:
        msg = _one_line(proc.stderr) or _one_line(proc.stdout) or f"exit code {proc.returncode}"
        raise BackendError(f"{args[0]}: {msg}{_config_hint(proc.stderr)}")
    return proc
