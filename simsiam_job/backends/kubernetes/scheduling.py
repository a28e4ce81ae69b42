"""The scheduling knobs shared clusters require (tolerations, node selection, labels, annotations,
scheduler, extra resources, the RDMA profile, Kueue's queue and priority), parsed and checked once.

Pure: ``parse(options)`` runs when the Options are built, so a mistake is one line at render time
(ValueError; the option resolver names where the value came from), never a rejection by the API
server. The option syntax follows kubectl's where it has one (``kubectl taint``'s KEY=VALUE:EFFECT).
"""

from __future__ import annotations

import dataclasses
import re

from simsiam_job import validate

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"      # Multus: the pod's secondary networks
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# NCCL falls back to TCP without a word when it cannot use InfiniBand; with the profile it uses IB
# or fails, so a misconfigured node is noticed at the first collective.
RDMA_ENV = (("NCCL_IB_DISABLE", "0"), ("NCCL_NET", "IB"))
RDMA_CAPABILITY = "IPC_LOCK"        # RDMA registers (pins) memory beyond RLIMIT_MEMLOCK
# Set by the launcher itself (labels of every object, the pods' resources): not knobs.
OURS = ("app.kubernetes.io/name", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
        "simsiam-job/phase", QUEUE_LABEL, PRIORITY_LABEL)
OWN_RESOURCES = ("cpu", "memory", "nvidia.com/gpu")

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Scheduling:
    tolerations: tuple[dict, ...] = ()
    node_selector: dict = dataclasses.field(default_factory=dict)
    node_affinity: tuple[dict, ...] = ()      # matchExpressions of the one required term
    labels: dict = dataclasses.field(default_factory=dict)          # every object and pod
    workload_labels: dict = dataclasses.field(default_factory=dict)  # the Job/JobSet (Kueue's)
    annotations: dict = dataclasses.field(default_factory=dict)      # the Job/JobSet and its pods
    pod_annotations: dict = dataclasses.field(default_factory=dict)  # the pods only (rdma network)
    scheduler_name: str = ""
    resources: dict = dataclasses.field(default_factory=dict)        # requests = limits
    capabilities: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def qualified_name(what: str, value: str) -> str:
    """A label/annotation key or resource name: [PREFIX/]NAME, PREFIX a DNS-1123 name."""
    prefix, _, name = value.rpartition("/")
    if (prefix and (len(prefix) > 253 or not validate.DNS1123_SUBDOMAIN.match(prefix))) \
            or len(name) > 63 or not _NAME.match(name):
        raise ValueError(f"{what} {value!r} is not a valid name: [PREFIX/]NAME, NAME at most 63 letters, "
                         "digits, '-', '_' and '.', PREFIX a DNS-1123 name such as example.com")
    return value


def _pair(what: str, item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
    return key, value


def _mapping(what: str, items, check_value=None) -> dict:
    found = {}
    for item in items:
        key, value = _pair(what, item)
        qualified_name(f"{what} key", key)
        if check_value is not None:
            check_value(f"{what} {key}", value)
        if key in found and found[key] != value:
            raise ValueError(f"{what} {key} is given twice ({found[key]!r} and {value!r})")
        found[key] = value
    return found


def _labels(items) -> dict:
    labels = _mapping("label", items, validate.label_value)
    for key in labels:
        if key in OURS:
            raise ValueError(f"label {key} is set by simsiam-job itself"
                             + (" (use --set queue / workload_priority)" if key.startswith("kueue.") else ""))
    return labels


def toleration(item: str) -> dict:
    """KEY[=VALUE][:EFFECT]: Equal with a value, Exists without; no effect tolerates every effect."""
    spec, _, effect = item.partition(":")
    key, sep, value = spec.partition("=")
    qualified_name("toleration key", key)
    if effect and effect not in TAINT_EFFECTS:
        raise ValueError(f"toleration {item!r}: the effect must be one of {', '.join(TAINT_EFFECTS)}")
    result = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        validate.label_value(f"toleration {key} value", value)
        result["value"] = value
    if effect:
        result["effect"] = effect
    return result


def affinity_term(item: str) -> dict:
    """KEY=V1|V2 (In), KEY!=V1|V2 (NotIn), KEY (Exists), !KEY (DoesNotExist)."""
    if "=" in item:
        key, _, values = item.partition("=")
        operator = "NotIn" if key.endswith("!") else "In"
        key = key.removesuffix("!")
        values = values.split("|")
        for value in values:
            validate.label_value(f"node_affinity {key} value", value)
        qualified_name("node_affinity key", key)
        return {"key": key, "operator": operator, "values": values}
    key = item.removeprefix("!")
    qualified_name("node_affinity key", key)
    return {"key": key, "operator": "DoesNotExist" if item.startswith("!") else "Exists"}


def resources(what: str, items) -> dict:
    """NAME=QUANTITY of extended resources (whole numbers: the scheduler counts devices)."""
    found = _mapping(what, items)
    for name, amount in found.items():
        if name in OWN_RESOURCES:
            raise ValueError(f"{what} {name}: set it with --set cpu/memory or --gpus")
        if "/" not in name or name.split("/")[0].endswith("kubernetes.io"):
            raise ValueError(f"{what} {name}: an extended resource needs a vendor prefix, e.g. "
                             "rdma/hca_shared_devices_a or example.com/fpga")
        if validate.quantity(f"{what} {name}", amount) != int(validate.quantity(f"{what} {name}", amount)):
            raise ValueError(f"{what} {name}={amount}: extended resources are whole numbers")
    return found


def parse(options) -> Scheduling:
    pod_annotations = {}
    found = resources("extra_resources", options.extra_resources)
    capabilities, env = (), ()
    if options.rdma:
        rdma = resources("rdma_resource", [options.rdma_resource])
        found = {**rdma, **found}
        capabilities, env = (RDMA_CAPABILITY,), RDMA_ENV
        if options.rdma_network:
            pod_annotations[NETWORKS_ANNOTATION] = options.rdma_network
    workload_labels = {}
    if options.queue:
        validate.dns1123_subdomain("queue", options.queue)
        workload_labels[QUEUE_LABEL] = validate.label_value("queue", options.queue)
    if options.workload_priority:
        validate.dns1123_subdomain("workload_priority", options.workload_priority)
        workload_labels[PRIORITY_LABEL] = validate.label_value("workload_priority", options.workload_priority)
    if options.scheduler_name:
        validate.dns1123_subdomain("scheduler_name", options.scheduler_name)
    return Scheduling(
        tolerations=tuple(toleration(t) for t in options.tolerations),
        node_selector=_mapping("node_selector", options.node_selector, validate.label_value),
        node_affinity=tuple(affinity_term(t) for t in options.node_affinity),
        labels=_labels(options.labels),
        workload_labels=workload_labels,
        annotations=_mapping("annotation", options.annotations),
        pod_annotations=pod_annotations,
        scheduler_name=options.scheduler_name,
        resources=found,
        capabilities=capabilities,
        env=env,
    )
