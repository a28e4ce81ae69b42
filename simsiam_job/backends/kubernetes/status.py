"""A Job or JobSet and its pods, read as a person needs them (pure functions: tested without a
cluster). A JobSet arrives as the plain dict the custom-objects API returns; Jobs and pods as the
client's models."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from simsiam_job.backends.base import JobRef, JobStatus, NodeStatus, State
from simsiam_job.backends.kubernetes.render import (
    ATTEMPT_ANNOTATION,
    LEADER,
    OUTPUT_MOUNT,
    RESTART_ATTEMPT_LABEL,
    WORKER,
)
from simsiam_job.backends.kubernetes.scheduling import QUEUE_LABEL
from trainer import contract

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"


JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"


@dataclasses.dataclass
class Workload:
    """A job as the cluster has it: an Indexed Job (the client's model) or a JobSet (a dict)."""

    kind: str                       # "Job" | "JobSet"
    name: str
    namespace: str
    obj: Any

    @property
    def jobset(self) -> bool:
        return self.kind == "JobSet"

    @property
    def uid(self) -> str:
        return self.obj["metadata"]["uid"] if self.jobset else self.obj.metadata.uid

    @property
    def labels(self) -> dict:
        return (self.obj["metadata"].get("labels") if self.jobset else self.obj.metadata.labels) or {}

    @property
    def pod_selector(self) -> str:
        return f"{JOBSET_NAME_LABEL if self.jobset else JOB_NAME_LABEL}={self.name}"

    @property
    def nodes(self) -> int:
        return jobset_nodes(self.obj) if self.jobset else self.obj.spec.completions or 1

    def state(self, pods) -> State:
        return jobset_state(self.obj, pods) if self.jobset else job_state(self.obj, pods)


def pod_index(pod) -> int | None:
    """The pod's node rank: an Indexed Job's completion index; in a JobSet 0 for the leader, 1 + the
    index for a worker."""
    value = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
    if value is None or not value.isdigit():
        return None
    role = (pod.metadata.labels or {}).get(REPLICATED_JOB_LABEL)
    return int(value) + (1 if role == WORKER else 0)


def newest_pods(pods) -> dict[int, Any]:
    """rank -> its newest pod (the Job controller replaces a failed pod with a new one; a JobSet
    recreates them all)."""
    newest: dict[int, Any] = {}
    for pod in pods:
        index = pod_index(pod)
        if index is None:
            continue
        if index not in newest or pod.metadata.creation_timestamp > newest[index].metadata.creation_timestamp:
            newest[index] = pod
    return newest


@dataclasses.dataclass(frozen=True)
class Queued:
    """What Kueue says of a job (its Workload), for status."""

    queue: str
    reason: str | None = None       # why it waits, in Kueue's words
    evictions: int = 0              # preempted or evicted by Kueue, so far
    position: int | None = None     # in its LocalQueue, where Kueue's visibility API answers


def kueue_reason(workload: dict | None, queue: str) -> str:
    """Why a job waits, from its Workload's conditions (Kueue's own reason and message)."""
    if workload is None:
        return (f"waiting for Kueue to admit it from LocalQueue {queue} (no Workload yet: is Kueue running "
                "and does the queue exist?)")
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}

    def said(kind: str) -> str | None:
        c = conditions.get(kind)
        if c is None or c.get("status") != "True":
            return None
        return f"{c.get('reason')}: {c.get('message')}" if c.get("message") else c.get("reason")

    reserved = conditions.get("QuotaReserved") or {}
    pending = f"{reserved.get('reason') or 'Pending'}: {reserved.get('message')}" \
        if reserved.get("status") == "False" and reserved.get("message") else None
    return said("Preempted") or said("Evicted") or pending or said("QuotaReserved") or \
        f"waiting in LocalQueue {queue}"


def kueue_evictions(workload: dict | None) -> int:
    stats = ((workload or {}).get("status") or {}).get("schedulingStats") or {}
    return sum(int(e.get("count") or 0) for e in stats.get("evictions") or [])


def _condition(obj, kind: str):
    return next((c for c in (obj.status.conditions or []) if c.type == kind and c.status == "True"), None)


def job_state(job, pods) -> State:
    """The job's state from its conditions; while it runs, RUNNING only when every unfinished index
    has a running pod (a distributed job makes no progress until all nodes are up). A suspended
    job in a Kueue queue is QUEUED."""
    if job.metadata.deletion_timestamp is not None:
        return State.CANCELLED
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return State.SUCCEEDED
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return State.FAILED
    if job.spec.suspend:
        return State.QUEUED if (job.metadata.labels or {}).get(QUEUE_LABEL) else State.PENDING
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


