"""The run outcome (trainer.contract): what each rank records, the one decision function, and the
same table of outcomes decided the same way on the local, Slurm and Kubernetes paths.

Real processes where a process matters (the keeper records a SIGKILLed trainer's end; Slurm's batch
script runs the decision as `python -m trainer.contract decide`); no paddle needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from simsiam_job.backends.local import supervisor as local
from trainer import contract, lock, rendezvous
from trainer.config import ConfigError
from trainer.contract import End, Outcome

NOW = time.time()


def rank(n, end, code, message="", host="", at=0.0):
    return Outcome(end, n, code, message, global_step=12, host=host, time=NOW + at)


DONE = [rank(0, End.DONE, 0), rank(1, End.DONE, 0)]
BAD = [rank(0, End.BAD_INPUT, 2, "DataLoader.Train.dataset.root /x/train: no images", at=1),
       rank(1, End.PEER_LOST, 75, "rank 0 failed", at=2)]
DIVERGED = [rank(0, End.DIVERGED, 3, "the loss is not finite at global step 7", at=1),
            rank(1, End.DIVERGED, 3, at=1)]
KILLED = [rank(0, End.PEER_LOST, 75, "rank 1 (b, pid 9) is gone: its process no longer exists", at=3),
          rank(1, End.CRASHED, -signal.SIGKILL, at=1)]
CRASHED = [rank(0, End.CRASHED, 1, "RuntimeError: CUDA error: an illegal memory access", at=1),
           rank(1, End.PEER_LOST, 75, "rank 0 failed", at=2)]
PREEMPTED = [rank(0, End.PREEMPTED, 143, "stopped by SIGTERM at epoch 2, step 3", at=1),
             rank(1, End.PREEMPTED, 143, at=1)]
SILENT = [rank(0, End.PEER_LOST, 75, "no heartbeat from rank 1 for 60 s", at=5)]     # rank 1 said nothing

# (outcomes, counted restarts so far, bound) -> (action, counted, words in the reason)
TABLE = {
    "all done": (DONE, 0, 3, contract.FINISH, False, None),
    "bad input": (BAD, 0, 3, contract.FAIL, False, "rank 0 exited with exit code 2 (bad input), "
                                                   "retrying cannot help: "
                                                   "DataLoader.Train.dataset.root /x/train: no images"),
    "diverged": (DIVERGED, 0, 3, contract.FAIL, False, "exit code 3 (diverged), retrying cannot help"),
    "killed": (KILLED, 1, 3, contract.RESTART, True, "rank 1 killed by SIGKILL"),
    "killed past the bound": (KILLED, 3, 3, contract.FAIL, False, "gave up after 3 group restarts: rank 1 "
                                                                  "killed by SIGKILL"),
    "crashed": (CRASHED, 0, 3, contract.RESTART, True,
                "rank 0 exited with exit code 1 (failed): RuntimeError"),
    "crashed, no restarts allowed": (CRASHED, 0, 0, contract.FAIL, False, "gave up after 0 group restarts"),
    "preempted": (PREEMPTED, 0, 3, contract.RESTART, False, "preempted: rank 0 exited with exit code 143"),
    "preempted past the bound": (PREEMPTED, 3, 3, contract.RESTART, False, "preempted"),
    "a silent rank": (SILENT, 0, 3, contract.RESTART, True, "rank 1 was lost without a word"),
}


@pytest.mark.parametrize("case", sorted(TABLE))
def test_decide(case):
    outcomes, restarts, bound, action, counted, words = TABLE[case]
    decision = contract.decide(outcomes, restarts=restarts, bound=bound, ranks=2)
    assert (decision.action, decision.counted) == (action, counted)
    if words is None:
        assert decision.reason is None and decision.exit_code == 0
    else:
        assert words in decision.reason, decision.reason
        assert decision.exit_code != 0


def test_a_final_end_wins_over_a_crash_and_a_crash_over_the_peers_that_saw_it():
    both = [rank(0, End.CRASHED, -signal.SIGKILL, at=1), rank(1, End.BAD_INPUT, 2, "bad", at=9)]
    assert contract.decide(both, restarts=0, bound=3).cause.rank == 1
    assert contract.decide(KILLED, restarts=0, bound=3).cause.rank == 1


def test_several_hosts_name_the_host_as_slurm_users_read_it():
    outcomes = [rank(0, End.PEER_LOST, 75, "x", host="node1", at=2),
                rank(1, End.BAD_INPUT, 2, "no images", host="node2", at=1)]
    reason = contract.decide(outcomes, restarts=0, bound=3).reason
    assert reason == "rank 1 on node2: Exited with exit code 2 (bad input), retrying cannot help: no images"


def test_outcomes_round_trip_and_junk_is_not_an_outcome(tmp_path):
    for outcome in KILLED + [Outcome(End.CRASHED, None, None, "no rank recorded how it ended")]:
        assert Outcome.from_json(outcome.to_json()) == outcome
    for junk in ("", "gave up after 0 group restarts", "[]", '{"end": "exploded", "rank": 0, "exit_code": 1}',
                 '{"end": "done"}', b"\xff\xfe", "[" * 100000):
        assert Outcome.from_json(junk) is None
    contract.write_outcome(tmp_path, KILLED[1])
    (tmp_path / "rank-00007.json").write_text("{torn")
    assert contract.read_outcomes(tmp_path) == [KILLED[1]]


KEEPER = """
import os, signal, sys, time
from trainer import outcome
kept = outcome.fork_keeper()
if kept is not None:
    sys.exit(kept)
