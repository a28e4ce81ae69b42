"""How status reads Job and pod objects, on objects shaped like the API server's (no cluster):
the reasons a person acts on (image pull, OOM, exit codes) that kwok's fake pods never show."""

from __future__ import annotations

import pytest

from simsiam_job.backends.base import JobRef, State
from simsiam_job.backends.kubernetes import job_status


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