def node_states(nodes: int, pods) -> list[NodeStatus]:
    """One line per rank, from its newest pod (replacements counted as restarts)."""
    newest = newest_pods(pods)
    per_index: dict[int, int] = {}
    for pod in pods:
        index = pod_index(pod)
        if index is not None:
            per_index[index] = per_index.get(index, 0) + 1
    states = []
    for index in range(nodes):
        pod = newest.get(index)
        if pod is None:
            states.append(NodeStatus(rank=index, state=State.PENDING, reason="no pod yet"))
            continue
        reason, exit_code = _node_reason(pod)
        restarts = per_index[index] - 1 + sum(c.restart_count or 0
                                               for c in pod.status.container_statuses or [])
        states.append(NodeStatus(
            rank=index, state=_PHASES.get(pod.status.phase, State.UNKNOWN), host=pod.spec.node_name,
            restarts=restarts, reason=reason, exit_code=exit_code))
    return states


def _failed_rank(states: list[NodeStatus], pods) -> str:
    """"; rank N: <how it ended>" for the rank that ended the job, else "": the root cause among
    the ranks' outcomes (their termination messages, else their exit codes), as contract.decide
    blames them: a bad input before the others' SIGTERM that echoes it."""
    newest = newest_pods(pods)
    ended = {}
    for node in states:
        if node.exit_code in (None, 0):
            continue
        message = next((c.state.terminated.message for c in newest[node.rank].status.container_statuses or []
                        if c.state.terminated is not None), None)
        outcome = contract.Outcome.from_json(message) if message else None
        ended[node.rank] = outcome or contract.Outcome(contract.end_of_exit(node.exit_code), node.rank,
                                                       node.exit_code)
    cause = contract.root_cause([dataclasses.replace(o, rank=rank) for rank, o in ended.items()])
    return f"; rank {cause.rank}: {states[cause.rank].reason}" if cause is not None else ""


def _waiting_reason(states: list[NodeStatus]) -> str | None:
    waiting = next((n for n in states if n.state is State.PENDING and n.reason), None)
    return f"rank {waiting.rank}: {waiting.reason}" if waiting is not None else None


def waited_for_scheduling(newest: dict[int, Any], nodes: int) -> bool:
    """Whether a failed job's scheduling history may explain it: a rank has no pod or an unplaced
    one, or the start timeout ended it (which frees rank 0's node, where a pending rank may then be
    placed before the Job controller deletes it)."""
    return len(newest) < nodes or any(p.spec.node_name is None for p in newest.values()) \
        or any(c.state.terminated is not None and c.state.terminated.exit_code == contract.EXIT_START_TIMEOUT
               for p in newest.values() for c in p.status.container_statuses or [])


def never_scheduled(states: list[NodeStatus], events, pod_names: dict[int, str]) -> str:
    """"; rank N was never scheduled: <the scheduler's reason>" for ranks whose pods never ran (a
    failed job's pending pods are deleted with it, so the reason comes from their events)."""
    said = []
    for node in states:
        pattern = re.compile(rf"^{re.escape(pod_names[node.rank])}-[a-z0-9]+$")
        why = [e for e in events or [] if pattern.match(e.involved_object.name or "")]
        if why:
            last = max(why, key=lambda e: str(e.last_timestamp or e.event_time or ""))
            when = "only after the job had failed" if node.host else "never"
            said.append(f"rank {node.rank} was {when} scheduled: "
                        f"{last.reason}: {' '.join((last.message or '').split())}")
    return "".join(f"; {s}" for s in said)


def group_history(restarts: int, counted: int, bound: int | None, preempted: int) -> str | None:
    """"group restarted 2 times (1 counted, at most 3); preempted 1 time", or None for neither."""
    words = []
    if restarts:
        limit = f", at most {bound}" if bound is not None else ""
        words.append(f"group restarted {restarts} time{'s' * (restarts != 1)} ({counted} counted{limit})")
    if preempted:
        words.append(f"preempted {preempted} time{'s' * (preempted != 1)}")
    return "; ".join(words) or None


def _join(*parts: str | None) -> str | None:
    return "; ".join(p for p in parts if p) or None


