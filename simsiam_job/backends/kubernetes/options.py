"""The kubernetes backend's options: every field has a default and a help text; the site knobs,
names and quantities are checked here, so a mistake fails at render, on the laptop."""

from __future__ import annotations

import dataclasses
from typing import Literal

from simsiam_job import validate
from simsiam_job.backends.base import GROUP_RESTARTS_HELP, option
from simsiam_job.backends.kubernetes import scheduling
from simsiam_job.errors import UsageError


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
        (), "extra resources per pod (requests = limits), NAME=QUANTITY each, "
            "e.g. rdma/hca_shared_devices_a=1")
    rdma: bool = option(False, "InfiniBand/RoCE profile: IPC_LOCK, rdma_resource, the rdma_network "
                               "annotation, NCCL_IB_* environment (needs a namespace whose Pod Security "
                               "level allows IPC_LOCK)")
    rdma_resource: str = option("rdma/hca_shared_devices_a=1",
                                "the RDMA device resource of the rdma profile, NAME=QUANTITY")
    rdma_network: str = option("", "the rdma profile's secondary network(s) (annotation "
                                   "k8s.v1.cni.cncf.io/networks); empty: RDMA over the pod's own network")

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"kubernetes option {name} must be > 0, got {getattr(self, name)}")
        if self.start_timeout < 1:
            raise UsageError("kubernetes option start_timeout must be at least 1 second, "
                             f"got {self.start_timeout}")
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
        validate.at_least_zero("termination_grace", self.termination_grace, validate.INT64_MAX)
        validate.at_least_zero("group_restarts", self.group_restarts, validate.MAX_GROUP_RESTARTS)
