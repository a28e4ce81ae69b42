"""How each pod of a multi-node Kubernetes job finds rank 0, then becomes paddle's launcher.

Paddle's launcher (``paddle.distributed.launch``) starts its rendezvous server on rank 0 only when
``--master`` names 127.0.0.1 or that node's own IP; given a DNS name it never listens, and every
node waits for a master that does not exist. So the pod of rank 0 passes its own IP (from the
downward API), and the other pods resolve rank 0's stable name (``<job>-0.<service>``, published by
the headless Service), retrying until DNS answers: the name exists only once rank 0's pod has an
address. The process then execs the launcher with ``--master IP:PORT``.

Paddle-free: the launcher builds this command (``command``), the image runs it::

    python -m trainer.rendezvous --rank0-host NAME --port PORT --node-rank N --pod-ip IP \
        -- python -m paddle.distributed.launch ARGS...
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

LAUNCHER = "paddle.distributed.launch"


def command(*, rank0_host: str, port: int, node_rank: str, pod_ip: str) -> list[str]:
    """The words before the launcher's own command in a pod's command line."""
    return ["python", "-m", "trainer.rendezvous", "--rank0-host", rank0_host, "--port", str(port),
            "--node-rank", node_rank, "--pod-ip", pod_ip, "--"]


def resolve(host: str, timeout: float, *, interval: float = 1.0, say=print) -> str:
    """The IPv4 address of ``host``, asking until DNS answers or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    next_note = 0.0
    while True:
        try:
            return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except socket.gaierror as err:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"rank 0's address {host} did not resolve within {timeout:.0f}s "
                                   f"({err.strerror})") from None
            if now >= next_note:
                say(f"rendezvous: waiting for {host} to resolve ({err.strerror})", flush=True)
                next_note = now + 15
            time.sleep(interval)


def with_master(argv: list[str], master: str) -> list[str]:
    """``argv`` (a ``python -m paddle.distributed.launch ...`` command) with ``--master`` added."""
    if LAUNCHER not in argv:
        raise ValueError(f"expected a `python -m {LAUNCHER} ...` command after --, got {argv[:3]}")
    at = argv.index(LAUNCHER) + 1
    return [*argv[:at], "--master", master, *argv[at:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.rendezvous", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank0-host", required=True, help="DNS name of rank 0's pod")
    parser.add_argument("--port", type=int, required=True, help="rendezvous port of rank 0")
    parser.add_argument("--node-rank", required=True, help="this pod's rank (the Job's completion index)")
    parser.add_argument("--pod-ip", default="", help="this pod's IP (required on rank 0)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for rank 0's name to resolve (default 600)")
    parser.add_argument("launch", nargs=argparse.REMAINDER, help="-- the launcher's command")
    args = parser.parse_args(argv)
    launch = args.launch[1:] if args.launch[:1] == ["--"] else args.launch
    try:
        if args.node_rank == "0":
            if not args.pod_ip:
                raise ValueError("rank 0 needs its own address: --pod-ip (the pod's status.podIP)")
            ip = args.pod_ip
        else:
            ip = resolve(args.rank0_host, args.timeout)
        launch = with_master(launch, f"{ip}:{args.port}")
    except ValueError as err:       # a malformed command: retrying cannot help
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:     # rank 0 may come up on a retry of the pod
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"rendezvous: node {args.node_rank}, master {ip}:{args.port} ({args.rank0_host})", flush=True)
    os.execvp(launch[0], launch)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