def _queued_text(queued: Queued | None) -> str | None:
    if queued is None:
        return None
    where = (f", position {queued.position + 1} in LocalQueue {queued.queue}"
             if queued.position is not None else "")
    return f"{queued.reason}{where}" if queued.reason else None


def _index0_history(pods) -> tuple[int, int]:
    """(group restarts, preemptions among them) of an Indexed Job: each restart of the group
    replaces rank 0's pod; how the old one ended says whether it was a preemption."""
    ended = [p for p in pods if pod_index(p) == 0]
    ended.sort(key=lambda p: p.metadata.creation_timestamp)
    preempted = 0
    for pod in ended[:-1]:
        _, code = _node_reason(pod)
        if _condition(pod, "DisruptionTarget") or (code is not None and
                                                   contract.end_of_exit(code) is contract.End.PREEMPTED):
            preempted += 1
    return max(len(ended) - 1, 0), preempted


def _indexed_history(pods, progress: dict | None, queued: Queued | None) -> tuple[int, int, int]:
    """(group restarts, counted, preemptions) of an Indexed Job. Rank 0's trainer counts every
    start, also the restarts in place that replaced no pod, in its progress records; the uncounted
    ones were preemptions. Without them (not started yet): rank 0's pods and Kueue's evictions."""
    restarts, preempted = _index0_history(pods)
    preempted += queued.evictions if queued else 0
    counted = restarts - min(preempted, restarts)
    if progress and isinstance(progress.get("group_restarts"), int) \
            and isinstance(progress.get("counted_restarts"), int):
        restarts = max(restarts, progress["group_restarts"])
        counted = progress["counted_restarts"]
        preempted = max(preempted, restarts - counted)
    return restarts, counted, preempted


def job_status(ref: JobRef, job, pods, *, progress: dict | None = None, queued: Queued | None = None,
               events=None) -> JobStatus:
    nodes = job.spec.completions or 1
    newest = newest_pods(pods)
    states = node_states(nodes, pods)
    state = job_state(job, pods)
    restarts, counted, preempted = _indexed_history(pods, progress, queued)
    history = group_history(restarts, counted, None, preempted)
    reason = None
    if state is State.FAILED:
        cond = _condition(job, "Failed") or _condition(job, "FailureTarget")
        if cond is not None:
            reason = (f"{cond.reason}: {cond.message}" if cond.message else cond.reason) \
                + _failed_rank(states, pods) \
                + never_scheduled(states, events, {i: f"{job.metadata.name}-{i}" for i in range(nodes)})
        reason = _join(reason, history)
    elif state is State.QUEUED:
        reason = _join(_queued_text(queued), history)
    else:           # a success still says how often it was restarted or preempted on the way
        reason = _join(None if state is State.SUCCEEDED else _waiting_reason(states), history)
    detail = {"namespace": job.metadata.namespace, "active": job.status.active or 0,
              "succeeded": job.status.succeeded or 0, "failed": job.status.failed or 0,
              "group_restarts": restarts, "preempted": preempted,
              "pods": {n.rank: newest[n.rank].metadata.name for n in states if n.rank in newest}}
    if queued is not None:
        detail["queue"] = dataclasses.asdict(queued)
    return JobStatus(ref=ref, state=state, reason=reason, nodes=tuple(states), detail=detail,
                     progress=progress, output=output_location(job), attempt=attempt_of(job))


# ---- JobSets (plain dicts from the custom-objects API) ---------------------------------------------

def jobset_nodes(js: dict) -> int:
    return sum(int(r.get("replicas") or 1) * int(r["template"]["spec"].get("completions") or 1)
               for r in js["spec"]["replicatedJobs"])


def _js_condition(js: dict, kind: str) -> dict | None:
    return next((c for c in (js.get("status") or {}).get("conditions") or []
                 if c.get("type") == kind and c.get("status") == "True"), None)


def current_pods(js: dict, pods) -> list:
    """The pods of the JobSet's current start (its restart attempt), not those of earlier starts
    still terminating."""
    attempt = str((js.get("status") or {}).get("restarts") or 0)
    return [p for p in pods if (p.metadata.labels or {}).get(RESTART_ATTEMPT_LABEL, attempt) == attempt]


