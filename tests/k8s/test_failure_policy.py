"""The Kubernetes side of whole-group restarts, without a cluster: the rendered failure policy, the
bound the trainer enforces, and the manifests of a resumed job's next attempt."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from helpers.k8s import docs_by_kind, make_spec

from simsiam_job.backends.kubernetes.render import ATTEMPT_ANNOTATION, next_attempt
from trainer import contract


def test_failure_policy_restarts_a_lost_peer_uncounted_and_fails_bad_input_and_divergence(render):
    job = docs_by_kind(render(make_spec("pt", nodes=2, gpus=8)))["Job"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    fail, peer_lost, disrupted = rules
    assert fail["action"] == "FailJob" and fail["onExitCodes"] == {
        "containerName": "trainer", "operator": "In",
        "values": [contract.EXIT_BAD_INPUT, contract.EXIT_DIVERGED, contract.EXIT_START_TIMEOUT]}
    # 143: the pod itself was asked to stop (a deleted pod has no DisruptionTarget) and checkpointed
    assert peer_lost["action"] == "Ignore" and peer_lost["onExitCodes"] == {
        "containerName": "trainer", "operator": "In",
        "values": [contract.EXIT_PEER_LOST, contract.EXIT_PREEMPTED]}
    assert disrupted == {"action": "Ignore",
                         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_the_trainer_gets_the_job_name_attempt_and_restart_bound(render):
    job = docs_by_kind(render(make_spec("pt", nodes=2, gpus=8, group_restarts=5)))["Job"]
    env = {v["name"]: v.get("value") for v in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.JOB_ENV] == "pt" and env[contract.ATTEMPT_ENV] == "1"
    assert env[contract.GROUP_RESTARTS_ENV] == "5"
    assert job["metadata"]["annotations"][ATTEMPT_ANNOTATION] == "1"


def _as_served(doc: dict, uid: str) -> dict:
    """What the API server returns for an object we created: its own fields added."""
    served = json.loads(json.dumps(doc))
    served["metadata"].update(uid=uid, resourceVersion="42", creationTimestamp="2026-01-01T00:00:00Z",
                              managedFields=[{"manager": "simsiam-job"}])
    served["status"] = {"failed": 1}
    if doc["kind"] == "Job":
        selector = {"batch.kubernetes.io/controller-uid": uid}
        served["spec"]["selector"] = {"matchLabels": selector}
        served["spec"]["template"]["metadata"]["labels"].update(
            {**selector, "controller-uid": uid, "job-name": "pt", "batch.kubernetes.io/job-name": "pt"})
    else:
        served["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "pt", "uid": "job-uid"}]
    return served


@pytest.mark.parametrize("version", ["1.28.0", "1.33.0"])
def test_resume_renders_the_same_job_as_the_next_attempt(render, version):
    first = render(make_spec("pt", nodes=2, gpus=8))
    by_kind = docs_by_kind(first)
    served = {kind: _as_served(doc, f"{kind}-uid") for kind, doc in by_kind.items()}
    second = next_attempt(served["Job"], served["ConfigMap"], served["Service"])
    assert [d["kind"] for d in second] == ["ConfigMap", "Service", "Job"]
    job = docs_by_kind(second)["Job"]
    assert job["metadata"]["annotations"][ATTEMPT_ANNOTATION] == "2"
    env = {v["name"]: v.get("value") for v in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[contract.ATTEMPT_ENV] == "2"
    # apart from the attempt, exactly what was submitted: same config, command, volumes, policy
    expected = json.loads(json.dumps(by_kind["Job"]))
    expected["metadata"]["annotations"][ATTEMPT_ANNOTATION] = "2"
    for var in expected["spec"]["template"]["spec"]["containers"][0]["env"]:
        if var["name"] == contract.ATTEMPT_ENV:
            var["value"] = "2"
    assert job == expected
    assert docs_by_kind(second)["ConfigMap"] == by_kind["ConfigMap"]
    assert docs_by_kind(second)["Service"] == by_kind["Service"]
    for doc in second:
        kubernetes_validate.validate(doc, version, strict=True)
    third = next_attempt(_as_served(job, "j2"), *(_as_served(d, "x") for d in second[:2]))
    assert docs_by_kind(third)["Job"]["metadata"]["annotations"][ATTEMPT_ANNOTATION] == "3"
