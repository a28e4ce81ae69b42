"""Kubernetes backend: a ConfigMap (the trainer config), a headless Service (rendezvous) and an
Indexed Job with one pod per node.

By concern: ``render`` (the manifests; pure), ``client`` (kubeconfig, namespace, bounded API calls,
errors as one line), ``status`` (reading Job and pod objects), ``logs`` (pod logs, following).
The kubernetes client is imported inside methods only: ``simsiam-job --help``, ``render`` and the
other backends never pay for it. Every read is a single GET or a label-selector LIST, so the number
of API calls per command does not grow with the number of nodes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import ClassVar, Literal

from simsiam_job import validate
from simsiam_job.backends.base import (
    GROUP_RESTARTS_HELP, BaseBackend, JobRef, JobStatus, JobSummary, Rendered, option, poll,
)
from simsiam_job.backends.kubernetes import render as _render
from simsiam_job.backends.kubernetes import scheduling
from simsiam_job.backends.kubernetes.client import Api, namespace
from simsiam_job.backends.kubernetes.logs import PodLogs
from simsiam_job.backends.kubernetes.render import IMAGE_UID, OUTPUT_MOUNT, Volume, parse_claim  # noqa: F401
from simsiam_job.backends.kubernetes.status import (  # noqa: F401  (read by the tests)
    attempt_of, job_state, job_status, newest_pods, progress_of,
)
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=simsiam-job"
PROGRESS_TAIL_LINES = 200  # of rank 0's log, read by status for the newest progress line


@dataclasses.dataclass(frozen=True)
class Options:
    namespace: str = option(
        "", "namespace of the job (default: the kubeconfig context's, in a pod its own, else 'default')")
    context: str = option("", "kubeconfig context (default: the current one)")
    kubeconfig: str = option(
        "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster service account)")
    gpu_product: str = option("NVIDIA-A100-SXM4-80GB",
                              "nodeSelector nvidia.com/gpu.product for GPU jobs; empty for any GPU node")
    shm_size: str = option("", "size limit of the memory-backed /dev/shm (default: 16Gi, at most half the "
                               "memory limit)")
    data_pvc: str = option(
        "", "data claim used when --data is not given (CLAIM or CLAIM/SUBPATH), mounted read-only at /data")
    output_pvc: str = option(
        "", "output claim used when --output is not given (CLAIM or CLAIM/SUBPATH), mounted at /output")
    service_account: str = option("", "serviceAccountName of the pods")
    priority_class: str = option("", "priorityClassName of the pods")
    image_pull_secrets: tuple[str, ...] = option((), "comma-separated Secret names for pulling the image")
    backoff_limit: int = option(
        3, "pod failures (other than exit codes 2, 3, 75 and disruptions) before the job fails")
    group_restarts: int = option(3, GROUP_RESTARTS_HELP + " (counted by the trainer in the output volume)")
    cpu: str = option("", "CPU request per pod (default: 8 per GPU, 2 without GPUs)")
    memory: str = option("", "memory request per pod (default: 32Gi per GPU, 8Gi without GPUs)")
    port: int = option(6768, "rendezvous port of rank 0")
    termination_grace: int = option(
        120, "seconds between SIGTERM and SIGKILL on preemption or cancel (the trainer checkpoints then)")
    connect_timeout: float = option(10.0, "seconds to wait for a connection to the API server")
    read_timeout: float = option(
        30.0, "seconds to wait for the API server's answer (a slow VPN may need more)")
    # ---- the workload: an Indexed Job (any cluster, a ReadWriteMany output claim for several
    # nodes) or a JobSet (the JobSet controller; only rank 0 mounts the output claim)
    workload: Literal["job", "jobset", "auto"] = option(
        "job", "job: an Indexed Job; jobset: a JobSet (leader + workers, ReadWriteOnce output is enough); "
               "auto: a JobSet when the cluster serves jobset.x-k8s.io, else a Job")
    start_timeout: int = option(
        600, "seconds every node waits for the whole group to start; then the job fails (exit 69), so no "
             "node holds its GPUs for peers that cannot be scheduled")
    # ---- shared clusters: Kueue and the scheduling knobs sites require
    queue: str = option("", "Kueue LocalQueue (label kueue.x-k8s.io/queue-name); the job is created "
                            "suspended and Kueue admits it as a whole")
    workload_priority: str = option("", "Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class)")
    tolerations: tuple[str, ...] = option(
        (), "pod tolerations, KEY[=VALUE][:EFFECT] each (no value: any value; no effect: every effect)")
    node_selector: tuple[str, ...] = option((), "pod nodeSelector entries, KEY=VALUE each")
    node_affinity: tuple[str, ...] = option(
        (), "required node affinity, all must hold: KEY=V1|V2 (In), KEY!=V1|V2 (NotIn), KEY (Exists), !KEY")
    labels: tuple[str, ...] = option((), "extra labels on every object and pod, KEY=VALUE each")
    annotations: tuple[str, ...] = option((), "extra annotations on the job and its pods, KEY=VALUE each")
    scheduler_name: str = option("", "schedulerName of the pods (default: the cluster's default scheduler)")
    extra_resources: tuple[str, ...] = option(
        (), "extra resources per pod (requests = limits), NAME=QUANTITY each, e.g. rdma/hca_shared_devices_a=1")
    rdma: bool = option(False, "InfiniBand/RoCE profile: IPC_LOCK, rdma_resource, the rdma_network annotation, "
                               "NCCL_IB_* environment (needs a namespace whose Pod Security level allows IPC_LOCK)")
    rdma_resource: str = option("rdma/hca_shared_devices_a=1", "the RDMA device resource of the rdma profile, "
                                                                "NAME=QUANTITY")
    rdma_network: str = option("", "the rdma profile's secondary network(s) (annotation "
                                   "k8s.v1.cni.cncf.io/networks); empty: RDMA over the pod's own network")

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"kubernetes option {name} must be > 0, got {getattr(self, name)}")
        if self.start_timeout < 1:
            raise UsageError(f"kubernetes option start_timeout must be at least 1 second, got {self.start_timeout}")
        # The site knobs are parsed once here: a mistake fails at render, on the laptop.
        scheduling.parse(self)
        # Names and quantities fail at render time, on the laptop, not in the API server.
        if self.namespace:
            validate.dns1123_label("namespace", self.namespace)
        for name in ("service_account", "priority_class"):
            if getattr(self, name):
                validate.dns1123_subdomain(name, getattr(self, name))
        for secret in self.image_pull_secrets:
            validate.dns1123_subdomain("image_pull_secrets", secret)
        validate.label_value("gpu_product", self.gpu_product)
        for name in ("shm_size", "cpu", "memory"):
            if getattr(self, name):
                validate.quantity(name, getattr(self, name))
        validate.port("port", self.port)
        validate.at_least_zero("backoff_limit", self.backoff_limit, validate.INT32_MAX)
        validate.at_least_zero("termination_grace", self.termination_grace)


class KubernetesBackend(BaseBackend):
    name: ClassVar[str] = "kubernetes"
    options_class: ClassVar[type] = Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        # The kubelet sends KILL itself after the pods' grace period; cancel waits that long.
        self.grace_seconds = self.options.termination_grace + 30
        self._api: Api | None = None

    stopped_after_term: ClassVar[str] = (
        "the job and its pods are gone (its service and config map are removed with it)")

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

    def send(self, spec: JobSpec, rendered: Rendered, dry_run: str | None) -> JobRef:
        ref = JobRef(self.name, f"{self.namespace()}/{spec.name}")
        if dry_run == "client":
            return ref
        return self._create(spec.name, self.api.namespace, rendered.payload, dry_run)

    def _create(self, name: str, ns: str, manifests: list[dict], dry_run: str | None = None) -> JobRef:
        """The Job first, then the ConfigMap and Service it owns (rolled back if one fails)."""
        api = self.api
        ref = JobRef(self.name, f"{ns}/{name}")
        server_dry = "All" if dry_run == "server" else None
        by_kind = {doc["kind"]: doc for doc in manifests}
        job = api.call(f"creating job {name}", api.batch.create_namespaced_job, ns, by_kind["Job"],
                       dry_run=server_dry)
        # The Job owns the ConfigMap and Service, so deleting the Job (cancel, or kubectl) removes
        # them. Its uid exists only now, hence Job first; its pods wait for the ConfigMap to mount.
        # (No blockOwnerDeletion: where admission enforces it, it needs rights on jobs/finalizers.)
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job.metadata.uid,
                 "controller": True}
        try:
            for kind, create in (("ConfigMap", api.core.create_namespaced_config_map),
                                 ("Service", api.core.create_namespaced_service)):
                body = dict(by_kind[kind])
                if job.metadata.uid:  # a server-side dry run may return the Job without one
                    body["metadata"] = {**body["metadata"], "ownerReferences": [owner]}
                api.call(f"creating {kind.lower()} {name}", create, ns, body, dry_run=server_dry)
        except (BackendError, UsageError):
            if server_dry is None:
                self._rollback(name, ns)
            raise
        return ref

    # ---- resume: the next attempt under the same name, from the objects of the last one -----------

    def _resume(self, ref: JobRef, status: JobStatus) -> JobRef:
        ns, name = self._split(ref)
        api = self.api
        serialize = api.batch.api_client.sanitize_for_serialization
        missing = f"no job {name!r} in namespace {ns!r}"
        job = serialize(api.call(f"reading job {name}", api.batch.read_namespaced_job, name, ns, missing=missing))
        config_map = serialize(api.call(f"reading config map {name}", api.core.read_namespaced_config_map,
                                        name, ns, missing=f"{missing}: its config map is gone"))
        service = serialize(api.call(f"reading service {name}", api.core.read_namespaced_service, name, ns,
                                     missing=f"{missing}: its service is gone"))
        manifests = _render.next_attempt(job, config_map, service)
        # The finished Job goes with its pods, config map and service (owned by it); its output
        # volume stays. The name is free again once they are all gone.
        api.call(f"deleting job {name}", api.batch.delete_namespaced_job, name, ns,
                 propagation_policy="Foreground", missing=missing)
        if not poll(lambda: self._left(ref) is None and api.gone(
                f"reading config map {name}", api.core.read_namespaced_config_map, name, ns), timeout=120, interval=1):
            raise BackendError(f"{ref}: the previous attempt's objects are still being deleted after 120 s; "
                               "run resume again in a moment")
        return self._create(name, ns, manifests)

    def _rollback(self, name: str, ns: str) -> None:
        """Undo a half-done submit: delete the Job; what was created after it (the ConfigMap, the
        Service) carries its owner reference and goes with it, so the Role needs no delete there."""
        api = self.api
        try:
            api.call(f"rolling back job {name}", api.batch.delete_namespaced_job, name, ns, missing="",
                     propagation_policy="Background")
        except NotFoundError:
            pass

    # ---- status, logs ----------------------------------------------------------------------------

    def _split(self, ref: JobRef) -> tuple[str, str]:
        ns, sep, name = ref.id.partition("/")
        if ref.backend != self.name or not sep or not ns or not name:
            raise UsageError(f"not a Kubernetes job reference: {ref} (expected kubernetes://NAMESPACE/NAME)")
        return ns, name

    def _job_and_pods(self, ns: str, name: str):
        """Two API calls, whatever the number of nodes: GET the Job, LIST its pods by label."""
        api = self.api
        job = api.call(f"reading job {name}", api.batch.read_namespaced_job, name, ns,
                       missing=f"no job {name!r} in namespace {ns!r} (simsiam-job list shows the jobs there)")
        pods = api.call(f"listing pods of job {name}", api.core.list_namespaced_pod, ns,
                        label_selector=f"{JOB_NAME_LABEL}={name}").items
        return job, pods

    def status(self, ref: JobRef) -> JobStatus:
        ns, name = self._split(ref)
        job, pods = self._job_and_pods(ns, name)
        return job_status(ref, job, pods, progress=self._progress(ns, newest_pods(pods).get(0)))

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
        job, pods = self._job_and_pods(ns, name)
        nodes = job.spec.completions or 1
        ranks = list(range(nodes)) if all_ranks else [0 if rank is None else rank]
        for r in ranks:
            if not 0 <= r < nodes:
                raise UsageError(f"--rank {r}: job {name} has ranks 0..{nodes - 1}")
        pod_logs = PodLogs(self.api, ns, lambda: self._job_and_pods(ns, name))
        yield from pod_logs.lines(newest_pods(pods), ranks, all_ranks=all_ranks, follow=follow, tail=tail)

    # ---- cancel: deleting the Job with foreground propagation gives every pod SIGTERM and its
    # grace period (the trainer checkpoints), then the kubelet's SIGKILL ----------------------------

    def _stop(self, ref: JobRef) -> str | None:
        ns, name = self._split(ref)
        api = self.api
        api.call(f"deleting job {name}", api.batch.delete_namespaced_job, name, ns,
                 propagation_policy="Foreground", missing=f"no job {name!r} in namespace {ns!r}")
        return None

    def _left(self, ref: JobRef) -> list[str] | None:
        """What of the job still exists (None: nothing)."""
        ns, name = self._split(ref)
        api = self.api
        pods = api.call(f"listing pods of job {name}", api.core.list_namespaced_pod, ns,
                        label_selector=f"{JOB_NAME_LABEL}={name}").items
        left = [p.metadata.name for p in pods]
        if not api.gone(f"reading job {name}", api.batch.read_namespaced_job, name, ns):
            left.append("the job object")
        return left or None

    def _stopped(self, ref: JobRef) -> bool:
        return self._left(ref) is None

    def _kill(self, ref: JobRef) -> str:
        ns, name = self._split(ref)
        left = ", ".join(self._left(ref) or ["nothing"])
        return (f"still terminating {self.grace_seconds:g} s after TERM: {left} (the kubelet kills them; "
                f"kubectl -n {ns} get pods -l {JOB_NAME_LABEL}={name})")

    # ---- list, output ----------------------------------------------------------------------------

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """Jobs carrying our labels in the namespace; all_jobs: in every namespace."""
        api = self.api
        if all_jobs:
            jobs = api.call("listing jobs in all namespaces", api.batch.list_job_for_all_namespaces,
                            label_selector=MANAGED_SELECTOR).items
        else:
            jobs = api.call("listing jobs", api.batch.list_namespaced_job, api.namespace,
                            label_selector=MANAGED_SELECTOR).items
        now = time.time()
        rows = []
        for job in jobs:
            meta = job.metadata
            created = meta.creation_timestamp.timestamp() if meta.creation_timestamp else None
            rows.append(JobSummary(
                ref=JobRef(self.name, f"{meta.namespace}/{meta.name}"), name=meta.name,
                phase=(meta.labels or {}).get("simsiam-job/phase", "?"),
                state=job_state(job, None), age_seconds=None if created is None else now - created,
                attempt=attempt_of(job),
            ))
        return sorted(rows, key=lambda row: (row.age_seconds is None, row.age_seconds or 0))

    def output_location(self, ref: JobRef) -> str:
        """As pods of a later job with the same --output claim see it."""
        ns, name = self._split(ref)
        api = self.api
        api.call(f"reading job {name}", api.batch.read_namespaced_job, name, ns,
                 missing=f"no job {name!r} in namespace {ns!r} (simsiam-job list shows the jobs there)")
        return f"{OUTPUT_MOUNT}/{name}"

