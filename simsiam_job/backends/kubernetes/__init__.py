"""Kubernetes backend: a ConfigMap (the trainer config), a headless Service (rendezvous) and an
Indexed Job with one pod per node; or (workload=jobset) the ConfigMap and a JobSet of a leader and
workers. Optionally queued in Kueue.

By concern: ``render`` (the manifests; pure), ``scheduling`` (the site knobs), ``client``
(kubeconfig, namespace, bounded API calls, errors as one line), ``status`` (reading Job and pod
objects), ``logs`` (pod logs, following).
The kubernetes client is imported inside methods only: ``simsiam-job --help``, ``render`` and the
other backends never pay for it. Every read is a single GET or a label-selector LIST, so the number
of API calls per command does not grow with the number of nodes.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from simsiam_job import validate
from simsiam_job.backends.base import Backend, JobRef, JobStatus, JobSummary, Rendered, State, poll
from simsiam_job.backends.kubernetes import render as _render
from simsiam_job.backends.kubernetes import scheduling
from simsiam_job.backends.kubernetes.client import Api, namespace
from simsiam_job.backends.kubernetes.logs import PodLogs
from simsiam_job.backends.kubernetes.options import Options
from simsiam_job.backends.kubernetes.render import OUTPUT_MOUNT
from simsiam_job.backends.kubernetes.status import (
    JOBSET_NAME_LABEL,
    Queued,
    Workload,
    attempt_of,
    attempt_of_meta,
    job_status,
    jobset_status,
    kueue_evictions,
    kueue_reason,
    newest_pods,
    progress_of,
    waited_for_scheduling,
)
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=simsiam-job"
PROGRESS_TAIL_LINES = 200  # of rank 0's log, read by status for the newest progress line
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")   # a key of a Secret


JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")          # Kueue's Workload API, newest first
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # on a Workload: the uid of the job it admits


class KubernetesBackend(Backend[Options]):
    name: ClassVar[str] = "kubernetes"
    options_class: ClassVar[type] = Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        # The kubelet sends KILL itself after the pods' grace period; cancel waits that long.
        self.grace_seconds = self.options.termination_grace + 30
        self._api: Api | None = None

    stopped_after_term: ClassVar[str] = (
        "the job and its pods are gone (its service and config map are removed with it)")

    @classmethod
    def default_data(cls, options: Any) -> str | None:
        return options.data_pvc or None

    @classmethod
    def secret_reference(cls, name: str, ref: str) -> str:
        """SECRET/KEY: a Secret in the job's namespace and one of its keys (never read here)."""
        secret, sep, key = ref.partition("/")
        if not sep or not validate.DNS1123_SUBDOMAIN.match(secret) or len(secret) > 253 \
                or not _SECRET_KEY.match(key):
            raise UsageError(f"--env-secret {name}={ref}: on Kubernetes write SECRET/KEY, a Secret in the "
                             "job's namespace and one of its keys (e.g. wandb/api-key)")
        return ref

    def namespace(self) -> str:
        return namespace(self.options)

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.options)
        return self._api

    # ---- render / submit -------------------------------------------------------------------------

    def render(self, spec: JobSpec) -> Rendered:
        return _render.render(spec, self.options, self.namespace())

    def submit(self, spec: JobSpec, dry_run: str | None = None) -> JobRef:
        if self.options.workload == "auto":
            # The one choice render cannot make: does this cluster run the JobSet controller?
            workload = "jobset" if self.api.serves(JOBSET_GROUP) else "job"
            self.options = dataclasses.replace(self.options, workload=workload)
            spec = dataclasses.replace(spec, options=self.options)
        return super().submit(spec, dry_run)

    def send(self, spec: JobSpec, rendered: Rendered, dry_run: str | None) -> JobRef:
        ref = JobRef(self.name, f"{self.namespace()}/{spec.name}")
        if dry_run == "client":
            return ref
        if self.options.rdma:
            self._check_pod_security(spec.name, self.api.namespace, rendered.payload)
        return self._create(spec.name, self.api.namespace, rendered.payload, dry_run)

    def _check_pod_security(self, name: str, ns: str, manifests: list[dict]) -> None:
        """The rdma profile adds a capability, which a namespace's Pod Security level may forbid.
        Admission judges a Job's or JobSet's pods only when they are created, long after submit, so
        one pod of the job is sent as a server-side dry run first: refused, nothing is created."""
        workload = manifests[-1]
        template = workload["spec"]["template"] if workload["kind"] == "Job" else \
            workload["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-admission", "namespace": ns,
                                                             **template.get("metadata", {})},
               "spec": template["spec"]}
        api = self.api
        try:
            api.call(f"checking the pods of job {name} against the namespace's Pod Security level",
                     api.core.create_namespaced_pod, ns, pod, dry_run="All")
        except BackendError as err:
            if "PodSecurity" not in str(err):
                raise
            message = str(err).split(": ", 1)[-1].split(" (ask an admin")[0]
            raise UsageError(f"the rdma profile needs the {scheduling.RDMA_CAPABILITY} capability, "
                             f"which namespace {ns} does not allow: {message}") from None

    def _create(self, name: str, ns: str, manifests: list[dict], dry_run: str | None = None) -> JobRef:
        """The Job (or JobSet) first, then the ConfigMap and Service it owns (rolled back if one
        fails)."""
        api = self.api
        ref = JobRef(self.name, f"{ns}/{name}")
        server_dry = "All" if dry_run == "server" else None
        by_kind = {doc["kind"]: doc for doc in manifests}
        if "JobSet" in by_kind:
            created = api.call(f"creating jobset {name}", api.custom.create_namespaced_custom_object,
                               JOBSET_GROUP, JOBSET_VERSION, ns, "jobsets", by_kind["JobSet"],
                               dry_run=server_dry)
            uid = (created.get("metadata") or {}).get("uid")
            owner = {"apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}", "kind": "JobSet"}
        else:
            created = api.call(f"creating job {name}", api.batch.create_namespaced_job, ns, by_kind["Job"],
                               dry_run=server_dry)
            uid = created.metadata.uid
            owner = {"apiVersion": "batch/v1", "kind": "Job"}
        # The Job (JobSet) owns the ConfigMap and Service, so deleting it (cancel, or kubectl)
        # removes them. Its uid exists only now, hence it first; its pods wait for the ConfigMap.
        # (No blockOwnerDeletion: where admission enforces it, it needs rights on finalizers.)
        owner.update(name=name, uid=uid, controller=True)
        try:
            for kind, create in (("ConfigMap", api.core.create_namespaced_config_map),
                                 ("Service", api.core.create_namespaced_service)):
                if kind not in by_kind:
                    continue                # a JobSet makes its own headless Service
                body = dict(by_kind[kind])
                if uid:  # a server-side dry run may return the object without one
                    body["metadata"] = {**body["metadata"], "ownerReferences": [owner]}
                api.call(f"creating {kind.lower()} {name}", create, ns, body, dry_run=server_dry)
        except (BackendError, UsageError):
            if server_dry is None:
                self._delete(Workload(owner["kind"], name, ns, None), "Background")
            raise
        return ref

    # ---- resume: the next attempt under the same name, from the objects of the last one -----------

    def _resume(self, ref: JobRef, status: JobStatus) -> JobRef:
        ns, name = self._split(ref)
        api = self.api
        workload = self._find(ns, name)
        missing = f"no job {name!r} in namespace {ns!r}"
        config_map = api.core.api_client.sanitize_for_serialization(api.call(
            f"reading config map {name}", api.core.read_namespaced_config_map, name, ns,
            missing=f"{missing}: its config map is gone"))
        if workload.jobset:
            manifests = _render.next_jobset_attempt(workload.obj, config_map)
        else:
            serialize = api.batch.api_client.sanitize_for_serialization
            service = serialize(api.call(f"reading service {name}", api.core.read_namespaced_service,
                                         name, ns, missing=f"{missing}: its service is gone"))
            manifests = _render.next_attempt(serialize(workload.obj), config_map, service)
        # The finished job goes with its pods, config map and service (owned by it); its output
        # volume stays. The name is free again once they are all gone.
        self._delete(workload, "Foreground")
        if not poll(lambda: self._left(ref) is None and api.gone(
                        f"reading config map {name}", api.core.read_namespaced_config_map, name, ns),
                    timeout=120, interval=1):
            raise BackendError(f"{ref}: the previous attempt's objects are still being deleted after 120 s; "
                               "run resume again in a moment")
        return self._create(name, ns, manifests)

    def _delete(self, workload: Workload, propagation: str) -> None:
        """Delete the Job or JobSet (what it owns goes with it); gone already is fine."""
        api = self.api
        kind = workload.kind.lower()
        try:
            if workload.jobset:
                api.call(f"deleting {kind} {workload.name}", api.custom.delete_namespaced_custom_object,
                         JOBSET_GROUP, JOBSET_VERSION, workload.namespace, "jobsets", workload.name,
                         propagation_policy=propagation, missing="")
            else:
                api.call(f"deleting {kind} {workload.name}", api.batch.delete_namespaced_job, workload.name,
                         workload.namespace, propagation_policy=propagation, missing="")
        except NotFoundError:
            pass

    # ---- finding a job: an Indexed Job, else a JobSet ----------------------------------------------

    def _split(self, ref: JobRef) -> tuple[str, str]:
        ns, sep, name = ref.id.partition("/")
        if ref.backend != self.name or not sep or not ns or not name:
            raise UsageError(f"not a Kubernetes job reference: {ref} (expected kubernetes://NAMESPACE/NAME)")
        return ns, name

    def _find(self, ns: str, name: str) -> Workload:
        """The Job of that name, else the JobSet (one GET each; no JobSet call on a Job)."""
        api = self.api
        try:
            job = api.call(f"reading job {name}", api.batch.read_namespaced_job, name, ns, missing="")
            if JOBSET_NAME_LABEL not in (job.metadata.labels or {}):      # not a JobSet's child Job
                return Workload("Job", name, ns, job)
        except NotFoundError:
            pass
        try:
            js = api.call(f"reading jobset {name}", api.custom.get_namespaced_custom_object, JOBSET_GROUP,
                          JOBSET_VERSION, ns, "jobsets", name, missing="")
        except NotFoundError:
            raise NotFoundError(f"no job {name!r} in namespace {ns!r} "
                                "(simsiam-job list shows the jobs there)") from None
        return Workload("JobSet", name, ns, js)

    def _pods(self, workload: Workload) -> list:
        api = self.api
        return api.call(f"listing pods of {workload.kind.lower()} {workload.name}",
                        api.core.list_namespaced_pod, workload.namespace,
                        label_selector=workload.pod_selector).items

    def _workload_and_pods(self, ns: str, name: str) -> tuple[Workload, list]:
        """Two API calls (three for a JobSet), whatever the number of nodes."""
        workload = self._find(ns, name)
        return workload, self._pods(workload)

    # ---- status, logs ----------------------------------------------------------------------------

    def status(self, ref: JobRef) -> JobStatus:
        ns, name = self._split(ref)
        workload, pods = self._workload_and_pods(ns, name)
        state = workload.state(pods)
        queued = self._queued(workload) if workload.labels.get(scheduling.QUEUE_LABEL) else None
        newest = newest_pods(pods)
        events = self._scheduling_events(ns) if state is State.FAILED and waited_for_scheduling(
            newest, workload.nodes) else None
        progress = self._progress(ns, newest.get(0))
        read = jobset_status if workload.jobset else job_status
        return read(ref, workload.obj, pods, progress=progress, queued=queued, events=events)

    def _queued(self, workload: Workload) -> Queued:
        """What Kueue says of the job: its Workload (found by the job's uid), and the position in
        the LocalQueue where Kueue's visibility API answers. Extra: what cannot be read is left out."""
        queue = workload.labels[scheduling.QUEUE_LABEL]
        api = self.api
        found = None
        for version in KUEUE_VERSIONS:
            try:
                items = api.call("listing Kueue workloads", api.custom.list_namespaced_custom_object,
                                 KUEUE_GROUP, version, workload.namespace, "workloads",
                                 label_selector=f"{KUEUE_JOB_UID_LABEL}={workload.uid}", missing="")["items"]
                found = items[0] if items else None
                break
            except NotFoundError:
                continue
            except BackendError:
                return Queued(queue, kueue_reason(None, queue))
        position = None
        if found is not None and workload.state(None) is State.QUEUED:
            wl_name = found["metadata"]["name"]
            for version in KUEUE_VERSIONS:
                try:
                    pending = api.get_path("asking Kueue for the queue's order",
                                           f"/apis/visibility.{KUEUE_GROUP}/{version}/namespaces/"
                                           f"{workload.namespace}/localqueues/{queue}/pendingworkloads",
                                           missing="")
                    position = next((int(w["positionInLocalQueue"]) for w in pending.get("items") or []
                                     if w["metadata"]["name"] == wl_name), None)
                    break
                except (NotFoundError, BackendError, UsageError, KeyError, TypeError, ValueError):
                    continue
        return Queued(queue, kueue_reason(found, queue), kueue_evictions(found), position)

    def _scheduling_events(self, ns: str) -> list:
        """The scheduler's FailedScheduling events in the namespace: why a failed job's pending
        pods (deleted with the job) never ran. Extra, like progress."""
        api = self.api
        try:
            return api.call("listing scheduling events", api.core.list_namespaced_event, ns,
                            field_selector="involvedObject.kind=Pod,reason=FailedScheduling").items
        except (BackendError, UsageError, NotFoundError):
            return []

    def _progress(self, ns: str, rank0) -> dict | None:
        """The trainer's newest step record, from rank 0's progress lines (one more API call, the
        pods/log permission the Role already has). Progress is extra: a log that cannot be read
        leaves it out rather than failing status."""
        if rank0 is None:
            return None
        try:
            return progress_of(PodLogs(self.api, ns, lambda: None).read(rank0, tail=PROGRESS_TAIL_LINES))
        except (BackendError, UsageError, NotFoundError):
            return None

    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        ns, name = self._split(ref)
        workload, pods = self._workload_and_pods(ns, name)
        nodes = workload.nodes
        ranks = list(range(nodes)) if all_ranks else [0 if rank is None else rank]
        for r in ranks:
            if not 0 <= r < nodes:
                raise UsageError(f"--rank {r}: job {name} has ranks 0..{nodes - 1}")
        if workload.state(pods) is State.QUEUED:
            st = self.status(ref)
            print(f"{ref} is QUEUED ({st.reason}): no pod has started yet, so there are no logs"
                  + (" (following until it runs)" if follow else ""), file=sys.stderr, flush=True)
            if not follow:
                return

        def state_and_pods():
            found, now = self._workload_and_pods(ns, name)
            return found.state(now), now

        pod_logs = PodLogs(self.api, ns, state_and_pods)
        yield from pod_logs.lines(newest_pods(pods), ranks, all_ranks=all_ranks, follow=follow, tail=tail)

    # ---- cancel: deleting the Job (JobSet) with foreground propagation gives every pod SIGTERM and
    # its grace period (the trainer checkpoints), then the kubelet's SIGKILL; a queued job has no
    # pods and just goes --------------------------------------------------------------------------

    def _stop(self, ref: JobRef) -> str | None:
        ns, name = self._split(ref)
        self._delete(self._find(ns, name), "Foreground")
        return None

    def _left(self, ref: JobRef) -> list[str] | None:
        """What of the job still exists (None: nothing)."""
        ns, name = self._split(ref)
        api = self.api
        left = [p.metadata.name for p in api.call(
            f"listing pods of job {name}", api.core.list_namespaced_pod, ns,
            label_selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=simsiam-job").items]
        try:
            workload = self._find(ns, name)
            left.append(f"the {workload.kind} object")
        except NotFoundError:
            pass
        return left or None

    def _stopped(self, ref: JobRef) -> bool:
        return self._left(ref) is None

    def _kill(self, ref: JobRef) -> str:
        ns, name = self._split(ref)
        left = ", ".join(self._left(ref) or ["nothing"])
        return (f"still terminating {self.grace_seconds:g} s after TERM: {left} (the kubelet kills them; "
                f"kubectl -n {ns} get pods -l app.kubernetes.io/instance={name})")

    # ---- list, output ----------------------------------------------------------------------------

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """Jobs and JobSets carrying our labels in the namespace; all_jobs: in every namespace."""
        api = self.api
        where = "in all namespaces" if all_jobs else f"in namespace {api.namespace}"
        if all_jobs:
            jobs = api.call("listing jobs in all namespaces", api.batch.list_job_for_all_namespaces,
                            label_selector=MANAGED_SELECTOR).items
        else:
            jobs = api.call("listing jobs", api.batch.list_namespaced_job, api.namespace,
                            label_selector=MANAGED_SELECTOR).items
        found = [Workload("Job", j.metadata.name, j.metadata.namespace, j) for j in jobs
                 if JOBSET_NAME_LABEL not in (j.metadata.labels or {})]          # not a JobSet's child
        if api.serves(JOBSET_GROUP):
            if all_jobs:
                jobsets = api.call(f"listing jobsets {where}", api.custom.list_cluster_custom_object,
                                   JOBSET_GROUP, JOBSET_VERSION, "jobsets", label_selector=MANAGED_SELECTOR)
            else:
                jobsets = api.call(f"listing jobsets {where}", api.custom.list_namespaced_custom_object,
                                   JOBSET_GROUP, JOBSET_VERSION, api.namespace, "jobsets",
                                   label_selector=MANAGED_SELECTOR)
            found += [Workload("JobSet", js["metadata"]["name"], js["metadata"]["namespace"], js)
                      for js in jobsets.get("items") or []]
        now = time.time()
        rows = []
        for workload in found:
            meta = workload.obj["metadata"] if workload.jobset else workload.obj.metadata
            created = _timestamp(meta["creationTimestamp"] if workload.jobset else meta.creation_timestamp)
            rows.append(JobSummary(
                ref=JobRef(self.name, f"{workload.namespace}/{workload.name}"), name=workload.name,
                phase=workload.labels.get("simsiam-job/phase", "?"), state=workload.state(None),
                age_seconds=None if created is None else now - created,
                attempt=attempt_of_meta({"annotations": meta.get("annotations")}) if workload.jobset
                else attempt_of(workload.obj),
            ))
        return sorted(rows, key=lambda row: (row.age_seconds is None, row.age_seconds or 0))

    def output_location(self, ref: JobRef) -> str:
        """As pods of a later job with the same --output claim see it."""
        ns, name = self._split(ref)
        self._find(ns, name)
        return f"{OUTPUT_MOUNT}/{name}"


def _timestamp(value) -> float | None:
    """Seconds since the epoch of a model's datetime or a dict's RFC 3339 string."""
    if value is None:
        return None
    if isinstance(value, str):
        import datetime
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value.timestamp()

