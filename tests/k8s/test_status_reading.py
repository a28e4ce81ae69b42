"""How status reads Job and pod objects, on objects shaped like the API server's (no cluster):
the reasons a person acts on (image pull, OOM, exit codes) that kwok's fake pods never show."""

from __future__ import annotations

import pytest

from simsiam_job.backends.base import JobRef, State
from simsiam_job.backends.kubernetes import job_status, progress_of


def model(kind: str, data: dict):
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(data, kind)  # the client's own JSON -> model path


def job(conditions=(), completions=2, **status):
    return model("V1Job", {
        "metadata": {"name": "pt", "namespace": "ns"},
        "spec": {"completions": completions, "parallelism": completions,
                 "template": {"spec": {"containers": []}}},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                  for t, r, m in conditions], **status}})


def pod(index, phase, *, created="2026-01-01T00:00:00Z", node="a100-0", container=None,
        conditions=()):
    return model("V1Pod", {
        "metadata": {"name": f"pt-{index}-{created[-3:-1]}", "creationTimestamp": created,
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": phase, "conditions": list(conditions),
                   "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "",
                                          "ready": False, "restartCount": 0, "state": container}]
                   if container else []}})


REF = JobRef("kubernetes", "ns/pt")


@pytest.mark.parametrize("container,reason,exit_code", [
    ({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}},
     'ImagePullBackOff: Back-off pulling image "x"', None),
    ({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "OOMKilled: exit code 137", 137),
    ({"terminated": {"exitCode": 2, "reason": "Error"}}, "Error: exit code 2", 2),
])
def test_container_reasons_reach_the_node_line(container, reason, exit_code):
    phase = "Pending" if "waiting" in container else "Failed"
    result = job_status(REF, job(), [pod(0, "Running", container={"running": {}}),
                                     pod(1, phase, container=container)])
    assert result.nodes[1].reason == reason and result.nodes[1].exit_code == exit_code
    if phase == "Pending":
        assert result.state is State.PENDING and result.reason == f"rank 1: {reason}"


def test_the_newest_pod_of_an_index_counts_and_replacements_are_restarts():
    old = pod(0, "Failed", created="2026-01-01T00:00:00Z", container={"terminated": {"exitCode": 1}})
    new = pod(0, "Running", created="2026-01-01T00:05:00Z", node="a100-2", container={"running": {}})
    result = job_status(REF, job(completions=1), [new, old])
    assert result.state is State.RUNNING
    (node,) = result.nodes
    assert (node.host, node.restarts, node.reason) == ("a100-2", 1, None)


def test_running_needs_every_rank_and_failure_reason_comes_from_the_job():
    half = job_status(REF, job(), [pod(0, "Running", container={"running": {}})])
    assert half.state is State.PENDING and half.reason == "rank 1: no pod yet"
    failed = job_status(REF, job([("Failed", "BackoffLimitExceeded", "Job has reached the specified "
                                   "backoff limit")]), [])
    assert failed.state is State.FAILED
    assert failed.reason == "BackoffLimitExceeded: Job has reached the specified backoff limit"


def test_progress_comes_from_rank_0s_progress_lines_as_the_trainer_wrote_them():
    """The trainer prints each step record on stdout (trainer.contract.progress_line); status reads
    the newest one from the tail of rank 0's log, among the other log lines."""
    from trainer import contract

    record = {"type": "step", "epoch": 3, "epochs": 100, "step": 12, "steps_per_epoch": 1251,
              "global_step": 2514, "total_steps": 125100, "loss": -0.8123, "lr": 0.1,
              "images_per_sec": 2843.5, "eta_seconds": 43210.0, "time": 1.7e9}
    log = "\n".join([
        "2026-01-01T00:00:00.1Z " + contract.progress_line({**record, "step": 11, "loss": -0.8}),
        "2026-01-01T00:00:00.2Z epoch 3/100  step 12/1251  loss -0.8123",
        "2026-01-01T00:00:00.3Z " + contract.progress_line(record),
        "2026-01-01T00:00:00.4Z LAUNCH INFO something else",
    ])
    result = job_status(REF, job(), [pod(0, "Running", container={"running": {}})],
                        progress=progress_of(log))
    assert result.progress == record

    from simsiam_job.progress import format_progress

    assert format_progress(result.progress) == (
        "epoch 3/100  step 12/1251  loss -0.8123  2843.5 img/s  ETA 12h00m")
    assert progress_of("2026-01-01T00:00:00.1Z no progress yet\n") is None


