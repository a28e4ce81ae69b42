"""A Job and its pods, read as a person needs them (pure functions: tested without a cluster)."""

from __future__ import annotations

from typing import Any

from simsiam_job.backends.base import JobRef, JobStatus, NodeStatus, State
from simsiam_job.backends.kubernetes.render import ATTEMPT_ANNOTATION, OUTPUT_MOUNT
from trainer import contract

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def pod_index(pod) -> int | None:
    value = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
    return int(value) if value is not None and value.isdigit() else None


def newest_pods(pods) -> dict[int, Any]:
    """index -> its newest pod (the Job controller replaces a failed pod with a new one)."""
    newest: dict[int, Any] = {}
    for pod in pods:
        index = pod_index(pod)
        if index is None:
            continue
        if index not in newest or pod.metadata.creation_timestamp > newest[index].metadata.creation_timestamp:
            newest[index] = pod
    return newest


def _condition(obj, kind: str):
    return next((c for c in (obj.status.conditions or []) if c.type == kind and c.status == "True"), None)


def job_state(job, pods) -> State:
    """The job's state from its conditions; while it runs, RUNNING only when every unfinished index
    has a running pod (a distributed job makes no progress until all nodes are up)."""
    if job.metadata.deletion_timestamp is not None:
        return State.CANCELLED
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return State.SUCCEEDED
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return State.FAILED
    if job.spec.suspend:
        return State.PENDING
    nodes = job.spec.completions or 1
    succeeded = job.status.succeeded or 0
    if pods is None:  # from the Job object alone (list)
        running = job.status.ready or 0
    else:
        running = sum(1 for p in newest_pods(pods).values() if p.status.phase == "Running")
    return State.RUNNING if running and running + succeeded >= nodes else State.PENDING


def _node_reason(pod) -> tuple[str | None, int | None]:
    """What a person should know about one pod: why it waits or how it ended."""
    status = pod.status
    for c in status.container_statuses or []:
        if c.state.terminated is not None:
            t = c.state.terminated
            return (None if t.exit_code == 0 else f"{t.reason or 'Error'}: exit code {t.exit_code}"
                    + (f" ({termination_text(t.message)})" if t.message else "")), t.exit_code
        if c.state.waiting is not None and c.state.waiting.reason not in (None, "ContainerCreating"):
            w = c.state.waiting
            return f"{w.reason}: {w.message}" if w.message else w.reason, None
    disrupted = _condition(pod, "DisruptionTarget")
    if disrupted is not None:
        return f"{disrupted.reason}: {disrupted.message}" if disrupted.message else disrupted.reason, None
    if status.reason:
        return f"{status.reason}: {status.message}" if status.message else status.reason, None
    for c in status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False":
            return f"{c.reason}: {c.message}" if c.message else c.reason, None
    return None, None


def termination_text(message: str) -> str:
    """A pod's termination message as a person reads it: the node's outcome (trainer.contract), as
    its supervisor writes it, in words; any other text as it is."""
    outcome = contract.Outcome.from_json(message)
    if outcome is None:
        return message.strip()
    text = outcome.cause()
    return f"{text}: {outcome.message}" if outcome.message and outcome.message not in text else text


_PHASES = {"Pending": State.PENDING, "Running": State.RUNNING, "Succeeded": State.SUCCEEDED,
           "Failed": State.FAILED}


def job_status(ref: JobRef, job, pods, *, progress: dict | None = None) -> JobStatus:
    nodes = job.spec.completions or 1
    newest = newest_pods(pods)
    per_index: dict[int, int] = {}
    for pod in pods:
        index = pod_index(pod)
        if index is not None:
            per_index[index] = per_index.get(index, 0) + 1
    node_states = []
    for index in range(nodes):
        pod = newest.get(index)
        if pod is None:
            node_states.append(NodeStatus(rank=index, state=State.PENDING, reason="no pod yet"))
            continue
        reason, exit_code = _node_reason(pod)
        restarts = per_index[index] - 1 + sum(c.restart_count or 0 for c in pod.status.container_statuses or [])
        node_states.append(NodeStatus(
            rank=index, state=_PHASES.get(pod.status.phase, State.UNKNOWN), host=pod.spec.node_name,
            restarts=restarts, reason=reason, exit_code=exit_code))
    state = job_state(job, pods)
    reason = None
    if state in (State.FAILED, State.SUCCEEDED):
        cond = _condition(job, "Failed") or _condition(job, "FailureTarget") or _condition(job, "Complete")
        if cond is not None and state is State.FAILED:
            reason = f"{cond.reason}: {cond.message}" if cond.message else cond.reason
            # and the rank that ended it, with the trainer's own line (its termination message)
            ended = next((n for n in node_states if n.exit_code not in (None, 0)), None)
            if ended is not None:
                reason += f"; rank {ended.rank}: {ended.reason}"
    else:
        waiting = next((n for n in node_states if n.state is State.PENDING and n.reason), None)
        if waiting is not None:
            reason = f"rank {waiting.rank}: {waiting.reason}"
    detail = {"namespace": job.metadata.namespace, "active": job.status.active or 0,
              "succeeded": job.status.succeeded or 0, "failed": job.status.failed or 0,
              "pods": {n.rank: newest[n.rank].metadata.name for n in node_states if n.rank in newest}}
    return JobStatus(ref=ref, state=state, reason=reason, nodes=tuple(node_states), detail=detail,
                     progress=progress, output=output_location(job), attempt=attempt_of(job))


def attempt_of(job) -> int:
    """The job's attempt, from the annotation resume sets (1 without one)."""
    value = (job.metadata.annotations or {}).get(ATTEMPT_ANNOTATION, "1")
    return int(value) if value.isdigit() else 1


def output_location(job) -> str | None:
    """Where the job's output directory is, read from the Job itself: the claim (and sub-path)
    mounted at /output, and the job's folder in it; None without a claim (an emptyDir)."""
    pod = job.spec.template.spec
    volume = next((v for v in pod.volumes or [] if v.name == "output"), None)
    if volume is None or volume.persistent_volume_claim is None:
        return None
    mount = next((m for c in pod.containers for m in c.volume_mounts or [] if m.name == "output"), None)
    sub_path = f"/{mount.sub_path}" if mount is not None and mount.sub_path else ""
    return (f"pvc:{volume.persistent_volume_claim.claim_name}{sub_path}/{job.metadata.name} "
            f"(in the pods: {OUTPUT_MOUNT}/{job.metadata.name})")


def progress_of(log_text: str) -> dict | None:
    """The newest progress record in (the tail of) rank 0's log: the trainer prints each step
    record as a line there (trainer.contract.progress_line)."""
    return contract.last_progress(log_text.splitlines())
