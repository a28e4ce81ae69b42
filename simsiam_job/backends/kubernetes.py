"""Kubernetes backend: a ConfigMap (the trainer config), a headless Service (rendezvous) and an
Indexed Job with one pod per node, rendered from ``k8s/job.yaml.j2``.

The kubernetes client is imported inside methods only: ``simsiam-job --help`` and the other
backends never pay for it. Every read is a single GET or a label-selector LIST, so the number of
API calls per command does not grow with the number of nodes.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from simsiam_job import command, templates
from simsiam_job.backends.base import (
    JobRef, JobStatus, JobSummary, NodeStatus, Rendered, State,
)
from simsiam_job.errors import BackendError, NotFoundError, UsageError
from simsiam_job.spec import JobSpec
from trainer.rendezvous import command as rendezvous_command

TEMPLATE = "k8s/job.yaml.j2"
CONFIG_DIR = "/etc/simsiam"      # the ConfigMap's mount
DATA_MOUNT = "/data"             # the data claim, read-only
OUTPUT_MOUNT = "/output"         # the output claim; each job writes OUTPUT_MOUNT/<job name>/
IMAGE_UID = 1000                 # the non-root user of docker/Dockerfile
IMAGE_HOME = "/home/simsiam"     # its HOME (paddle's caches), an emptyDir under a read-only root
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=simsiam-job"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass(frozen=True)
class Options:
    namespace: str = field(default="", metadata=_help(
        "namespace of the job (default: the kubeconfig context's, in a pod its own, else 'default')"))
    context: str = field(default="", metadata=_help("kubeconfig context (default: the current one)"))
    kubeconfig: str = field(default="", metadata=_help(
        "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster service account)"))
    gpu_product: str = field(default="NVIDIA-A100-SXM4-80GB", metadata=_help(
        "nodeSelector nvidia.com/gpu.product for GPU jobs; empty for any GPU node"))
    shm_size: str = field(default="16Gi", metadata=_help("size limit of the memory-backed /dev/shm"))
    data_pvc: str = field(default="", metadata=_help(
        "data claim used when --data is not given (CLAIM or CLAIM/SUBPATH), mounted read-only at /data"))
    output_pvc: str = field(default="", metadata=_help(
        "output claim used when --output is not given (CLAIM or CLAIM/SUBPATH), mounted at /output"))
    service_account: str = field(default="", metadata=_help("serviceAccountName of the pods"))
    priority_class: str = field(default="", metadata=_help("priorityClassName of the pods"))
    image_pull_secrets: tuple[str, ...] = field(default=(), metadata=_help(
        "comma-separated Secret names for pulling the image"))
    backoff_limit: int = field(default=3, metadata=_help(
        "pod failures (other than exit code 2 and disruptions) before the job fails"))
    cpu: str = field(default="", metadata=_help("CPU request per pod (default: 8 per GPU, 2 without GPUs)"))
    memory: str = field(default="", metadata=_help(
        "memory request per pod (default: 32Gi per GPU, 8Gi without GPUs)"))
    port: int = field(default=6768, metadata=_help("rendezvous port of rank 0"))
    termination_grace: int = field(default=120, metadata=_help(
        "seconds between SIGTERM and SIGKILL on preemption or cancel (the trainer checkpoints then)"))


@dataclasses.dataclass(frozen=True)
class Volume:
    claim: str
    sub_path: str = ""


def parse_claim(location: str, what: str) -> Volume:
    """``[pvc:]CLAIM[/SUBPATH]`` -> Volume; the only form of --data/--output on Kubernetes."""
    text = location.removeprefix("pvc:")
    claim, _, sub_path = text.partition("/")
    sub_path = sub_path.strip("/")
    if not DNS1123_SUBDOMAIN.match(claim) or len(claim) > 253:
        raise UsageError(
            f"{what} {location!r}: on Kubernetes this is a PersistentVolumeClaim, written "
            "CLAIM or CLAIM/SUBPATH (claim names are lowercase letters, digits, '-' and '.')")
    if any(part in ("", ".", "..") for part in sub_path.split("/")) and sub_path:
        raise UsageError(f"{what} {location!r}: the sub-path must be relative, without '.' or '..'")
    return Volume(claim, sub_path)


class KubernetesBackend:
    name: ClassVar[str] = "kubernetes"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._client = None

    # ---- rendering (pure: reads no cluster) ------------------------------------------------------

    def render(self, spec: JobSpec) -> Rendered:
        docs = templates.render_yaml_stream(TEMPLATE, **self._context(spec))
        import yaml

        text = yaml.safe_dump_all(docs, sort_keys=False)
        return Rendered(text=text, files={f"{spec.name}.yaml": text}, payload=docs)

    def _context(self, spec: JobSpec) -> dict[str, Any]:
        opts = self.options
        data = parse_claim(spec.data or opts.data_pvc, "--data") if (spec.data or opts.data_pvc) else None
        output_location = spec.output or opts.output_pvc
        output = parse_claim(output_location, "--output") if output_location else Volume("")
        service = spec.name  # the Service shares the job's name: pods are <job>-<index>.<job>
        # Several nodes: each pod first finds rank 0's IP (trainer.rendezvous adds --master).
        rendezvous = rendezvous_command(
            rank0_host=f"{spec.name}-0.{service}", port=opts.port,
            node_rank="$(JOB_COMPLETION_INDEX)", pod_ip="$(POD_IP)") if spec.nodes > 1 else []
        argv = rendezvous + command.launch_args(
            spec, master=None, nnodes=spec.nodes, node_rank="$(JOB_COMPLETION_INDEX)",
            log_dir=f"{OUTPUT_MOUNT}/{spec.name}/launch-logs/rank-$(JOB_COMPLETION_INDEX)",
        ) + command.trainer_args(
            spec, config_path=f"{CONFIG_DIR}/config.yaml",
            data_dir=DATA_MOUNT if data else None, output_dir=f"{OUTPUT_MOUNT}/{spec.name}",
        )
        requests = {
            "cpu": opts.cpu or str(8 * spec.gpus if spec.gpus else 2),
            "memory": opts.memory or (f"{32 * spec.gpus}Gi" if spec.gpus else "8Gi"),
        }
        limits = {"memory": requests["memory"]}
        if spec.gpus:
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
        env = [{"name": k, "value": v} for k, v in spec.env]
        env.append({"name": "PYTHONUNBUFFERED", "value": "1"})  # logs reach `kubectl logs` at once
        env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        return {
            "name": spec.name,
            "namespace": self.namespace(),
            "service": service,
            "labels": spec.labels,
            "annotations": {"simsiam-job/config-source": spec.config_source},
            "config_yaml": spec.config_yaml,
            "nodes": spec.nodes,
            "gpus": spec.gpus,
            "port": opts.port,
            "backoff_limit": opts.backoff_limit,
            "termination_grace": opts.termination_grace,
            "image": spec.image,
            "command": argv,
            "env": env,
            "requests": requests,
            "limits": limits,
            "node_selector": {"nvidia.com/gpu.product": opts.gpu_product}
            if spec.gpus and opts.gpu_product else {},
            "service_account": opts.service_account,
            "priority_class": opts.priority_class,
            "image_pull_secrets": [{"name": s} for s in opts.image_pull_secrets],
            "uid": IMAGE_UID,
            "home": IMAGE_HOME,
            "shm_size": opts.shm_size,
            "config_dir": CONFIG_DIR,
            "data": data and dataclasses.asdict(data),
            "data_mount": DATA_MOUNT,
            "output": dataclasses.asdict(output),
            "output_mount": OUTPUT_MOUNT,
        }

    def namespace(self) -> str:
        """The namespace in use: --set namespace, else the kubeconfig context's, else the pod's own
        (in a cluster), else "default". Reads local files only."""
        if self.options.namespace:
            return self.options.namespace
        kubeconfig = self._kubeconfig_path()
        if kubeconfig is None and IN_CLUSTER_NAMESPACE.is_file():
            return IN_CLUSTER_NAMESPACE.read_text().strip()
        if kubeconfig is not None:
            from kubernetes import config

            try:
                contexts, current = config.list_kube_config_contexts(config_file=str(kubeconfig))
            except Exception as err:  # the client raises ConfigException and yaml/OS errors alike
                raise UsageError(f"cannot read kubeconfig {kubeconfig}: {err}") from None
            if self.options.context:
                current = next((c for c in contexts if c["name"] == self.options.context), None)
                if current is None:
                    names = ", ".join(c["name"] for c in contexts)
                    raise UsageError(f"kubeconfig {kubeconfig} has no context {self.options.context!r} "
                                     f"(it has: {names})")
            if current and current.get("context", {}).get("namespace"):
                return current["context"]["namespace"]
        return "default"

    def _kubeconfig_path(self) -> Path | None:
        if self.options.kubeconfig:
            path = Path(self.options.kubeconfig).expanduser()
            if not path.is_file():
                raise UsageError(f"kubeconfig {path} does not exist")
            return path
        for candidate in os.environ.get("KUBECONFIG", "").split(os.pathsep):
            if candidate and Path(candidate).is_file():
                return Path(candidate)
        default = Path.home() / ".kube" / "config"
        return default if default.is_file() else None

    # ---- API access ------------------------------------------------------------------------------

    def _api(self):
        """(CoreV1Api, BatchV1Api) on one ApiClient, from the kubeconfig or the in-cluster account."""
        if self._client is None:
            from kubernetes import client, config

            kubeconfig = self._kubeconfig_path()
            try:
                if kubeconfig is not None:
                    api_client = config.new_client_from_config(
                        config_file=str(kubeconfig), context=self.options.context or None)
                elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                    cfg = client.Configuration()
                    config.load_incluster_config(client_configuration=cfg)
                    api_client = client.ApiClient(cfg)
                else:
                    raise UsageError(
                        "no kubeconfig found: set KUBECONFIG, create ~/.kube/config, or pass "
                        "--set kubeconfig=PATH")
            except config.ConfigException as err:
                raise UsageError(f"cannot use kubeconfig {kubeconfig}: {err}") from None
            self._client = (client.CoreV1Api(api_client), client.BatchV1Api(api_client))
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """One API call; its errors become one line with the server's own message and a hint."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise _api_error(err, what, self.namespace()) from None
        except HTTPError as err:
            core, _ = self._api()
            cause = str(getattr(err, "reason", None) or err)
            errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", cause)  # e.g. "Connection refused"
            raise BackendError(
                f"{what}: cannot reach the API server at {core.api_client.configuration.host} "
                f"({errno.group(1) if errno else cause}); check the kubeconfig context and that "
                "the cluster is up") from None

    def _split(self, ref: JobRef) -> tuple[str, str]:
        namespace, sep, name = ref.id.partition("/")
        if ref.backend != self.name or not sep or not namespace or not name:
            raise UsageError(f"not a Kubernetes job reference: {ref} (expected kubernetes://NAMESPACE/NAME)")
        return namespace, name

    # ---- submit ----------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, dry_run: str | None = None) -> JobRef:
        rendered = self.render(spec)
        ref = JobRef(self.name, f"{self.namespace()}/{spec.name}")
        if dry_run == "client":
            return ref
        if dry_run not in (None, "server"):
            raise UsageError(f"--dry-run must be 'client' or 'server', not {dry_run!r}")
        core, batch = self._api()
        namespace = self.namespace()
        server_dry = "All" if dry_run == "server" else None
        by_kind = {doc["kind"]: doc for doc in rendered.payload}
        job = self._call(f"creating job {spec.name}", batch.create_namespaced_job,
                         namespace, by_kind["Job"], dry_run=server_dry)
        # The Job owns the ConfigMap and Service, so deleting the Job (cancel, or kubectl) removes
        # them. Its uid exists only now, hence Job first; its pods wait for the ConfigMap to mount.
        # (No blockOwnerDeletion: where admission enforces it, it needs rights on jobs/finalizers.)
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": spec.name, "uid": job.metadata.uid,
                 "controller": True}
        created: list[tuple[str, Any]] = []
        try:
            for kind, create, delete in (
                ("ConfigMap", core.create_namespaced_config_map, core.delete_namespaced_config_map),
                ("Service", core.create_namespaced_service, core.delete_namespaced_service),
            ):
                body = dict(by_kind[kind])
                if job.metadata.uid:  # a server-side dry run may return the Job without one
                    body["metadata"] = {**body["metadata"], "ownerReferences": [owner]}
                self._call(f"creating {kind.lower()} {spec.name}", create, namespace, body,
                           dry_run=server_dry)
                created.append((kind, delete))
        except (BackendError, UsageError):
            if server_dry is None:
                self._rollback(spec.name, namespace, created)
            raise
        return ref

    def _rollback(self, name: str, namespace: str, created) -> None:
        """Undo a half-done submit: the Job first (its pods go with it), then what else exists."""
        from kubernetes.client.exceptions import ApiException

        _, batch = self._api()
        deletions = [lambda: batch.delete_namespaced_job(name, namespace,
                                                         propagation_policy="Background")]
        deletions += [lambda d=delete: d(name, namespace) for _, delete in created]
        for delete in deletions:
            try:
                delete()
            except ApiException as err:
                if err.status != 404:
                    raise _api_error(err, f"rolling back job {name}", namespace) from None

    # ---- status ----------------------------------------------------------------------------------

    def status(self, ref: JobRef) -> JobStatus:
        namespace, name = self._split(ref)
        job, pods = self._job_and_pods(namespace, name)
        return job_status(ref, job, pods)

    def _job_and_pods(self, namespace: str, name: str):
        """Two API calls, whatever the number of nodes: GET the Job, LIST its pods by label."""
        core, batch = self._api()
        job = self._call(f"reading job {name}", self._get_job, batch, namespace, name)
        pods = self._call(f"listing pods of job {name}", core.list_namespaced_pod, namespace,
                          label_selector=f"{JOB_NAME_LABEL}={name}").items
        return job, pods

    @staticmethod
    def _get_job(batch, namespace: str, name: str):
        from kubernetes.client.exceptions import ApiException

        try:
            return batch.read_namespaced_job(name, namespace)
        except ApiException as err:
            if err.status == 404:
                raise NotFoundError(f"no job {name!r} in namespace {namespace!r} "
                                    "(simsiam-job list shows the jobs there)") from None
            raise

    # ---- logs ------------------------------------------------------------------------------------

    def logs(self, ref: JobRef, *, rank: int | None = 0, all_ranks: bool = False,
             follow: bool = False, tail: int | None = None) -> Iterator[str]:
        namespace, name = self._split(ref)
        job, pods = self._job_and_pods(namespace, name)
        nodes = job.spec.completions or 1
        ranks = list(range(nodes)) if all_ranks else [0 if rank is None else rank]
        for r in ranks:
            if not 0 <= r < nodes:
                raise UsageError(f"--rank {r}: job {name} has ranks 0..{nodes - 1}")
        if not all_ranks:
            yield from self._rank_lines(namespace, name, ranks[0], follow, tail, newest_pods(pods))
            return
        if follow:
            yield from self._follow_all(namespace, name, ranks, tail, newest_pods(pods))
            return
        # Interleave by the kubelet's timestamps: lines appear in the order they were written.
        streams = [self._timestamped(namespace, newest_pods(pods).get(r), r, tail) for r in ranks]
        for _, r, line in heapq.merge(*streams):
            yield f"[rank {r}] {line}"

    def _timestamped(self, namespace: str, pod, r: int, tail: int | None):
        if pod is None:
            return
        text = self._read_log(namespace, pod, tail=tail, timestamps=True)
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            yield _stamp_key(stamp), r, rest

    def _read_log(self, namespace: str, pod, *, tail: int | None, timestamps: bool = False) -> str:
        core, _ = self._api()
        name = pod.metadata.name
        if (pod.status.phase or "Pending") == "Pending":
            return ""  # no container has started yet: nothing to read
        return self._call(f"reading the log of pod {name}", core.read_namespaced_pod_log, name,
                          namespace, container="trainer", tail_lines=tail, timestamps=timestamps)

    def _rank_lines(self, namespace: str, name: str, r: int, follow: bool, tail: int | None,
                    pods: dict) -> Iterator[str]:
        """One rank's log. With follow: waits for the rank's pod to start, reconnects after the
        server closes the stream or after a quiet spell in which the job may have ended (without
        repeating lines), moves on to the newer pod when the Job retries the index, and ends with
        the job."""
        if not follow:
            pod = pods.get(r)
            if pod is not None:
                yield from self._read_log(namespace, pod, tail=tail).splitlines()
            return
        last_stamp: dict[str, str] = {}  # pod -> timestamp of the last line printed
        while True:
            try:
                job, all_pods = self._job_and_pods(namespace, name)
            except NotFoundError:
                return  # cancelled while we followed
            pod = newest_pods(all_pods).get(r)
            job_done = job_state(job, all_pods).finished
            if pod is not None and pod.status.phase != "Pending":
                yield from self._stream(namespace, pod, last_stamp, follow=not job_done,
                                        tail=tail if not last_stamp else None)
            if job_done:
                return
            time.sleep(0.5)

    FOLLOW_QUIET_S: ClassVar[float] = 5.0  # silence after which -f checks whether the job ended

    def _stream(self, namespace: str, pod, last_stamp: dict[str, str], *, follow: bool,
                tail: int | None) -> Iterator[str]:
        """Lines of a pod's log after the last one printed (the API has no "since this line", so
        lines carry the kubelet's timestamps, and those already seen are skipped). A followed
        stream is given up after FOLLOW_QUIET_S without a line; the caller reconnects."""
        core, _ = self._api()
        name = pod.metadata.name
        since = None
        if name in last_stamp:
            since = max(1, int(time.time() - _parse_stamp(last_stamp[name])) + 2)
        response = self._call(f"reading the log of pod {name}", core.read_namespaced_pod_log, name,
                              namespace, container="trainer", follow=follow, timestamps=True,
                              since_seconds=since, tail_lines=tail, _preload_content=False)
        lines = _quiet_timeout(_lines(response), response, self.FOLLOW_QUIET_S) if follow else _lines(response)
        for line in lines:
            stamp, _, text = line.partition(" ")
            stamp = _stamp_key(stamp)
            if name in last_stamp and stamp <= last_stamp[name]:
                continue
            last_stamp[name] = stamp
            yield text

    def _follow_all(self, namespace: str, name: str, ranks: list[int], tail: int | None,
                    pods: dict) -> Iterator[str]:
        lines: queue.Queue = queue.Queue()
        done = object()

        def pump(r: int) -> None:
            try:
                for line in self._rank_lines(namespace, name, r, True, tail, pods):
                    lines.put(f"[rank {r}] {line}")
            except Exception as err:  # surfaced in the caller's thread
                lines.put(err)
            finally:
                lines.put(done)

        for r in ranks:
            threading.Thread(target=pump, args=(r,), daemon=True).start()
        running = len(ranks)
        while running:
            item = lines.get()
            if item is done:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item

    # ---- cancel, list, output --------------------------------------------------------------------

    def cancel(self, ref: JobRef, timeout: float = 120.0) -> str:
        """Delete the Job with foreground propagation (pods get SIGTERM and their grace period, so
        the trainer can checkpoint); return once the Job and its pods are gone."""
        namespace, name = self._split(ref)
        core, batch = self._api()
        from kubernetes.client.exceptions import ApiException

        try:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
        except ApiException as err:
            if err.status == 404:
                raise NotFoundError(f"no job {name!r} in namespace {namespace!r}") from None
            raise _api_error(err, f"deleting job {name}", namespace) from None
        deadline = time.monotonic() + timeout
        while True:
            pods = self._call(f"listing pods of job {name}", core.list_namespaced_pod, namespace,
                              label_selector=f"{JOB_NAME_LABEL}={name}").items
            try:
                batch.read_namespaced_job(name, namespace)
                job_gone = False
            except ApiException as err:
                if err.status != 404:
                    raise _api_error(err, f"reading job {name}", namespace) from None
                job_gone = True
            if job_gone and not pods:
                return (f"cancelled {ref}: the job and its pods are gone (its service and config "
                        "map are removed with it)")
            if time.monotonic() > deadline:
                left = ", ".join(p.metadata.name for p in pods) or "the job object"
                return (f"cancel of {ref} requested; still terminating after {timeout:.0f}s: {left} "
                        f"(kubectl -n {namespace} get pods -l {JOB_NAME_LABEL}={name})")
            time.sleep(0.5)

    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """Jobs carrying our labels in the namespace; all_jobs: in every namespace."""
        _, batch = self._api()
        if all_jobs:
            jobs = self._call("listing jobs in all namespaces", batch.list_job_for_all_namespaces,
                              label_selector=MANAGED_SELECTOR).items
        else:
            jobs = self._call("listing jobs", batch.list_namespaced_job, self.namespace(),
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
            ))
        return sorted(rows, key=lambda row: (row.age_seconds is None, row.age_seconds or 0))

    def output_location(self, ref: JobRef) -> str:
        """As pods of a later job with the same --output claim see it."""
        namespace, name = self._split(ref)
        _, batch = self._api()
        self._call(f"reading job {name}", self._get_job, batch, namespace, name)
        return f"{OUTPUT_MOUNT}/{name}"


