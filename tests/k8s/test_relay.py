"""A JobSet's group meets and watches its ranks over the network (trainer.relay), without shared
storage: workers join only a rank 0 of their own generation (a stale DNS answer, the rank 0 of the
start before, refuses them), the ranks' heartbeat files are mirrored between the pods, so a frozen
rank is seen by its peers' watchdogs, and no node waits for its group longer than the start
timeout. Real sockets on loopback and real processes; the pods' DNS and the real launcher are in
test_jobset_nodes.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from helpers.paths import REPO

from trainer import contract, relay
from trainer.watchdog import Heartbeat, PeerView, generation_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def leaders():
    started = []

    def start(*args, **kwargs):
        started.append(relay.Leader(*args, **kwargs))
        return started[-1]

    yield start
    for leader in started:
        leader.close()


def test_a_worker_never_joins_the_rank_0_of_the_start_before(leaders):
    """DNS still answers with the old rank 0's address after a JobSet restart: that rank 0 (of
    generation 0) refuses; once DNS answers with the new one (generation 1), the worker joins it."""
    port = free_port()
    leaders(port, "0", "127.0.0.2:6768", 2, None, bind="127.0.0.2")     # the old group's rank 0
    leaders(port, "1", "127.0.0.3:6768", 2, None, bind="127.0.0.3")     # the restarted group's
    answers = iter([["127.0.0.2"], ["127.0.0.2"], ["127.0.0.3"]])
    said = []
    member = relay.Member("job-leader-0-0.job", port, "1", 1, "pod-b", None)
    master = member.join(time.monotonic() + 30, lambda host, timeout: next(answers),
                         say=lambda text, **_: said.append(text))
    assert master == "127.0.0.3:6768"
    assert "rank 0 is of generation 0, not 1" in said[0]


def test_of_both_addresses_dns_gives_the_worker_joins_the_one_of_its_generation(leaders):
    port = free_port()
    leaders(port, "0", "127.0.0.2:6768", 2, None, bind="127.0.0.2")     # still terminating
    leaders(port, "1", "127.0.0.3:6768", 2, None, bind="127.0.0.3")
    member = relay.Member("job-leader-0-0.job", port, "1", 1, "pod-b", None)
    assert member.join(time.monotonic() + 30,
                       lambda host, timeout: ["127.0.0.2", "127.0.0.3"]) == "127.0.0.3:6768"


def test_rank_0_admits_each_node_once_and_only_while_forming(leaders):
    port = free_port()
    leader = leaders(port, "3", "10.0.0.1:6768", 3, None, bind="127.0.0.1")
    ask = lambda **kw: relay.ask(("127.0.0.1", port), {"generation": "3", **kw})  # noqa: E731
    assert leader.missing() == [1, 2]
    assert ask(op="join", node=1, pod="a") == {"ok": True, "master": "10.0.0.1:6768", "round": 1}
    assert ask(op="join", node=1, pod="a")["ok"]                    # the same pod asking again
    assert "already joined" in ask(op="join", node=1, pod="b")["why"]
    assert "no node 5" in ask(op="join", node=5, pod="c")["why"]
    assert leader.missing() == [2]
    leader.stop_admitting()                                         # SIGTERM: no new members
    assert ask(op="join", node=2, pod="d")["why"] == "rank 0 is stopping"
    assert "not a member" in ask(op="beat", node=2, pod="d", records=[])["why"]


def test_in_place_a_member_hands_rank_0_its_outcomes_and_joins_only_the_next_round(tmp_path, leaders):
    """A member whose start ended tells rank 0 how (kept on rank 0's claim for the restart
    decision); rank 0's round is then over; the member is let in again only once rank 0 has
    opened the next round, and a member still beating in the old one is told its group is over."""
    port = free_port()
    leader = leaders(port, "2", "10.0.0.1:6768", 2, None, bind="127.0.0.1", outcomes=tmp_path / "outcomes")
    member = relay.Member("localhost", port, "2", 1, "pod-b", None)
    resolve = lambda host, timeout: ["127.0.0.1"]  # noqa: E731
    assert member.join(time.monotonic() + 5, resolve) == "10.0.0.1:6768" and member.round == 1
    assert leader.over() is None
    crash = contract.Outcome(contract.End.CRASHED, 1, 1, "boom", global_step=7, host="pod-b",
                             time=time.time())
    member.leave([crash])
    assert leader.over() == "node 1 left it (its trainer ended)"
    assert contract.read_outcomes(tmp_path / "outcomes") == [crash]
    with pytest.raises(TimeoutError, match="rank 0 is still in round 1"):
        member.join(time.monotonic() + 0.5, resolve, say=lambda *a, **k: None)
    leader.next_round()
    assert leader.over() is None and leader.missing() == [1]
    old = relay.ask(("127.0.0.1", port), {"op": "beat", "generation": "2", "round": 1, "node": 1,
                                          "pod": "pod-b", "records": []})
    assert not old["ok"] and "not a member of round 2" in old["why"]
    assert member.join(time.monotonic() + 5, resolve) == "10.0.0.1:6768" and member.round == 2


@pytest.mark.slow  # about 9 s, most of it waiting out the watchdog's timeout
def test_heartbeats_are_mirrored_and_a_frozen_rank_is_seen_by_rank_0s_watchdog(tmp_path, leaders):
    """Rank 1's heartbeat file exists only in its own pod; rank 0's view of it comes through the
    relay. While rank 1 beats, rank 0 sees it alive; when it freezes (its counter stops), rank 0's
    watchdog names it lost after the timeout."""
    port, generation = free_port(), "20260101T000000-abcd"
    leader_dir, member_dir = tmp_path / "leader" / "heartbeats", tmp_path / "member" / "heartbeats"
    leaders(port, "0", "127.0.0.1:6768", 2, leader_dir, host="pod-0", bind="127.0.0.1")
    member = relay.Member("localhost", port, "0", 1, "pod-1", member_dir, me="pod-1")
    member.join(time.monotonic() + 10, lambda host, timeout: ["127.0.0.1"])
    member.start_mirroring()
    try:
        rank0 = Heartbeat(generation_dir(leader_dir.parent, generation), 0)
        rank1 = Heartbeat(generation_dir(member_dir.parent, generation), 1)
        for beat in (rank0, rank1):
            beat.path.parent.mkdir(parents=True, exist_ok=True)
            beat.record["host"] = "pod-0" if beat is rank0 else "pod-1"
        view = PeerView(generation_dir(leader_dir.parent, generation), 0, 2, timeout=3)
        member_view = PeerView(generation_dir(member_dir.parent, generation), 1, 2, timeout=3)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:       # both beat: neither side sees a loss
            rank0.write()
            rank1.write()
            assert view.check() is None and member_view.check() is None
            time.sleep(0.3)
        assert json.loads((generation_dir(member_dir.parent, generation) / "rank-00000.json")
                          .read_text())["host"] == "pod-0"  # rank 0's record reached rank 1's pod
        frozen_at = time.monotonic()             # rank 1 freezes; rank 0 goes on beating
        while (lost := view.check()) is None:
            rank0.write()
            assert time.monotonic() - frozen_at < 10, "the frozen rank was never noticed"
            time.sleep(0.3)
        assert lost[0] == 1 and "no heartbeat from rank 1" in lost[1]
        assert time.monotonic() - frozen_at >= 3
    finally:
        member.stop()


# ---- the node supervisor in network mode (real processes) -------------------------------------

LAUNCHER = ["sh", "-c", 'echo "$@"; exec sleep 120', "sh", "-m", "paddle.distributed.launch", "--nnodes", "2",
            "--rank", "$(JOB_COMPLETION_INDEX)",
            "--log_dir", "/out/pt/launch-logs/rank-$(JOB_COMPLETION_INDEX)"]


def supervisor(*args: str, launcher=LAUNCHER) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.rendezvous", *args, "--", *launcher], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_joins_rank_0_by_name_and_gets_its_node_rank(tmp_path):
    port = free_port() - 1          # the relay listens on port + 1
    rank0 = supervisor("--node-rank", "0", "--rank0-host", "localhost", "--port", str(port), "--pod-ip",
                       "127.0.0.1", "--generation", "2", "--start-timeout", "60",
                       launcher=[*LAUNCHER[:-4], "--rank", "0", "--log_dir", "/out/pt/launch-logs/rank-0"])
    worker = supervisor("--node-rank", "0", "--rank-offset", "1", "--rank0-host", "localhost",
                        "--port", str(port), "--pod-ip", "127.0.0.9", "--generation", "2",
                        "--start-timeout", "60")
    try:
        assert rank0.stdout.readline().strip() == (f"rendezvous: node 0, master 127.0.0.1:{port} "
                                                   f"(localhost), generation 2")
        said = worker.stdout.readline().strip()
        while said.startswith("rendezvous: node 1 waiting to join"):    # rank 0 not listening yet
            said = worker.stdout.readline().strip()
        assert said == f"rendezvous: node 1, master 127.0.0.1:{port} (localhost), generation 2"
        # the worker's own Job counts from 0: its launcher gets node rank 1 and its log folder
        assert worker.stdout.readline().split() == [
            "-m", "paddle.distributed.launch", "--job_id", "round-1", "--master", f"127.0.0.1:{port}",
            "--nnodes", "2", "--rank", "1",
            "--log_dir", "/out/pt/launch-logs/rank-1"]
    finally:
        for proc in (rank0, worker):        # SIGTERM reaches the stand-in launchers too
            proc.terminate()
            proc.communicate(timeout=30)


def test_a_crashed_worker_restarts_the_group_in_place_over_the_network(tmp_path):
    """Only rank 1's launcher died: neither pod's supervisor ends. Rank 0 keeps rank 1's outcome
    in its outcomes folder (on its claim), ends its own launcher and opens round 2, which both
    join with a paddle store of that round's own (--job_id)."""
    port = free_port() - 1
    outcomes = tmp_path / "outcomes"
    stand_in = ('echo "$@"; case "$*" in *round-2*) touch "$0.round-2"; exec sleep 120;; esac; '
                'if [ "$0" = "{worker}" ]; then '
                'printf \'{{"end":"crashed","rank":1,"exit_code":1,"message":"boom"}}\' '
                '> "$SIMSIAM_OUTCOME_DIR/rank-00001.json"; exit 1; fi; exec sleep 120')
    worker_name = str(tmp_path / "worker")
    body = stand_in.format(worker=worker_name)
    launcher = lambda name, rank: ["sh", "-c", body, str(tmp_path / name), "-m", "paddle.distributed.launch",  # noqa: E731
                                   "--nnodes", "2", "--rank", rank]
    rank0 = supervisor("--node-rank", "0", "--rank0-host", "localhost", "--port", str(port), "--pod-ip",
                       "127.0.0.1", "--generation", "4", "--outcomes-dir", str(outcomes),
                       launcher=launcher("rank0", "0"))
    worker = supervisor("--node-rank", "0", "--rank-offset", "1", "--rank0-host", "localhost",
                        "--port", str(port), "--pod-ip", "127.0.0.9", "--generation", "4",
                        launcher=launcher("worker", "0"))
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{name}.round-2").exists() for name in ("rank0", "worker")):
            assert rank0.poll() is None and worker.poll() is None, "a pod ended"
            assert time.monotonic() < deadline, "no round 2"
            time.sleep(0.2)
        (kept,) = contract.read_outcomes(outcomes)
        assert (kept.rank, kept.message) == (1, "boom")
    finally:
        for proc in (rank0, worker):
            proc.terminate()
    out0, out1 = (proc.communicate(timeout=30)[0] for proc in (rank0, worker))
    assert "round 1 is over: node 1 left it (its trainer ended); node 0 ends its launcher" in out0, out0
    assert f"rendezvous: node 0, master 127.0.0.1:{port} (localhost), generation 4, round 2" in out0, out0
    assert ("node 1 ended: rank 1 exited with exit code 1" in out1
            and "joins the next round in place" in out1), out1
    assert f"--job_id round-2 --master 127.0.0.1:{port} --nnodes 2 --rank 1" in out1, out1


