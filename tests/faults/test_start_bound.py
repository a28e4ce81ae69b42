"""Rank 0's bound on group restarts where no launcher of ours counts them (Kubernetes recreates the
pods itself): starts are recorded in OUTPUT_DIR/starts.jsonl; past the bound the start is refused
with one line naming what ended the start before; a new attempt counts afresh."""

import json
import time

import pytest

from trainer import contract, lock
from trainer.config import ConfigError


def _lost_peer(output):
    """The start ended: rank 0 stopped for a lost peer, rank 1 was killed (as their pods report)."""
    for outcome in (contract.Outcome(contract.End.PEER_LOST, 0, contract.EXIT_PEER_LOST,
                                     "rank 1 was lost (no heartbeat from rank 1 for 31 s)", time=time.time()),
                    contract.Outcome(contract.End.PREEMPTED, 1, contract.EXIT_PREEMPTED, time=time.time())):
        contract.write_outcome(output / contract.OUTCOMES, outcome)


def test_restarts_past_the_bound_are_refused_naming_the_lost_rank(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.JOB_ENV, "pt")
    monkeypatch.setenv(contract.GROUP_RESTARTS_ENV, "1")
    monkeypatch.setenv(contract.ATTEMPT_ENV, "1")
    # the first start
    assert lock.count_start(tmp_path, "g1", 2) == {"group_restarts": 0, "counted_restarts": 0}
    _lost_peer(tmp_path)
    # restart 1 of at most 1 (the progress records carry the count to `status`)
    assert lock.count_start(tmp_path, "g2", 2) == {"group_restarts": 1, "counted_restarts": 1}
    _lost_peer(tmp_path)
    with pytest.raises(ConfigError) as refused:      # restart 2: too many
        lock.count_start(tmp_path, "g3", 2)
    assert str(refused.value) == ("gave up after 1 group restart: rank 0: rank 1 was lost "
                                  "(no heartbeat from rank 1 for 31 s)")
    monkeypatch.setenv(contract.ATTEMPT_ENV, "2")    # simsiam-job resume: a new attempt
    lock.count_start(tmp_path, "g4", 2)
    records = [json.loads(line) for line in (tmp_path / contract.STARTS).read_text().splitlines()]
    assert [(r["attempt"], r["generation"]) for r in records] == [
        ("1", "g1"), ("1", "g2"), ("1", "g3"), ("2", "g4")]


def test_without_a_bound_nothing_is_counted(tmp_path, monkeypatch):
    monkeypatch.delenv(contract.GROUP_RESTARTS_ENV, raising=False)
    for generation in ("g1", "g2", "g3", "g4", "g5"):
        lock.count_start(tmp_path, generation, 2)
    assert not (tmp_path / contract.STARTS).exists()


def test_a_jobset_bounds_only_its_restarts_in_place_and_reports_them_all(tmp_path, monkeypatch):
    """JobSet bounds its own restarts (a new generation: the pods recreated); rank 0 bounds those
    in place within one generation, and its progress records count both."""
    monkeypatch.setenv(contract.JOB_ENV, "pt")
    monkeypatch.setenv(contract.GROUP_RESTARTS_ENV, "1")
    monkeypatch.setenv(contract.ATTEMPT_ENV, "1")
    monkeypatch.setenv(contract.RESTART_ATTEMPT_ENV, "0")
    lock.count_start(tmp_path, "g1", 2)
    _lost_peer(tmp_path)
    assert lock.count_start(tmp_path, "g2", 2) == {"group_restarts": 1, "counted_restarts": 1}  # in place
    _lost_peer(tmp_path)
    monkeypatch.setenv(contract.RESTART_ATTEMPT_ENV, "1")      # JobSet recreated the pods
    assert lock.count_start(tmp_path, "g3", 2) == {"group_restarts": 2, "counted_restarts": 1}
    _lost_peer(tmp_path)
    assert lock.count_start(tmp_path, "g4", 2) == {"group_restarts": 3, "counted_restarts": 2}  # in place
    _lost_peer(tmp_path)
    with pytest.raises(ConfigError, match="gave up after 1 group restart"):
        lock.count_start(tmp_path, "g5", 2)
