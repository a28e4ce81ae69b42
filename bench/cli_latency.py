#!/usr/bin/env python3
"""CLI latency and memory: simsiam-job vs TorchX (a benchmark, not a test).

Measures the median wall time of

    simsiam-job --help
    simsiam-job render pretrain --backend kubernetes --nodes 16 --gpus 8 --output results
    torchx --help
    torchx run --dryrun --workspace "" -s kubernetes -cfg queue=default dist.ddp -j 16x8 --script app.py

and the peak resident memory (ru_maxrss of each process) of the two dry runs. TorchX lives in its
own virtual environment with the kubernetes client (created on first use under ~/.cache/), so
neither tool's imports affect the other. Targets: render <= 0.5x TorchX's dry run, --help no
slower than TorchX's, render's peak memory <= TorchX's.

    python bench/cli_latency.py [--repeat 15] [--torchx-venv DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TORCHX_VENV = Path.home() / ".cache" / "simsiam-bench" / "torchx-venv"


def ensure_torchx(venv: Path) -> Path:
    torchx = venv / "bin" / "torchx"
    if not torchx.exists():
        print(f"installing torchx and the kubernetes client into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torchx", "kubernetes"], check=True)
    return torchx


def measure(argv: list[str], *, repeat: int, cwd: Path, env: dict) -> tuple[list[float], int, list[float]]:
    """(wall times in seconds, peak RSS in KiB, CPU times in seconds) over ``repeat`` runs after one
    warm-up. CPU time (user + sys) is the steadier number on a busy machine."""
    times, peak, cpu = [], 0, []
    for i in range(repeat + 1):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if code != 0:
            raise SystemExit(f"{' '.join(argv)} exited {code}:\n{err[-2000:]}")
        if i:  # the first run warms the page cache and .pyc files
            times.append(elapsed)
            cpu.append(usage.ru_utime + usage.ru_stime)
            peak = max(peak, usage.ru_maxrss)
    return times, peak, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--torchx-venv", type=Path, default=DEFAULT_TORCHX_VENV)
    args = parser.parse_args()

    torchx = ensure_torchx(args.torchx_venv)
    ours = Path(sys.executable).parent / "simsiam-job"
    backend = "kubernetes" if (REPO / "simsiam_job" / "backends" / "kubernetes").is_dir() else "local"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "app.py").write_text("print('hello')\n")
        (work / "home").mkdir()
        env = {"PATH": os.environ["PATH"], "HOME": str(work / "home"), "LANG": "C.UTF-8"}
        cases = {
            "simsiam-job --help": [str(ours), "--help"],
            "torchx --help": [str(torchx), "--help"],
            f"simsiam-job render ({backend}, 16x8)": [
                str(ours), "render", "pretrain", "--backend", backend, "--nodes", "16", "--gpus", "8",
                "--output", "results"]     # several nodes share their checkpoints on a claim
            if backend == "kubernetes" else
            [str(ours), "render", "pretrain", "--backend", "local", "--gpus", "8"],
            "torchx run --dryrun (kubernetes, 16x8)": [
                str(torchx), "run", "--dryrun", "--workspace", "", "-s", "kubernetes", "-cfg",
                "queue=default", "dist.ddp", "-j", "16x8", "--script", "app.py"],
        }
        results = {name: measure(argv, repeat=args.repeat, cwd=work, env=env) for name, argv in cases.items()}

    print(f"{'command':42} {'median s':>9} {'min s':>7} {'cpu s':>7} {'peak MiB':>9}   "
          f"({args.repeat} runs each)")
    for name, (times, peak, cpu) in results.items():
        print(f"{name:42} {statistics.median(times):9.3f} {min(times):7.3f} {statistics.median(cpu):7.3f} "
              f"{peak / 1024:9.1f}")
    names = list(results)
    med = {n: statistics.median(results[n][0]) for n in names}
    cpu = {n: statistics.median(results[n][2]) for n in names}
    rss = {n: results[n][1] for n in names}
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for label, ours, theirs, target in (("--help", names[0], names[1], 1.0),
                                        ("dry run", names[2], names[3], 0.5)):
        print(f"{label:9} simsiam-job / torchx = {med[ours] / med[theirs]:.2f}x wall (median), "
              f"{cpu[ours] / cpu[theirs]:.2f}x CPU   (target <= {target})")
    print(f"peak RSS  simsiam-job / torchx = {rss[names[2]] / rss[names[3]]:.2f}x   (target <= 1.0)")
    if backend != "kubernetes":
        print("note: the kubernetes backend is not in this tree; the local render was measured instead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