# ---- reading Job and pod objects (pure functions: tested without a cluster) -----------------------

def _lines(stream) -> Iterator[str]:
    """Lines of a streamed HTTP response, as they arrive."""
    buffer = b""
    try:
        for chunk in stream.stream(amt=4096, decode_content=True):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
        if buffer:
            yield buffer.decode(errors="replace")
    finally:
        stream.release_conn()


def _quiet_timeout(lines: Iterator[str], response, quiet: float) -> Iterator[str]:
    """``lines`` until the stream ends or stays silent for ``quiet`` seconds (then the socket is
    shut down, which ends the reader thread; close() would wait for the reader's lock)."""
    box: queue.Queue = queue.Queue()
    end = object()

    def reader() -> None:
        try:
            for line in lines:
                box.put(line)
        except Exception:  # the response was closed under us, or the connection dropped
            pass
        finally:
            box.put(end)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        try:
            item = box.get(timeout=quiet)
        except queue.Empty:
            shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                shutdown()
            return
        if item is end:
            return
        yield item


def _stamp_key(stamp: str) -> str:
    """The kubelet's RFC 3339 UTC timestamp (trailing zeros of the nanoseconds trimmed) padded so
    that comparing two keys as strings compares the times."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}"


def _parse_stamp(key: str) -> float:
    """Seconds since the epoch of a _stamp_key."""
    import datetime

    whole, _, fraction = key.partition(".")
    parsed = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp() + float(f"0.{fraction}")


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
                    + (f" ({t.message.strip()})" if t.message else "")), t.exit_code
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


_PHASES = {"Pending": State.PENDING, "Running": State.RUNNING, "Succeeded": State.SUCCEEDED,
           "Failed": State.FAILED}


def job_status(ref: JobRef, job, pods) -> JobStatus:
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
    else:
        waiting = next((n for n in node_states if n.state is State.PENDING and n.reason), None)
        if waiting is not None:
            reason = f"rank {waiting.rank}: {waiting.reason}"
    detail = {"namespace": job.metadata.namespace, "active": job.status.active or 0,
              "succeeded": job.status.succeeded or 0, "failed": job.status.failed or 0,
              "pods": {n.rank: newest[n.rank].metadata.name for n in node_states if n.rank in newest}}
    return JobStatus(ref=ref, state=state, reason=reason, nodes=tuple(node_states), detail=detail)


_HINTS = {
    401: "the API server did not accept the credentials: refresh the kubeconfig's user",
    403: "ask an admin for the Role in k8s/rbac.yaml in namespace {namespace}",
    404: "check the namespace (--set namespace=...) and the name",
    409: "the name is taken: pick another --name, or `simsiam-job cancel` the old job",
}


def _api_error(err, what: str, namespace: str) -> Exception:
    """One line: what we tried, the API server's own message, and what to do about it."""
    message = err.reason or "error"
    try:
        body = json.loads(err.body or "{}")
        message = body.get("message") or message
    except (TypeError, ValueError):
        pass
    if err.status in (400, 422):
        # BadRequest / Invalid: the server rejected a value the user gave (a quantity, a name, ...).
        return UsageError(f"{what}: the API server rejected it: {message}")
    hint = _HINTS.get(err.status, "")
    if err.status == 403 and "exceeded quota" in message:
        hint = "the namespace's ResourceQuota is used up: ask for fewer nodes/GPUs or a larger quota"
    if err.status == 404 and "namespaces" in message:
        hint = "create the namespace or choose another with --set namespace=..."
    hint = hint.format(namespace=namespace)
    return BackendError(f"{what}: {message}" + (f" ({hint})" if hint else ""))
