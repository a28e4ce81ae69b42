"""trainer.rendezvous, the first program of every pod of a multi-node Kubernetes job: it hands
paddle's launcher rank 0's IP as --master (paddle's master never listens on a name), and with a
shared directory numbers the group's starts (rounds) so that a restarted group never meets a member
of the one before. Run as the pod runs it, on real processes, with a stand-in for the launcher that
prints the command it was given; the real launcher, on real pods, is in test_nodes.py and
test_nodes_restart.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.paths import REPO

# Prints its arguments: "-m paddle.distributed.launch ..." as the launcher would receive them.
LAUNCHER = ["sh", "-c", 'echo "$@"', "sh", "-m", "paddle.distributed.launch", "--nnodes", "2", "--rank"]


def rendezvous(*args: str, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "trainer.rendezvous", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_rank_0_is_its_own_master_by_pod_ip():
    run = rendezvous("--rank0-host", "job-0.job", "--port", "6768", "--node-rank", "0",
                     "--pod-ip", "10.1.2.3", "--", *LAUNCHER, "0")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["rendezvous: node 0, master 10.1.2.3:6768 (job-0.job)",
                                       ("-m paddle.distributed.launch --master 10.1.2.3:6768 "
                                        "--nnodes 2 --rank 0")]


def test_other_ranks_resolve_rank_0s_name():
    run = rendezvous("--rank0-host", "localhost", "--port", "6768", "--node-rank", "1",
                     "--pod-ip", "10.9.9.9", "--", *LAUNCHER, "1")
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


# ---- rounds: a restarted group never meets the one before (real processes, a shared directory) ----


class Pod:
    """One pod's first process: trainer.rendezvous with a stand-in launcher that writes its pid to
    ``<name>.pid``, prints its arguments and then sleeps (``sleeps``) or exits; ``then``: a shell
    line of its own instead (the launcher's arguments in ``$*``)."""

    def __init__(self, tmp: Path, name: str, rank: int, ip: str = "", sleeps: bool = True, then: str = ""):
        self.pidfile = tmp / f"{name}.pid"
        body = 'echo $$ > "$0.pid"; echo "$@"; ' + (then or ("exec sleep 120" if sleeps else "exit 0"))
        launcher = ["sh", "-c", body, str(tmp / name), "-m", "paddle.distributed.launch", "--job_id", "pt"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.rendezvous", "--rank0-host", "pt-0.pt", "--port", "6768",
             "--node-rank", str(rank), "--pod-ip", ip, "--rounds-dir", str(tmp / "rendezvous"),
             "--outcomes-dir", str(tmp / "outcomes"), "--", *launcher],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def launched(self, timeout: float = 60) -> int:
        """The stand-in launcher's pid, once it runs."""
        deadline = time.monotonic() + timeout
        while not (self.pidfile.is_file() and self.pidfile.read_text().strip()):
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the launcher never started"
            time.sleep(0.1)
        return int(self.pidfile.read_text())

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out + err

    def relaunched(self, old: int, timeout: float = 60) -> int:
        """The pid of the launcher this pod started after the one with pid ``old``."""
        deadline = time.monotonic() + timeout
        while self.launched() == old:
            assert time.monotonic() < deadline, "no new launcher"
            time.sleep(0.1)
        return self.launched()

    def lose(self) -> str:
        """The pod is gone: its first process and the launcher under it, SIGKILLed. Returns what
        it printed."""
        os.kill(self.launched(), signal.SIGKILL)
        self.proc.kill()
        out, err = self.proc.communicate()
        return out + err


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def record(tmp: Path, rank: int) -> dict:
    try:
        return json.loads((tmp / "rendezvous" / f"rank-{rank:05d}.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_until(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def pods():
    started = []
    yield lambda *args, **kw: started.append(Pod(*args, **kw)) or started[-1]
    for pod in started:     # the launcher first: it holds the pipes of the process above it
        if pod.pidfile.is_file() and pod.pidfile.read_text().strip():
            try:
                os.kill(int(pod.pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pod.proc.poll() is None:
            pod.proc.kill()
        pod.proc.communicate()


def test_the_first_group_meets_in_round_1_at_rank_0s_address(tmp_path, pods):
    member = pods(tmp_path, "r1", 1, sleeps=False)             # may start before rank 0
    wait_until(lambda: record(tmp_path, 1).get("after") == 0, "rank 1 waiting")
    rank0 = pods(tmp_path, "r0", 0, ip="10.1.2.3", sleeps=False)
    for pod in (rank0, member):
        code, out = pod.finish()
        assert code == 0, out
        assert "master 10.1.2.3:6768 (pt-0.pt), round 1" in out, out
        assert "-m paddle.distributed.launch --master 10.1.2.3:6768 --job_id pt-round-1" in out, out


def test_a_replacement_waits_for_a_new_round_and_never_joins_its_predecessors(tmp_path, pods):
    rank0 = pods(tmp_path, "r0", 0, ip="10.1.2.3")
    first = pods(tmp_path, "r1", 1)
    first.launched()
    old = rank0.launched()
    first.lose()                                               # rank 1's pod is lost
    replacement = pods(tmp_path, "r1b", 1, sleeps=False)
    # The old rank 0 still runs round 1: the new pod does not join it; rank 0's pod sees its group
    # is over, ends its launcher and, staying, opens round 2 at its own address.
    code, out = replacement.finish()
    assert code == 0, out
    assert "--master 10.1.2.3:6768 --job_id pt-round-2" in out and "pt-round-1" not in out, out
    assert gone(old)                                           # round 1's launcher went
    rank0.relaunched(old)
    out = rank0.lose()
    assert "round 1 is over: rank 1 left it (its trainer ended or its pod was replaced); node 0 ends its " \
           "launcher" in out and "node 0 joins the next round in place" in out, out
    assert "master 10.1.2.3:6768 (pt-0.pt), round 2" in out, out


def test_a_member_joins_the_newer_round_rank_0_opens_without_leaving(tmp_path, pods):
    rank0 = pods(tmp_path, "r0", 0, ip="10.1.2.3")
    member = pods(tmp_path, "r1", 1)
    launcher = member.launched()
    rank0.lose()                                               # rank 0's pod is lost, replaced
    pods(tmp_path, "r0b", 0, ip="10.1.2.4")
    member.relaunched(launcher)
    assert gone(launcher)
    out = member.lose()
    assert "round 1 is over: rank 0 opened round 2" in out, out
    assert "--master 10.1.2.4:6768 --job_id pt-round-2" in out, out


def test_a_crashed_launcher_restarts_the_group_in_place_with_the_same_pods(tmp_path, pods):
    """Only a process died: both pods stay, the next round starts at once, and the crash is
    recorded for the next start's restart decision."""
    crash_in_round_1 = 'case "$*" in *pt-round-1*) exit 1;; esac; exec sleep 120'
    rank0 = pods(tmp_path, "r0", 0, ip="10.1.2.3")
    member = pods(tmp_path, "r1", 1, then=crash_in_round_1)
    old0 = rank0.launched()
    wait_until(lambda: record(tmp_path, 0).get("round") == 2, "round 2")
    wait_until(lambda: record(tmp_path, 1).get("round") == 2, "rank 1 in round 2")
    rank0.relaunched(old0)
    assert rank0.proc.poll() is None and member.proc.poll() is None     # no pod ended
    out = member.lose()
    assert re.search(r"node 1 ended: paddle's launcher exited with exit code 1.*; "
                     r"it joins the next round in place", out), out
    assert "--master 10.1.2.3:6768 --job_id pt-round-2" in out, out
    assert "node 0 joins the next round in place" in rank0.lose()


def test_sigterm_reaches_the_launcher_and_the_pod_exits_143(tmp_path):
    # Paddle's launcher exits with the signal's number (15) after stopping its trainer.
    launcher = ["sh", "-c", 'trap "exit 15" TERM; echo "$@"; sleep 120 & wait', "sh",
                "-m", "paddle.distributed.launch"]
    proc = subprocess.Popen([sys.executable, "-m", "trainer.rendezvous", "--rank0-host", "pt-0.pt",
                             "--port", "6768", "--node-rank", "0", "--pod-ip", "10.1.2.3", "--", *launcher],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("rendezvous: node 0, master 10.1.2.3:6768")
    assert proc.stdout.readline().startswith("-m paddle.distributed.launch --master")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143


def test_sigterm_while_waiting_for_rank_0_exits_143(tmp_path, pods):
    member = pods(tmp_path, "r1", 1)
    wait_until(lambda: record(tmp_path, 1).get("after") == 0, "rank 1 waiting")
    member.proc.send_signal(signal.SIGTERM)
    code, out = member.finish()
    assert code == 143 and "stopped by a signal while waiting for rank 0" in out, out
