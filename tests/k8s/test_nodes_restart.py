"""Whole-group restarts on real pods: a two-node job on the two real worker nodes of the test cluster
loses rank 1 mid-epoch. Its pod evicted through the Eviction API, or deleted: index 1 gets a new pod,
rank 0's pod restarts in place, they meet in a new rendezvous round (never round 1), rank 0 resumes
from the newest checkpoint, and the job succeeds with every step in metrics.jsonl once, without
counting against backoffLimit or group_restarts. Only its trainer killed: no pod ends, the group
restarts in place within seconds. With group_restarts=0 that crash fails the job instead.

Driven through the ``simsiam-job`` CLI like test_nodes.py; the numbers measured (loss to training
again) are printed (pytest -s).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli, wait_for
from helpers.k8s import E2E_NAMESPACE
from helpers.k8s_nodes import (
    ON_REAL_NODES,
    indexed_pod,
    kubectl,
    lose_pod,
    pods_labelled,
    signal_trainers,
    step_records,
    wait_for_steps,
)
from helpers.localruns import assert_continuous, resumed_steps

pytestmark = [pytest.mark.k8s_nodes, pytest.mark.slow]

EPOCHS = 60                  # 4 steps per epoch: 240 steps, a minute or two of training
TOTAL_STEPS = 4 * EPOCHS


def all_pods(nodes, job) -> list[dict]:
    return pods_labelled(nodes, f"batch.kubernetes.io/job-name={job}")


def ended(nodes, job, names: set[str]) -> bool:
    """Every pod in `names` has ended (or is gone: an evicted or deleted pod is removed)."""
    return all(p["status"].get("phase") in ("Failed", "Succeeded") for p in all_pods(nodes, job)
               if p["metadata"]["name"] in names)


def submit(nodes, name, *extra) -> str:
    return run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_REAL_NODES, *TINY,
                    "-o", f"Global.epochs={EPOCHS}", "-o", "Global.save_interval=1", *extra],
                   nodes["env"], check=True).stdout.strip()


@pytest.mark.parametrize("how", ["evicted", "deleted"])
def test_losing_rank_1s_pod_mid_epoch_replaces_that_pod_only_and_the_group_resumes(nodes, name, how):
    env, output = nodes["env"], Path(nodes["output"])
    ref = submit(nodes, name)
    metrics = output / name / "metrics.jsonl"
    wait_for_steps(metrics, 14, ref, env)               # mid-epoch, past a few epoch checkpoints
    rank0 = indexed_pod(nodes, name, 0)
    lost = indexed_pod(nodes, name, 1)["metadata"]["name"]

    lost_at = time.time()
    lose_pod(nodes, lost, how)
    deadline = time.monotonic() + 60                    # the lost pod ends within a minute
    while not ended(nodes, name, {lost}):
        assert time.monotonic() < deadline, all_pods(nodes, name)
        time.sleep(0.5)

    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    steps = step_records(metrics)
    again_at = next(r["time"] for r in steps if r["time"] > lost_at + 1)
    print(f"\n{how}: training again {again_at - lost_at:.1f} s after rank 1's pod was {how} "
          "(a new pod for rank 1; rank 0's stayed)")

    # Only index 1 ran in a new pod: rank 0's pod stayed and restarted in place; no pod counted
    # against backoffLimit, and the preemption did not count against group_restarts.
    pods_now = all_pods(nodes, name)
    succeeded = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]:
                     p["metadata"]["name"]
                 for p in pods_now if p["status"].get("phase") == "Succeeded"}
    assert (succeeded == {"0": rank0["metadata"]["name"], "1": succeeded["1"]}
            and succeeded["1"] != lost), succeeded
    job = json.loads(kubectl(nodes, "-n", E2E_NAMESPACE, "get", "job", name, "-o", "json").stdout)
    assert not job["status"].get("failed"), job["status"]
    assert final["detail"]["group_restarts"] == 1 and final["detail"]["preempted"] == 1, final["detail"]

    # The new pod met the same rank 0 in round 2, never round 1.
    logs = run_cli(["logs", "--all", ref], env, check=True).stdout
    rank0_ip = rank0["status"]["podIP"]
    assert (f"[rank 1] rendezvous: node 1, master {rank0_ip}:6768 ({name}-0.{name}), round 2"
            in logs), logs[-3000:]
    assert re.search(r"\[rank 0\] rendezvous: node 0 .*joins the next round in place", logs), logs[-3000:]

    # Rank 0 resumed once, at a global step past the start; every step is in metrics.jsonl, only
    # those after that checkpoint written twice.
    resumed = resumed_steps((output / name / "train.log").read_text())
    assert len(resumed) == 1 and resumed[0] > 0, resumed
    assert_continuous([r["global_step"] for r in steps], resumed, TOTAL_STEPS)
    assert final["progress"]["global_step"] == TOTAL_STEPS


def test_a_killed_trainer_restarts_the_group_in_place_in_seconds(nodes, name):
    """Only a process died: no pod ends, the group is training again within seconds (the figure is
    printed and loosely bounded), and the restart counts against group_restarts."""
    env, output = nodes["env"], Path(nodes["output"])
    ref = submit(nodes, name)
    metrics = output / name / "metrics.jsonl"
    wait_for_steps(metrics, 14, ref, env)
    pods_before = {p["metadata"]["name"] for p in all_pods(nodes, name)}
    killed_at = time.time()
    signal_trainers(nodes, indexed_pod(nodes, name, 1)["metadata"]["name"], "KILL")
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    again = next(r["time"] for r in step_records(metrics) if r["time"] > killed_at + 1) - killed_at
    print(f"\nkilled trainer: training again {again:.1f} s after (same pods, restarted in place)")
    assert again < 60, again
    assert {p["metadata"]["name"] for p in all_pods(nodes, name)} == pods_before
    assert final["detail"]["group_restarts"] == 1 and final["detail"]["preempted"] == 0, final["detail"]
    assert "group restarted 1 time (1 counted)" in run_cli(["status", ref], env, check=True).stdout


def test_group_restarts_are_bounded_then_the_job_fails_with_the_reason(nodes, name):
    """A crash counts (an eviction would not: preemption is not failure, test above)."""
    env, output = nodes["env"], Path(nodes["output"])
    ref = submit(nodes, name, "--set", "group_restarts=0")
    wait_for_steps(output / name / "metrics.jsonl", 6, ref, env)
    signal_trainers(nodes, indexed_pod(nodes, name, 1)["metadata"]["name"], "KILL")
    final, _ = wait_for(ref, env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=600)
    assert "exit code 2" in final["reason"] and "FailJob" in final["reason"], final["reason"]
    # Whichever rank's exit failed the job passes on rank 0's line (rank 0's pod may be gone with
    # its log: the Job deletes the pods still running when it fails).
    assert "gave up after 0 group restarts" in final["reason"], final["reason"]