def test_rank_0_gives_up_at_the_start_timeout_naming_the_node_that_never_joined():
    port = free_port() - 1
    rank0 = supervisor("--node-rank", "0", "--rank0-host", "localhost", "--port", str(port), "--pod-ip",
                       "127.0.0.1", "--generation", "0", "--start-timeout", "3",
                       launcher=[*LAUNCHER[:-4], "--rank", "0"])
    out, err = rank0.communicate(timeout=60)
    assert rank0.returncode == contract.EXIT_START_TIMEOUT, (out, err)
    assert err.strip() == ("error: node 0: the group did not form within the start timeout (3 s): "
                           "node 1 never joined")


def test_a_worker_gives_up_at_the_start_timeout_when_rank_0_never_comes():
    worker = supervisor("--node-rank", "0", "--rank-offset", "1", "--rank0-host", "no-such-leader.invalid",
                        "--port", str(free_port()), "--generation", "0", "--start-timeout", "3")
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == contract.EXIT_START_TIMEOUT, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: node 1: the group did not form within the start timeout (3 s): rank 0's "
                           "address no-such-leader.invalid did not resolve"), line


def test_the_start_timeout_ends_once_the_group_has_formed(tmp_path):
    """A node of the group that formed (the trainer said so: trainer.outcome.mark_started) runs on
    past the start timeout."""
    launcher = ["sh", "-c", 'touch "$SIMSIAM_OUTCOME_DIR/rank-00000.started"; sleep 4; echo done', "sh",
                "-m", "paddle.distributed.launch", "--nnodes", "2", "--rank", "0"]
    rank0 = supervisor("--node-rank", "0", "--rank0-host", "localhost", "--port", str(free_port() - 1),
                       "--pod-ip", "127.0.0.1", "--generation", "0", "--start-timeout", "2",
                       launcher=launcher)
    out, err = rank0.communicate(timeout=60)
    assert rank0.returncode == 0, (out, err)
    assert out.splitlines()[-1] == "done"


def test_the_indexed_job_rounds_have_the_start_timeout_too(tmp_path):
    """Rank 0 of an Indexed Job names the nodes that never joined its round."""
    rank0 = supervisor("--node-rank", "0", "--rank0-host", "pt-0.pt", "--port", "6768",
                       "--pod-ip", "10.1.2.3", "--rounds-dir", str(tmp_path / "rendezvous"),
                       "--start-timeout", "2", launcher=[*LAUNCHER[:-4], "--rank", "0"])
    out, err = rank0.communicate(timeout=60)
    assert rank0.returncode == contract.EXIT_START_TIMEOUT, (out, err)
    assert "node 1 never joined" in err


def test_every_rank_is_started_from_the_trainer(tmp_path, monkeypatch):
    """The trainer marks its node's group as formed as soon as the collective group is joined."""
    from trainer import outcome

    monkeypatch.setenv(contract.OUTCOME_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("PADDLE_TRAINER_ID", "3")
    outcome.mark_started()
    assert (tmp_path / f"rank-00003{outcome.STARTED}").is_file()
    assert contract.read_outcomes(tmp_path) == []          # not mistaken for an outcome
