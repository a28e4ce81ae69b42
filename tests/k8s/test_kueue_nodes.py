"""Shared-cluster behaviour on real pods (the two real worker nodes, Kueue v0.17.0 with its
batch/Job integration, namespace simsiam-e2e and its LocalQueue): preemption by a higher-priority
job is not a failure (the preempted job checkpoints on SIGTERM, waits QUEUED, is readmitted and
resumes at that step, its group_restarts untouched); nor are two evictions with group_restarts=1;
and a group that cannot start (rank 1 unschedulable) gives up at the start timeout, naming rank 1
and the scheduler's reason.

The numbers measured (preemption to QUEUED, readmission to training again) are printed (pytest -s).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli, wait_for
from helpers.k8s import E2E_QUEUE
from helpers.k8s_nodes import ON_REAL_NODES, indexed_pod, kubectl, lose_pod, step_records, wait_for_steps
from helpers.localruns import resumed_steps

pytestmark = [pytest.mark.k8s_nodes, pytest.mark.slow]

EPOCHS = 40                  # 4 steps per epoch
TOTAL_STEPS = 4 * EPOCHS
# The preempted job must still be training when Kueue's preemption reaches its pods: on a fast
# machine 40 epochs end about 15 s after step 10, sooner than submit -> preempt -> SIGTERM can.
PREEMPTED_EPOCHS = 120
EVICTIONS = 2
# Each pod asks for most of a real node's CPU quota share: the high-priority job fits only where
# the low one was.
QUEUED = ["--set", f"queue={E2E_QUEUE}", "--set", "cpu=1500m"]


def submit(nodes, name, *extra, epochs=EPOCHS) -> str:
    return run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_REAL_NODES, *TINY,
                    "-o", f"Global.epochs={epochs}", "-o", "Global.save_interval=1", *extra],
                   nodes["env"], check=True).stdout.strip()


def test_a_preempted_job_checkpoints_waits_queued_resumes_and_succeeds_without_a_counted_restart(nodes, name):
    env, output = nodes["env"], Path(nodes["output"])
    low = submit(nodes, name, *QUEUED, "--set", "workload_priority=low", "--set", "group_restarts=0",
                 epochs=PREEMPTED_EPOCHS)
    metrics = output / name / "metrics.jsonl"
    wait_for_steps(metrics, 10, low, env)

    high_name = f"{name}-hi"
    preempted_at = time.time()
    high = submit(nodes, high_name, *QUEUED, "--set", "workload_priority=high", epochs=2)
    queued, _ = wait_for(low, env, lambda st: st["state"] == "QUEUED", what="the low job QUEUED", timeout=300)
    print(f"\npreempted: QUEUED {time.time() - preempted_at:.1f} s after the high-priority job was submitted")
    assert "Preempted" in queued["reason"] or "Evicted" in queued["reason"], queued["reason"]
    wait_for(high, env, lambda st: st["state"] == "SUCCEEDED", what="the high job SUCCEEDED", timeout=600)
    final, _ = wait_for(low, env, lambda st: st["state"] == "SUCCEEDED", what="the low job SUCCEEDED",
                        timeout=900)
    # Kueue suspends the Job; the Job controller deletes its pods, whose trainers get SIGTERM. Which
    # rank's signal stops the group first varies (rank 0's launcher also hosts the master and
    # forwards later, so rank 0 often stops by agreement without a SIGTERM of its own): the start
    # that resumed names the preemption, whichever rank it reached first.
    starts = [json.loads(line) for line in (output / name / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[1]["after"].startswith("preempted: "), starts
    # group_restarts=0, yet no failure: the preemption was not counted.
    assert (final["detail"]["preempted"] >= 1
            and "preempted" in run_cli(["status", low], env, check=True).stdout)
    steps = [r["global_step"] for r in step_records(metrics)]
    assert steps == list(range(1, 4 * PREEMPTED_EPOCHS + 1)), steps     # resumed at the SIGTERM checkpoint
    resumed = resumed_steps((output / name / "train.log").read_text())
    assert len(resumed) == 1 and resumed[0] > 0
    again = min(r["time"] for r in step_records(metrics) if r["global_step"] == resumed[0] + 1)
    print(f"readmitted: training again {again - preempted_at:.1f} s after the preemption "
          "(the high-priority job ran in between)")
    assert [s["counted"] for s in starts] == [False, False]


def test_evictions_beyond_the_group_restart_bound_do_not_fail_the_job(nodes, name):
    """Two evictions with group_restarts=1 (the JobSet test evicts four times with 3). An Indexed
    Job recreates its failed pods after the Job controller's back-off, which doubles with every
    failed pod (each eviction fails two: 20 s, then 80 s, then 320 s...): more evictions here would
    only wait longer."""
    env, output = nodes["env"], Path(nodes["output"])
    ref = submit(nodes, name, "--set", "group_restarts=1")
    metrics = output / name / "metrics.jsonl"
    for eviction in range(EVICTIONS):
        wait_for_steps(metrics, 10 + 12 * eviction, ref, env)
        pod = None
        while pod is None:
            try:
                pod = indexed_pod(nodes, name, 1)
            except ValueError:      # the replacement is not running yet
                time.sleep(0.5)
        lose_pod(nodes, pod["metadata"]["name"], "evicted")
        wait_for(ref, env, lambda st, eviction=eviction: st["detail"].get("group_restarts", 0) > eviction,
                 what="restarted", timeout=300)
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=900)
    assert final["detail"]["preempted"] == EVICTIONS
    assert f"preempted {EVICTIONS} times" in run_cli(["status", ref], env, check=True).stdout
    assert [r["global_step"] for r in step_records(metrics)] == list(range(1, TOTAL_STEPS + 1))


def test_a_group_that_cannot_start_gives_up_at_the_start_timeout_naming_the_pending_rank(nodes, name):
    """worker-2 is closed by a taint; each pod asks for a whole real node's CPU (the default, 2),
    so rank 1 cannot be placed anywhere while rank 0 runs on worker-1."""
    env = nodes["env"]
    kubectl(nodes, "taint", "node", "worker-2", "simsiam-test/closed=true:NoSchedule")
    try:
        ref = run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_REAL_NODES[:-4], *TINY,
                       "--set", "start_timeout=60"], env, check=True).stdout.strip()
        waiting, _ = wait_for(ref, env,
                              lambda st: st["state"] == "PENDING" and "rank 1" in (st["reason"] or ""),
                              what="rank 1 pending", timeout=300)
        # the scheduler counts the taints it met (worker-2's simsiam-test/closed among them)
        assert "untolerated taint" in waiting["reason"], waiting["reason"]
        started = time.time()
        final, _ = wait_for(ref, env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=300)
        print(f"\nstart timeout: FAILED {time.time() - started:.1f} s after rank 1 was seen pending")
        reason = final["reason"]
        assert "exit code 69" in reason and "node 1 never joined" in reason, reason
        # (rank 0's node, freed by the timeout, may take rank 1 before the Job controller deletes it)
        assert re.search(r"rank 1 was (never|only after the job had failed) scheduled: FailedScheduling:",
                         reason) and "untolerated taint" in reason, reason
        shown = run_cli(["status", ref], env, check=True).stdout
        assert re.search(r"rank 1 was (never|only after the job had failed) scheduled", shown), shown
    finally:
        kubectl(nodes, "taint", "node", "worker-2", "simsiam-test/closed-", check=False)
