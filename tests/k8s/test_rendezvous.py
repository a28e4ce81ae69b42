"""trainer.rendezvous, the first program of every pod of a multi-node Kubernetes job: it hands
paddle's launcher rank 0's IP as --master (paddle's master never listens on a name). Run as the pod
runs it, with a stand-in for the launcher that prints the command it was given; the real launcher,
on real pods, is in test_nodes.py."""

from __future__ import annotations

import subprocess
import sys

from testlib import REPO

# Prints its arguments: "-m paddle.distributed.launch ..." as the launcher would receive them.
LAUNCHER = ["sh", "-c", 'echo "$@"', "sh", "-m", "paddle.distributed.launch", "--nnodes", "2", "--rank"]


def rendezvous(*args: str, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "trainer.rendezvous", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_rank_0_is_its_own_master_by_pod_ip():
    run = rendezvous("--rank0-host", "job-0.job", "--port", "6768", "--node-rank", "0", "--pod-ip", "10.1.2.3",
                     "--", *LAUNCHER, "0")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["rendezvous: node 0, master 10.1.2.3:6768 (job-0.job)",
                                       "-m paddle.distributed.launch --master 10.1.2.3:6768 --nnodes 2 --rank 0"]


def test_other_ranks_resolve_rank_0s_name():
    run = rendezvous("--rank0-host", "localhost", "--port", "6768", "--node-rank", "1", "--pod-ip", "10.9.9.9",
                     "--", *LAUNCHER, "1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == ("-m paddle.distributed.launch --master 127.0.0.1:6768 "
                                           "--nnodes 2 --rank 1")


def test_a_name_that_never_resolves_ends_with_one_line_after_the_timeout():
    run = rendezvous("--rank0-host", "no-such-rank.invalid", "--port", "6768", "--node-rank", "1",
                     "--timeout", "2", "--", *LAUNCHER, "1")
    assert run.returncode == 1          # not 2: a retried pod may find rank 0
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: rank 0's address no-such-rank.invalid did not resolve within 2s ("), line
    assert "waiting for no-such-rank.invalid to resolve" in run.stdout


def test_rank_0_without_its_ip_is_refused():
    run = rendezvous("--rank0-host", "job-0.job", "--port", "6768", "--node-rank", "0", "--", *LAUNCHER, "0")
    assert run.returncode == 2 and run.stderr.startswith("error: rank 0 needs its own address")