def jobset_state(js: dict, pods) -> State:
    meta, status = js["metadata"], js.get("status") or {}
    if meta.get("deletionTimestamp"):
        return State.CANCELLED
    if _js_condition(js, "Completed"):
        return State.SUCCEEDED
    if _js_condition(js, "Failed"):
        return State.FAILED
    if js["spec"].get("suspend"):
        return State.QUEUED if (meta.get("labels") or {}).get(QUEUE_LABEL) else State.PENDING
    if pods is None:        # from the JobSet alone (list): every replicated job ready
        ready = sum(int(r.get("ready") or 0) + int(r.get("succeeded") or 0)
                    for r in status.get("replicatedJobsStatus") or [])
        return State.RUNNING if ready >= len(js["spec"]["replicatedJobs"]) else State.PENDING
    newest = newest_pods(current_pods(js, pods))
    running = sum(1 for p in newest.values() if p.status.phase == "Running")
    succeeded = sum(1 for p in newest.values() if p.status.phase == "Succeeded")
    return State.RUNNING if running and running + succeeded >= jobset_nodes(js) else State.PENDING


def jobset_status(ref: JobRef, js: dict, pods, *, progress: dict | None = None, queued: Queued | None = None,
                  events=None) -> JobStatus:
    nodes, name = jobset_nodes(js), js["metadata"]["name"]
    status = js.get("status") or {}
    pods = current_pods(js, pods) if _js_condition(js, "Failed") is None else pods
    newest = newest_pods(pods)
    states = node_states(nodes, pods)
    state = jobset_state(js, pods)
    restarts, counted = int(status.get("restarts") or 0), int(status.get("restartsCountTowardsMax") or 0)
    if progress and isinstance(progress.get("group_restarts"), int) \
            and isinstance(progress.get("counted_restarts"), int):
        # rank 0 counts every start; as counted only those in place (JobSet counts its own)
        restarts, counted = max(restarts, progress["group_restarts"]), counted + progress["counted_restarts"]
    preempted = restarts - counted + (queued.evictions if queued else 0)
    history = group_history(restarts, counted, (js["spec"].get("failurePolicy") or {}).get("maxRestarts"),
                            preempted)
    reason = None
    if state is State.FAILED:
        cond = _js_condition(js, "Failed")
        names = {0: f"{name}-{LEADER}-0-0", **{i: f"{name}-{WORKER}-0-{i - 1}" for i in range(1, nodes)}}
        reason = _join(f"{cond.get('reason')}: {cond.get('message')}" + _failed_rank(states, pods)
                       + never_scheduled(states, events, names), history)
    elif state is State.QUEUED:
        reason = _join(_queued_text(queued), history)
    else:           # a success still says how often it was restarted or preempted on the way
        reason = _join(None if state is State.SUCCEEDED else _waiting_reason(states), history)
    detail = {"namespace": js["metadata"].get("namespace"), "kind": "JobSet", "group_restarts": restarts,
              "counted_restarts": counted, "preempted": preempted,
              "pods": {n.rank: newest[n.rank].metadata.name for n in states if n.rank in newest}}
    if queued is not None:
        detail["queue"] = dataclasses.asdict(queued)
    return JobStatus(ref=ref, state=state, reason=reason, nodes=tuple(states), detail=detail,
                     progress=progress, output=jobset_output_location(js),
                     attempt=attempt_of_meta(js["metadata"]))


def attempt_of(job) -> int:
    """The job's attempt, from the annotation resume sets (1 without one)."""
    return attempt_of_meta({"annotations": job.metadata.annotations})


def attempt_of_meta(meta: dict) -> int:
    value = (meta.get("annotations") or {}).get(ATTEMPT_ANNOTATION, "1")
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


def jobset_output_location(js: dict) -> str | None:
    """The same for a JobSet: the claim its leader (rank 0) mounts."""
    leader = next(r for r in js["spec"]["replicatedJobs"] if r["name"] == LEADER)
    pod = leader["template"]["spec"]["template"]["spec"]
    volume = next((v for v in pod.get("volumes") or [] if v.get("name") == "output"), None)
    if volume is None or not volume.get("persistentVolumeClaim"):
        return None
    mount = next((m for c in pod["containers"] for m in c.get("volumeMounts") or []
                  if m.get("name") == "output"), {})
    sub_path = f"/{mount['subPath']}" if mount.get("subPath") else ""
    name = js["metadata"]["name"]
    return (f"pvc:{volume['persistentVolumeClaim']['claimName']}{sub_path}/{name} "
            f"(in rank 0's pod: {OUTPUT_MOUNT}/{name})")


def progress_of(log_text: str) -> dict | None:
    """The newest progress record in (the tail of) rank 0's log: the trainer prints each step
    record as a line there (trainer.contract.progress_line)."""
    return contract.last_progress(log_text.splitlines())