outcome.progress["global_step"] = 41
how = sys.argv[1]
if how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "records":
    outcome.record(3, "the loss is not finite at global step 41")
    sys.exit(3)
time.sleep(60)
"""


@pytest.mark.parametrize("how, code, end, words", [
    ("sigkill", -signal.SIGKILL, End.CRASHED, "rank 1 killed by SIGKILL"),
    ("records", 3, End.DIVERGED, "rank 1 exited with exit code 3 (diverged)"),
])
def test_the_keeper_records_how_its_trainer_ended_and_ends_the_same_way(tmp_path, how, code, end, words):
    env = {**os.environ, contract.OUTCOME_DIR_ENV: str(tmp_path), "PADDLE_TRAINER_ID": "1"}
    proc = subprocess.run([sys.executable, "-c", KEEPER, how], env=env, timeout=60)
    assert proc.returncode == code                  # paddle's launcher sees what it would without it
    (recorded,) = contract.read_outcomes(tmp_path)
    assert (recorded.rank, recorded.end, recorded.exit_code) == (1, end, code)
    assert recorded.cause().startswith(words)
    if how == "records":                            # the trainer's own record, its step and line
        assert recorded.global_step == 41 and "not finite" in recorded.message


def test_a_killed_keeper_takes_its_trainer_with_it(tmp_path):
    env = {**os.environ, contract.OUTCOME_DIR_ENV: str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", KEEPER, "sleep"], env=env)
    deadline = time.monotonic() + 30
    children = []
    while not children and time.monotonic() < deadline:
        children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        time.sleep(0.1)
    assert children, "the keeper forked no trainer"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{children[0]}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{children[0]}"), "the trainer outlived its keeper"


# ---- the same table through each backend's path -----------------------------------------------------

def _local(tmp_path, outcomes, restarts, bound):
    """The local supervisor: the start's outcome folder in the run directory, read and decided."""
    for outcome in outcomes:
        contract.write_outcome(tmp_path / local.OUTCOMES / "1", outcome)
    found = local._start_outcomes(tmp_path, 1, launcher_code=1, ranks=2)
    d = contract.decide(found, restarts=restarts, bound=bound, ranks=2)
    return d.action, d.counted, d.reason


