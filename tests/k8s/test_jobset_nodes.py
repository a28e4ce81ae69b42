"""The JobSet mode end to end on real pods: the two real worker nodes of the test cluster, the
JobSet controller (v0.11.1) and a ReadWriteOnce output claim (`output-rwo`, whose volume lives on
one real node) that only rank 0's pod mounts. Through the ``simsiam-job`` CLI, as in
test_nodes.py: a pretrain and a probe succeed; an evicted worker restarts the whole group, which
resumes at the checkpoint's step with identical parameters on both ranks; four evictions do not use
up group_restarts; a worker's bad input fails the JobSet at once with its line; a frozen worker is
found by rank 0's watchdog over the network.

The numbers measured (eviction to training again, freeze to detection) are printed (pytest -s).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli, wait_for
from helpers.k8s import E2E_NAMESPACE, RWO_CLAIM
from helpers.k8s_nodes import (
    ON_REAL_NODES,
    kubectl,
    lose_pod,
    pods_labelled,
    signal_trainers,
    step_records,
    wait_for_steps,
)
from helpers.localruns import resumed_steps
from helpers.paths import REPO

pytestmark = [pytest.mark.k8s_nodes, pytest.mark.slow]

# The output claim is the ReadWriteOnce one; the rest as in test_nodes.py.
ON_JOBSET = [*[a if a != "pvc:output" else f"pvc:{RWO_CLAIM}" for a in ON_REAL_NODES],
             "--set", "workload=jobset"]
EPOCHS = 40                  # 4 steps per epoch
TOTAL_STEPS = 4 * EPOCHS
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


def digest_hook(nodes) -> list[str]:
    """rank_digest_train.py loaded into every ``simsiam-train`` of the pods by a sitecustomize
    module on PYTHONPATH (from the data claim, mounted read-only at /data)."""
    hooks = Path(nodes["data"]) / "digest-hooks"    # apart from test_nodes.py's hook
    hooks.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests" / "k8s" / "rank_digest_train.py", hooks / "rank_digest_train.py")
    (hooks / "sitecustomize.py").write_text(
        "import os\nimport sys\n\n"
        "if os.path.basename(sys.argv[0]) == 'simsiam-train':\n"
        "    import rank_digest_train  # noqa: F401  (wraps the pretraining task)\n")
    return ["--env", "PYTHONPATH=/data/digest-hooks"]


def rwo_dir(nodes) -> Path:
    pv = json.loads(kubectl(nodes, "get", "pv", f"{E2E_NAMESPACE}-{RWO_CLAIM}", "-o", "json").stdout)
    return Path(pv["spec"]["local"]["path"])           # a local volume: one node's own disk


def running_pod(nodes, job, role: str) -> dict | None:
    found = [p for p in pods_labelled(nodes, f"{JOBSET_LABEL}={job}") if p["status"].get("phase") == "Running"
             and p["metadata"]["labels"]["jobset.sigs.k8s.io/replicatedjob-name"] == role
             and not p["metadata"].get("deletionTimestamp")]
    return found[0] if len(found) == 1 else None


def digests(logs: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2)
            for m in re.finditer(r"\[rank (\d)\] rank-state \d ([0-9a-f]{64})", logs)}


def submit(nodes, name, *extra) -> str:
    return run_cli(["submit", "pretrain", "--nodes", "2", "--name", name, *ON_JOBSET, *TINY,
                    *digest_hook(nodes), *extra], nodes["env"], check=True).stdout.strip()


def test_a_two_node_jobset_with_a_readwriteonce_claim_then_a_probe(nodes, name):
    env, output = nodes["env"], rwo_dir(nodes)
    ref = submit(nodes, name, "-o", "Global.epochs=4")
    running, _ = wait_for(ref, env, lambda st: st["state"] == "RUNNING", what="RUNNING", timeout=600)
    assert running["detail"]["kind"] == "JobSet"
    assert {n["rank"]: n["state"] for n in running["nodes"]} == {0: "RUNNING", 1: "RUNNING"}
    # Rank 0 alone mounts the claim; the worker's /output is its own emptyDir.
    leader, worker = running_pod(nodes, name, "leader"), running_pod(nodes, name, "worker")
    claims = lambda pod: [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]  # noqa: E731
                          if "persistentVolumeClaim" in v]
    assert RWO_CLAIM in claims(leader) and RWO_CLAIM not in claims(worker) and "data" in claims(worker)
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    logs = run_cli(["logs", "--all", ref], env, check=True).stdout
    leader_ip = leader["status"]["podIP"]
    assert (f"[rank 1] rendezvous: node 1, master {leader_ip}:6768 "
            f"({name}-leader-0-0.{name}), generation 0") in logs
    steps = [r["global_step"] for r in step_records(output / name / "metrics.jsonl")]
    assert steps == list(range(1, 17))
    found = digests(logs)
    assert set(found) == {0, 1} and found[0] == found[1], found
    assert (output / name / "encoder.pdparams").is_file()

    probe = f"{name}-lp"
    probe_ref = run_cli(["submit", "linear-probe", "--from", ref, "--nodes", "2", "--name", probe, *ON_JOBSET,
                         "-c", REPO / "trainer/configs/simsiam_cifar_resnet18_fmnist_lp_cpu.yaml",
                         "-o", "Model.width=4", "-o", "Global.epochs=1",
                         "-o", "DataLoader.Train.sampler.batch_size=8"], env, check=True).stdout.strip()
    wait_for(probe_ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=600)
    evaluated = json.loads((output / probe / "eval.json").read_text())
    assert evaluated["pretrained_model"] == f"/output/{name}/encoder.pdparams"
    assert evaluated["last"]["images"] == 16


@pytest.mark.parametrize("evictions,bound", [(1, 3), (4, 3)])
def test_evicted_workers_restart_the_group_which_resumes_with_identical_parameters(nodes, name, evictions,
                                                                                   bound):
    env, output = nodes["env"], rwo_dir(nodes)
    ref = submit(nodes, name, "-o", f"Global.epochs={EPOCHS}", "-o", "Global.save_interval=1",
                 "--set", f"group_restarts={bound}")
    metrics = output / name / "metrics.jsonl"
    for eviction in range(evictions):
        wait_for_steps(metrics, 10 + 12 * eviction, ref, env)
        worker = running_pod(nodes, name, "worker")
        while worker is None:
            time.sleep(0.5)
            worker = running_pod(nodes, name, "worker")
        evicted_at = time.time()
        lose_pod(nodes, worker["metadata"]["name"], "evicted")
        restarted = wait_for(ref, env, lambda st: (st["detail"].get("group_restarts", 0)
                                                   > eviction),  # noqa: B023 wait_for calls it at once
                             what="the group restarted", timeout=300)[0]
        again = None
        while again is None:
            later = [r for r in step_records(metrics) if r["time"] > evicted_at + 1]
            again = later[0]["time"] if later and len(later) > 1 else None
            time.sleep(0.5)
        print(f"\neviction {eviction + 1}: training again {again - evicted_at:.1f} s after it")
        assert restarted["detail"]["counted_restarts"] == 0
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=900)
    assert final["detail"]["group_restarts"] == evictions and final["detail"]["counted_restarts"] == 0
    assert final["detail"]["preempted"] == evictions
    # Each stop wrote a checkpoint at the step it stopped: every step once, resumed at S > 0.
    steps = [r["global_step"] for r in step_records(metrics)]
    assert steps == list(range(1, TOTAL_STEPS + 1)), steps
    resumed = resumed_steps((output / name / "train.log").read_text())
    assert len(resumed) == evictions and all(s > 0 for s in resumed), resumed
    # The last group started from rank 0's checkpoint (the worker has no claim) and ended with
    # the same parameters on both ranks.
    found = digests(run_cli(["logs", "--all", ref], env, check=True).stdout)
    assert set(found) == {0, 1} and found[0] == found[1], found


def test_a_workers_bad_input_fails_the_jobset_at_once_with_its_line(nodes, name):
    env = nodes["env"]
    ref = submit(nodes, name, "-o", "Global.epochs=2", "--env", "FAIL_RANK=1")
    final, _ = wait_for(ref, env, lambda st: st["state"] == "FAILED", what="FAILED", timeout=600)
    assert "FailJobSet" in final["reason"], final["reason"]
    # The JobSet fails on whichever rank's Job fails first: rank 1's own, or rank 0's, which left
    # with rank 1's exit code and passes on its line.
    reason = final["reason"]
    assert "rank 1: Error: exit code 2" in reason or "failed: exit 2 (bad input)" in reason, reason
    assert "no-such-split" in reason, reason
    assert final["detail"]["group_restarts"] == 0


def test_a_frozen_worker_is_found_over_the_network_and_the_group_restarts(nodes, name):
    env, output = nodes["env"], rwo_dir(nodes)
    # A stopped process ignores SIGTERM: its pod goes at the end of the grace period, which the
    # restart (BlockingRecreate) waits for; a short one keeps the test short.
    ref = submit(nodes, name, "-o", f"Global.epochs={EPOCHS}", "-o", "Global.save_interval=1",
                 "--set", "termination_grace=20")
    wait_for_steps(output / name / "metrics.jsonl", 10, ref, env)
    worker = running_pod(nodes, name, "worker")["metadata"]["name"]
    frozen_at = time.time()
    signal_trainers(nodes, worker, "STOP")
    # Rank 0's watchdog sees rank 1's mirrored heartbeat stop, and rank 0 leaves with 75.
    train_log = output / name / "train.log"
    deadline = time.monotonic() + 90
    while "no heartbeat from rank 1" not in train_log.read_text():
        assert time.monotonic() < deadline, train_log.read_text()[-3000:]
        time.sleep(0.5)
    found_at = time.time()
    print(f"\nfrozen worker found {found_at - frozen_at:.1f} s after SIGSTOP")
    assert found_at - frozen_at < 60
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=900)
    assert final["detail"]["group_restarts"] == 1 and final["detail"]["counted_restarts"] == 1


def test_a_killed_trainer_restarts_the_group_in_place_in_seconds(nodes, name):
    """Only rank 1's trainer died: no pod ends and JobSet restarts nothing; the pods meet again in
    the next round of the same generation, training again within seconds (printed, loosely
    bounded); rank 0 counts the restart against group_restarts."""
    env, output = nodes["env"], rwo_dir(nodes)
    ref = submit(nodes, name, "-o", f"Global.epochs={EPOCHS}", "-o", "Global.save_interval=1")
    metrics = output / name / "metrics.jsonl"
    wait_for_steps(metrics, 10, ref, env)
    pods_before = {p["metadata"]["name"] for p in pods_labelled(nodes, f"{JOBSET_LABEL}={name}")}
    killed_at = time.time()
    signal_trainers(nodes, running_pod(nodes, name, "worker")["metadata"]["name"], "KILL")
    final, _ = wait_for(ref, env, lambda st: st["state"] == "SUCCEEDED", what="SUCCEEDED", timeout=900)
    later = [r["time"] for r in step_records(metrics) if r["time"] > killed_at + 1]
    print(f"\nkilled trainer: training again {later[1] - killed_at:.1f} s after "
          f"(same pods, restarted in place)")
    assert later[1] - killed_at < 60
    assert {p["metadata"]["name"] for p in pods_labelled(nodes, f"{JOBSET_LABEL}={name}")} == pods_before
    detail = final["detail"]
    assert (detail["group_restarts"], detail["counted_restarts"], detail["preempted"]) == (1, 1, 0), detail
    assert "round 2" in run_cli(["logs", "--all", ref], env, check=True).stdout