def test_status_says_where_the_output_lives():
    with_claim = model("V1Job", {
        "metadata": {"name": "pt", "namespace": "ns"},
        "spec": {"completions": 1, "template": {"spec": {
            "containers": [{"name": "trainer", "volumeMounts": [
                {"name": "output", "mountPath": "/output", "subPath": "team/runs"}]}],
            "volumes": [{"name": "output", "persistentVolumeClaim": {"claimName": "results"}}]}}},
        "status": {}})
    assert job_status(REF, with_claim, []).output == "pvc:results/team/runs/pt (in the pods: /output/pt)"
    assert job_status(REF, job(), []).output is None   # an emptyDir: gone with the pod


def test_a_failed_job_names_the_rank_that_ended_it_with_the_trainers_line():
    """The trainer writes its one error line as the container's termination message: `status`
    shows it beside the Job's condition (e.g. the group-restart bound, a bad config)."""
    line = "gave up after 0 group restarts: rank 1 (host b) left without a word"
    ended = pod(0, "Failed", container={"terminated": {"exitCode": 2, "reason": "Error", "message": line}})
    other = pod(1, "Failed", container={"terminated": {"exitCode": 143, "reason": "Error"}})
    failed = job_status(REF, job([("Failed", "PodFailurePolicy", "Container trainer for pod ns/pt-0 "
                                   "failed with exit code 2 matching FailJob rule at index 0")]),
                        [ended, other])
    assert failed.state is State.FAILED
    assert failed.reason.endswith(f"; rank 0: Error: exit code 2 ({line})"), failed.reason


# ---- queued in Kueue, preempted, JobSets ------------------------------------------------------------

from simsiam_job.backends.kubernetes import Queued, jobset_status, kueue_evictions, kueue_reason  # noqa: E402