def _slurm(tmp_path, outcomes, restarts, bound):
    """The batch script: `python -m trainer.contract decide` in the trainer's Python."""
    for outcome in outcomes:
        contract.write_outcome(tmp_path / "start", outcome)
    proc = subprocess.run([sys.executable, "-m", "trainer.contract", "decide",
                           "--outcomes", tmp_path / "start",
                           "--restarts", str(restarts), "--bound", str(bound), "--ranks", "2",
                           "--record", tmp_path / "decisions.jsonl"],
                          capture_output=True, text=True, check=True)
    action, _, counted = proc.stdout.split()
    record = json.loads((tmp_path / "decisions.jsonl").read_text())
    assert record["action"] == action and record["reason"] == (proc.stderr.strip() or None)
    return action, counted == "1", proc.stderr.strip() or None


def _kubernetes(tmp_path, outcomes, restarts, bound, monkeypatch):
    """An Indexed Job: each pod's supervisor reports its node (termination message, exit code the
    failure policy reads) and copies the outcomes to the claim; rank 0's next start decides."""
    monkeypatch.setenv(contract.GROUP_RESTARTS_ENV, str(bound))
    monkeypatch.setenv(contract.JOB_ENV, "pt")
    monkeypatch.setenv(contract.ATTEMPT_ENV, "1")
    starts = [{"job": "pt", "attempt": "1", "generation": f"g{i}", "time": NOW - 100, "counted": i > 0}
              for i in range(restarts + 1)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / contract.STARTS).write_text("".join(json.dumps(r) + "\n" for r in starts))
    for node, outcome in enumerate(outcomes):     # one rank per pod here
        pod = tmp_path / f"pod-{node}"
        contract.write_outcome(pod, outcome)
        monkeypatch.setenv(contract.OUTCOME_DIR_ENV, str(pod))
        monkeypatch.setattr("trainer.outcome.TERMINATION_LOG", str(pod / "termination-log"))
        (pod / "termination-log").touch()
        code = rendezvous.report(rendezvous.node_outcome(pod, outcome.exit_code or 1),
                                 str(tmp_path / contract.OUTCOMES))
        assert (code in contract.FINAL_EXITS) == outcome.end.final       # FailJob only for those
        if outcome.end is not End.DONE:
            assert Outcome.from_json((pod / "termination-log").read_text()) == outcome
    try:
        lock.count_start(tmp_path, "next", 2)
    except ConfigError as refused:
        return contract.FAIL, False, str(refused)
    last = json.loads((tmp_path / contract.STARTS).read_text().splitlines()[-1])
    return contract.RESTART, last["counted"], last["after"]


@pytest.mark.parametrize("case", sorted(c for c in TABLE if TABLE[c][3] != contract.FINISH))
def test_the_same_outcomes_are_decided_the_same_on_every_backend(tmp_path, monkeypatch, case):
    outcomes, restarts, bound, action, counted, words = TABLE[case]
    decided = {
        "local": _local(tmp_path / "local", outcomes, restarts, bound),
        "slurm": _slurm(tmp_path / "slurm", outcomes, restarts, bound),
        "kubernetes": _kubernetes(tmp_path / "k8s", outcomes, restarts, bound, monkeypatch),
    }
    for backend, (got_action, got_counted, reason) in decided.items():
        assert (got_action, got_counted) == (action, counted), backend
        assert words in reason, (backend, reason)
    assert len({reason for _, _, reason in decided.values()}) == 1, decided


def test_a_node_supervisors_own_outcomes_survive_the_termination_message(tmp_path):
    """The start timeout's and a silent launcher's outcomes are what Kubernetes' termination
    message carries: they must read back as the same record (host and time in their fields)."""
    from trainer import rendezvous

    for said in (rendezvous.start_timeout_outcome(60, [1]), rendezvous.node_outcome(tmp_path, -9)):
        back = contract.Outcome.from_json(said.to_json())
        assert back == said and back.global_step is None and back.host and back.time > 0, said
