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

    assert format_progress(result.progress) == "epoch 3/100  step 12/1251  loss -0.8123  2843.5 img/s  ETA 12h00m"
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
                                   "failed with exit code 2 matching FailJob rule at index 0")]), [ended, other])
    assert failed.state is State.FAILED
    assert failed.reason.endswith(f"; rank 0: Error: exit code 2 ({line})"), failed.reason