def queued_job(**status):
    return model("V1Job", {
        "metadata": {"name": "pt", "namespace": "ns", "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"completions": 3, "suspend": True, "template": {"spec": {"containers": []}}},
        "status": status})


def workload(*conditions, evictions=()):
    return {"metadata": {"name": "job-pt-1a2b3"}, "status": {
        "conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions],
        "schedulingStats": {"evictions": [{"reason": r, "underlyingCause": "", "count": n}
                                          for r, n in evictions]}}}


def test_a_job_waiting_in_kueue_is_queued_with_kueues_reason_and_position():
    insufficient = ("couldn't assign flavors to pod set main: "
                    "insufficient unused quota for nvidia.com/gpu in flavor default-flavor, 8 more needed")
    found = workload(("QuotaReserved", "False", "Pending", insufficient))
    result = job_status(REF, queued_job(), [], queued=Queued("team-a", kueue_reason(found, "team-a"), 0, 1))
    assert result.state is State.QUEUED and not result.state.finished
    assert result.reason == f"Pending: {insufficient}, position 2 in LocalQueue team-a"
    # no Workload at all: Kueue is not running, or the queue does not exist
    assert "is Kueue running and does the queue exist?" in kueue_reason(None, "team-a")


def test_a_preempted_job_is_queued_again_and_says_how_often():
    found = workload(("QuotaReserved", "False", "Pending", "waiting"),
                     ("Evicted", "True", "Preempted",
                      "Preempted to accommodate a workload (UID: 1) due to prioritization"),
                     ("Preempted", "True", "InClusterQueue",
                      "Preempted to accommodate a workload (UID: 1) due to "
                      "prioritization in the ClusterQueue"),
                     evictions=(("Preempted", 2), ("PodsReadyTimeout", 1)))
    assert kueue_evictions(found) == 3
    result = job_status(REF, queued_job(), [],
                        queued=Queued("team-a", kueue_reason(found, "team-a"), kueue_evictions(found)))
    assert result.state is State.QUEUED
    assert (result.reason.startswith("InClusterQueue: Preempted to accommodate")
            and result.reason.endswith("; preempted 3 times"))
    assert result.detail["preempted"] == 3


def test_an_indexed_jobs_restarts_are_counted_apart_from_its_preemptions():
    """Each restart of the group replaces rank 0's pod: a pod that ended with 143 or was disrupted
    was preempted (never counted against group_restarts); one that crashed was a counted restart."""
    evicted = pod(0, "Failed", created="2026-01-01T00:01:00Z", container={"terminated": {"exitCode": 143}},
                  conditions=[{"type": "DisruptionTarget", "status": "True",
                               "reason": "EvictionByEvictionAPI"}])
    crashed = pod(0, "Failed", created="2026-01-01T00:02:00Z", container={"terminated": {"exitCode": 75}})
    now = pod(0, "Running", created="2026-01-01T00:03:00Z", container={"running": {}})
    result = job_status(REF, job(completions=1), [evicted, crashed, now])
    assert result.state is State.RUNNING
    assert result.reason == "group restarted 2 times (1 counted); preempted 1 time"



def test_restarts_in_place_come_from_rank_0s_progress_record():
    """A restart in place replaces no pod: rank 0's trainer counts the group's starts and says so in
    its progress lines (one preemption replaced rank 0's pod; two crashes restarted in place)."""
    evicted = pod(0, "Failed", created="2026-01-01T00:01:00Z", container={"terminated": {"exitCode": 143}},
                  conditions=[{"type": "DisruptionTarget", "status": "True",
                               "reason": "EvictionByEvictionAPI"}])
    now = pod(0, "Running", created="2026-01-01T00:03:00Z", container={"running": {}})
    progress = progress_of('simsiam-progress {"global_step": 7, "group_restarts": 3, "counted_restarts": 2}')
    result = job_status(REF, job(completions=1), [evicted, now], progress=progress)
    assert result.reason == "group restarted 3 times (2 counted); preempted 1 time"
    assert result.detail["group_restarts"] == 3

def jobset_obj(conditions=(), restarts=0, counted=0, suspend=False, nodes=2, labels=None):
    return {"metadata": {"name": "pt", "namespace": "ns", "labels": labels or {}, "uid": "u"},
            "spec": {"suspend": suspend, "failurePolicy": {"maxRestarts": 3},
                     "replicatedJobs": [
                         {"name": "leader", "replicas": 1, "template": {"spec": {
                             "completions": 1, "template": {"spec": {
                                 "containers": [{"name": "trainer", "volumeMounts": [
                                     {"name": "output", "mountPath": "/output"}]}],
                                 "volumes": [{"name": "output",
                                              "persistentVolumeClaim": {"claimName": "rwo"}}]}}}}},
                         {"name": "worker", "replicas": 1, "template": {"spec": {
                             "completions": nodes - 1, "template": {"spec": {}}}}}]},
            "status": {"restarts": restarts, "restartsCountTowardsMax": counted,
                       "conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                      for t, r, m in conditions]}}


def js_pod(role, index, phase, attempt="0", container=None, node="worker-1"):
    p = pod(index, phase, container=container, node=node)
    p.metadata.name = f"pt-{role}-0-{index}-abcde"
    p.metadata.labels = {"jobset.sigs.k8s.io/replicatedjob-name": role,
                         "jobset.sigs.k8s.io/restart-attempt": attempt}
    return p


def test_a_jobsets_ranks_restarts_and_preemptions():
    js = jobset_obj(restarts=3, counted=1)
    pods = [js_pod("leader", 0, "Running", "3", {"running": {}}),
            js_pod("worker", 0, "Running", "3", {"running": {}}),
            js_pod("worker", 0, "Failed", "2", {"terminated": {"exitCode": 143}})]      # the start before
    result = jobset_status(REF, js, pods)
    assert result.state is State.RUNNING
    assert [(n.rank, n.state) for n in result.nodes] == [(0, State.RUNNING), (1, State.RUNNING)]
    assert result.reason == "group restarted 3 times (1 counted, at most 3); preempted 2 times"
    assert result.output == "pvc:rwo/pt (in rank 0's pod: /output/pt)"
    assert result.detail["kind"] == "JobSet" and result.detail["pods"] == {
        0: "pt-leader-0-0-abcde", 1: "pt-worker-0-0-abcde"}


def test_a_jobsets_restarts_in_place_come_from_rank_0s_progress_record():
    """Rank 0 counts every start (JobSet's one recreation and two restarts in place); only those
    in place are counted by it, JobSet counts its own."""
    js = jobset_obj(restarts=1, counted=0)
    pods = [js_pod("leader", 0, "Running", "1", {"running": {}}),
            js_pod("worker", 0, "Running", "1", {"running": {}})]
    progress = progress_of('simsiam-progress {"global_step": 9, "group_restarts": 3, "counted_restarts": 2}')
    result = jobset_status(REF, js, pods, progress=progress)
    assert result.reason == "group restarted 3 times (2 counted, at most 3); preempted 1 time"
    assert (result.detail["group_restarts"], result.detail["counted_restarts"]) == (3, 2)


def test_a_failed_jobset_names_the_rank_and_the_trainers_line():
    from trainer import contract

    line = contract.Outcome(contract.End.BAD_INPUT, 1, 2,
                            "DataLoader.Train.dataset.root /data/train: no images").to_json()
    js = jobset_obj([("Failed", "FailJobSetActionReason", "applying FailJobSet failure policy action "
                                                          "(first failed job: pt-worker-0)")])
    pods = [js_pod("leader", 0, "Failed", container={"terminated": {"exitCode": 143}}),
            js_pod("worker", 0, "Failed",
                   container={"terminated": {"exitCode": 2, "reason": "Error", "message": line}})]
    result = jobset_status(REF, js, pods)
    assert result.state is State.FAILED
    assert result.reason.endswith("; rank 1: Error: exit code 2 (rank 1 exited with exit code 2 (bad input): "
                                  "DataLoader.Train.dataset.root /data/train: no images)"), result.reason


def test_a_start_timeout_names_the_rank_never_scheduled_and_the_schedulers_reason():
    """The failed job's pending pod is gone with it; its FailedScheduling event remains."""
    from trainer import contract

    message = contract.Outcome(contract.End.NOT_STARTED, None, 69, "the group did not form within the start "
                               "timeout (60 s): node 1 never joined").to_json()
    js = jobset_obj([("Failed", "FailJobSetActionReason", "applying FailJobSet failure policy action")])
    pods = [js_pod("leader", 0, "Failed",
                   container={"terminated": {"exitCode": 69, "reason": "Error", "message": message}})]
    event = model("CoreV1Event", {"metadata": {"name": "e"},
                                  "involvedObject": {"kind": "Pod", "name": "pt-worker-0-0-x7k2p"},
                                  "reason": "FailedScheduling",
                                  "message": "0/7 nodes are available: 1 node(s) had "
                                             "untolerated taint {simsiam-test/closed: }.",
                                  "lastTimestamp": "2026-01-01T00:00:00Z"})
    other = model("CoreV1Event", {"metadata": {"name": "f"},
                                  "involvedObject": {"kind": "Pod", "name": "other-worker-0-0-aaaaa"},
                                  "reason": "FailedScheduling", "message": "unrelated"})
    result = jobset_status(REF, js, pods, events=[other, event])
    assert "node 1 never joined" in result.reason
    assert result.reason.endswith("; rank 1 was never scheduled: FailedScheduling: 0/7 nodes are available: "
                                  "1 node(s) had untolerated taint {simsiam-test/closed: }."), result.reason


def test_a_queued_jobset():
    js = jobset_obj(suspend=True, labels={"kueue.x-k8s.io/queue-name": "team-a"})
    result = jobset_status(REF, js, [], queued=Queued("team-a", "Pending: waiting for quota"))
    assert result.state is State.QUEUED and result.reason == "Pending: waiting for quota"
