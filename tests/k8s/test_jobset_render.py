"""The JobSet mode, rendered without a cluster: a leader (rank 0, the only pod with the output
claim) and workers, their commands, and a failure policy generated from the contract's decision.
The pod templates are validated against Kubernetes' own schemas; the JobSet itself by the JobSet
CRD's schema in the API server (test_jobset_nodes.py)."""

from __future__ import annotations

import os

import kubernetes_validate
import pytest
from helpers.cli import assert_one_line_error, run_cli
from helpers.k8s import docs_by_kind, make_spec

from simsiam_job.backends.kubernetes.render import jobset_failure_rules
from simsiam_job.errors import UsageError
from trainer import contract


def jobset(render, nodes=3, **options):
    docs = render(make_spec("pt", nodes=nodes, gpus=8, workload="jobset", **options))
    assert [d["kind"] for d in docs] == ["ConfigMap", "JobSet"]     # its headless Service is JobSet's own
    return docs_by_kind(docs)["JobSet"]


def replicated(js) -> dict[str, dict]:
    return {r["name"]: r for r in js["spec"]["replicatedJobs"]}


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("version", ["1.28.0", "1.33.0", "1.37.0"])
@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_each_replicated_job_is_a_valid_indexed_job(render, version, nodes):
    js = jobset(render, nodes=nodes)
    jobs = replicated(js)
    assert list(jobs) == (["leader", "worker"] if nodes > 1 else ["leader"])
    for name, rjob in jobs.items():
        assert rjob["replicas"] == 1 and rjob["groupName"] == "default"
        spec = rjob["template"]["spec"]
        assert spec["completionMode"] == "Indexed"      # the pods' hostnames need it
        assert spec["completions"] == spec["parallelism"] == (1 if name == "leader" else nodes - 1)
        assert spec["backoffLimit"] == 0                 # the JobSet's failurePolicy decides
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": f"pt-{name}-0", "namespace": "x"}, "spec": spec}
        kubernetes_validate.validate(job, version, strict=True)


def test_only_the_leader_mounts_the_output_claim(render):
    jobs = replicated(jobset(render))
    leader = jobs["leader"]["template"]["spec"]["template"]["spec"]
    worker = jobs["worker"]["template"]["spec"]["template"]["spec"]
    volume = lambda pod: next(v for v in pod["volumes"] if v["name"] == "output")  # noqa: E731
    assert volume(leader)["persistentVolumeClaim"] == {"claimName": "results"}
    assert volume(worker) == {"name": "output", "emptyDir": {}}
    # the data claim is read-only on every pod
    assert all(any(v["name"] == "data" for v in pod["volumes"]) for pod in (leader, worker))


def test_workers_meet_the_leader_by_name_with_the_restart_attempt_as_generation(render):
    js = jobset(render, nodes=3)
    for name, rjob in replicated(js).items():
        (container,) = rjob["template"]["spec"]["template"]["spec"]["containers"]
        argv = container["command"]
        assert arg(argv, "--rank0-host") == "pt-leader-0-0.pt"      # <jobset>-<rjob>-<job>-<pod>.<subdomain>
        assert arg(argv, "--generation") == "$(JOBSET_RESTART_ATTEMPT)"
        assert arg(argv, "--heartbeats-dir") == "/output/pt/heartbeats"
        assert arg(argv, "--start-timeout") == "600"
        assert "--rounds-dir" not in argv                   # nothing shared
        env = {v["name"]: v for v in container["env"]}
        assert env["JOBSET_RESTART_ATTEMPT"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/restart-attempt']"}}
        # rank 0 bounds the restarts in place (JobSet those that recreate the pods)
        assert env[contract.GROUP_RESTARTS_ENV]["value"] == "3"
        launch = argv[argv.index("--") + 1:]
        assert arg(launch, "--nnodes") == "3"
        if name == "leader":
            assert arg(argv, "--node-rank") == "0" and "--rank-offset" not in argv
            # the leader keeps every node's outcomes on its claim for the next start's decision
            assert arg(argv, "--outcomes-dir") == "/output/pt/outcomes"
        else:
            assert arg(argv, "--node-rank") == "$(JOB_COMPLETION_INDEX)" and arg(argv, "--rank-offset") == "1"
            assert "--outcomes-dir" not in argv
    assert js["spec"]["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}


def test_every_field_the_webhook_would_default_is_written(render):
    """Where the JobSet controller runs without its webhooks, a missing successPolicy crashes it."""
    spec = jobset(render)["spec"]
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": []}
    assert spec["startupPolicy"] == {"startupPolicyOrder": "AnyOrder"}
    assert spec["failurePolicy"]["restartStrategy"] == "BlockingRecreate"


# How the Job controller words a pod failure a FailJob rule matched (k8s.io/kubernetes
# pkg/controller/job), which JobSet's rules match with RE2; Python's `re` agrees for these.
def job_failure(code: int | None, rule: int, disrupted: bool = False) -> tuple[str, str]:
    if disrupted:
        return "PodFailurePolicy", (f"Pod x/pt-worker-0-0-abc has condition DisruptionTarget "
                                    f"matching FailJob rule at index {rule}")
    return "PodFailurePolicy", (f"Container trainer for pod x/pt-worker-0-0-abc failed with exit code {code} "
                                f"matching FailJob rule at index {rule}")


def jobset_action(reason: str, message: str) -> str:
    import re

    for rule in jobset_failure_rules():
        if (not rule["reasons"] or reason in rule["reasons"]) and \
                (not rule["patterns"] or any(re.search(p, message) for p in rule["patterns"])):
            return rule["action"]
    return "RestartJobSet"          # JobSet's default


@pytest.mark.parametrize("code", [0, 1, 2, 3, 69, 75, 137, 143])
def test_the_failure_policy_does_what_the_contract_decides(render, code):
    """An exit code's way through the child Job's podFailurePolicy (FailJob rule N, or its
    backoffLimit 0) and the JobSet's rules ends where contract.decide says: fail at once, restart
    without counting, or restart counted against maxRestarts (= group_restarts)."""
    js = jobset(render, group_restarts=5)
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 5
    rules = replicated(js)["worker"]["template"]["spec"]["podFailurePolicy"]["rules"]
    matched = next((i for i, r in enumerate(rules) if code in (r.get("onExitCodes") or {}).get("values", [])),
                   None)
    reason, message = job_failure(code, matched) if matched is not None else (
        "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    decided = contract.decide([contract.Outcome(contract.end_of_exit(code), 0, code)],
                              restarts=0, bound=5, ranks=1)
    if decided.action == contract.FINISH:
        assert matched is None
        return
    expected = {(contract.FAIL, False): "FailJobSet",
                (contract.RESTART, False): "RestartJobSetAndIgnoreMaxRestarts",
                (contract.RESTART, True): "RestartJobSet"}[decided.action, decided.counted]
    assert jobset_action(reason, message) == expected


def test_a_disruption_restarts_without_counting(render):
    rules = replicated(jobset(render))["leader"]["template"]["spec"]["podFailurePolicy"]["rules"]
    disrupted = next(i for i, r in enumerate(rules) if r.get("onPodConditions"))
    assert rules[disrupted]["action"] == "FailJob"
    assert jobset_action(*job_failure(None, disrupted, disrupted=True)) == "RestartJobSetAndIgnoreMaxRestarts"


def test_a_name_too_long_for_the_workers_hostnames_is_refused(render):
    with pytest.raises(UsageError, match="too long for a JobSet on 16 nodes"):
        render(make_spec("x" * 52, nodes=16, gpus=8, workload="jobset"))
    render(make_spec("x" * 50, nodes=16, gpus=8, workload="jobset"))        # x...x-worker-0-14: 63


def test_auto_is_decided_at_submit_never_by_render(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "SIMSIAM_JOB_CONFIG": "/dev/null"}
    out = run_cli(["render", "pretrain", "-b", "kubernetes", "--nodes", "2", "--gpus", "8", "--image", "x",
                   "--output", "results", "--set", "workload=auto"], env)
    assert_one_line_error(out, 2, "workload=auto is decided by asking the cluster")
    out = run_cli(["render", "pretrain", "-b", "kubernetes", "--set", "workload=jobs"], env)
    assert_one_line_error(out, 2, "is not one of job, jobset, auto")
