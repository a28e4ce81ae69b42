"""The manifests of one job (pure: reads the kubeconfig file for the namespace, never the cluster).

``workload=job``: a ConfigMap (the trainer config), a headless Service (rendezvous) and an Indexed
Job with one pod per node, from ``k8s/job.yaml.j2``. ``workload=jobset``: the ConfigMap and a
JobSet with a leader (rank 0, the only pod with the output claim) and workers (ranks 1..N-1), from
``k8s/jobset.yaml.j2``. Both take their pods from ``k8s/pod.yaml.j2``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from simsiam_job import command, templates, validate
from simsiam_job.backends.base import Rendered
from simsiam_job.backends.kubernetes import scheduling
from simsiam_job.errors import UsageError
from simsiam_job.spec import JobSpec
from trainer import contract
from trainer.contract import ROUNDS_DIR, rendezvous_command

TEMPLATE = "k8s/job.yaml.j2"
JOBSET_TEMPLATE = "k8s/jobset.yaml.j2"
LEADER, WORKER = "leader", "worker"       # the JobSet's replicated jobs: rank 0, ranks 1..N-1
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"   # on every pod of a JobSet
CONFIG_DIR = "/etc/simsiam"      # the ConfigMap's mount
DATA_MOUNT = "/data"             # the data claim, read-only
OUTPUT_MOUNT = "/output"         # the output claim; each job writes OUTPUT_MOUNT/<job name>/
ATTEMPT_ANNOTATION = "simsiam-job/attempt"   # 2 after the first `simsiam-job resume`, ...
IMAGE_UID = 1000                 # the non-root user of docker/Dockerfile
IMAGE_HOME = "/home/simsiam"     # its HOME (paddle's caches), an emptyDir under a read-only root
# Phases that resume from checkpoints after a restart (a smoke job does not): on several nodes
# their ranks must share the checkpoints, on an output claim.
RESUMING_PHASES = ("pretrain", "linear-probe")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


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


def output_volume(spec: JobSpec, options) -> Volume | None:
    location = spec.output or options.output_pvc
    return parse_claim(location, "--output") if location else None


def render(spec: JobSpec, options, namespace: str, attempt: int = 1) -> Rendered:
    """attempt: 1 for submit; resume renders the next attempt of the same job."""
    if options.workload == "auto":
        raise UsageError("workload=auto is decided by asking the cluster whether it serves JobSets, which "
                         "render never does: render with --set workload=job or --set workload=jobset")
    template = JOBSET_TEMPLATE if options.workload == "jobset" else TEMPLATE
    docs = templates.render_yaml_stream(template, **context(spec, options, namespace, attempt))
    import yaml

    text = yaml.safe_dump_all(docs, sort_keys=False)
    return Rendered(text=text, files={f"{spec.name}.yaml": text}, payload=docs)


def _checked_volumes(spec: JobSpec, opts) -> tuple[Volume | None, Volume]:
    """The data claim (if any) and the output volume (an emptyDir without a claim)."""
    data = parse_claim(spec.data or opts.data_pvc, "--data") if (spec.data or opts.data_pvc) else None
    output = output_volume(spec, opts)
    if output is None and spec.nodes > 1 and spec.phase.value in RESUMING_PHASES:
        raise UsageError(
            f"a job on {spec.nodes} nodes needs an output claim (--output CLAIM or --set output_pvc=CLAIM): "
            "without one each pod keeps its checkpoints in its own emptyDir, and after a restart the "
            "ranks could never resume from the same checkpoint")
    return data, output or Volume("")


def _resources(spec: JobSpec, opts, site: scheduling.Scheduling) -> tuple[dict[str, str], dict[str, str]]:
    """Requests and limits per pod."""
    requests = {
        "cpu": opts.cpu or str(8 * spec.gpus if spec.gpus else 2),
        "memory": opts.memory or (f"{32 * spec.gpus}Gi" if spec.gpus else "8Gi"),
    }
    limits = {"memory": requests["memory"]}
    if spec.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
    requests.update(site.resources)
    limits.update(site.resources)
    return requests, limits


def _trainer_env(spec: JobSpec, opts, site: scheduling.Scheduling, namespace: str,
                 attempt: int) -> list[dict]:
    """The environment of every trainer container."""
    # The kubelet expands $(NAME) in env values and reads $$ as $: each $ doubled, the container
    # gets the value as typed, as on the other backends.
    env = [{"name": k, "value": v.replace("$", "$$")} for k, v in spec.env]
    secret_refs = [(k, ref.partition("/")) for k, ref in spec.env_secrets]   # SECRET/KEY, checked when parsed
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for k, (secret, _, key) in secret_refs]
    given = {k for k, _ in (*spec.env, *spec.env_secrets)}
    env += [{"name": k, "value": v.replace("$", "$$")} for k, v in site.env if k not in given]    # --env wins
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})  # logs reach `kubectl logs` at once
    env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    # The trainer names the job in its lock (a restarted pod takes its own job's lock over).
    env += [{"name": contract.JOB_ENV, "value": spec.name},
            {"name": contract.JOB_ID_ENV, "value": f"kubernetes://{namespace}/{spec.name}"},
            {"name": contract.ATTEMPT_ENV, "value": str(attempt)}]
    # Rank 0 counts the group's starts of this attempt in the output volume: past the bound it exits
    # 2 with "gave up after N group restarts: ...", which fails the job. A JobSet counts there only
    # the restarts in place of one JobSet generation; JobSet counts those that recreate the pods
    # itself (failurePolicy.maxRestarts).
    env.append({"name": contract.GROUP_RESTARTS_ENV, "value": str(opts.group_restarts)})
    return env


def _roles(spec: JobSpec, opts, env: list[dict], pod_annotations: dict, data: Volume | None,
           output: Volume) -> tuple[str, dict[str, dict]]:
    """The headless Service's name and the pod templates by role (an Indexed Job's one; a JobSet's
    leader and workers): each node's supervisor and launcher command, env and output volume."""
    job_dir = f"{OUTPUT_MOUNT}/{spec.name}"
    jobset = opts.workload == "jobset"
    trainer = command.trainer_args(spec, config_path=f"{CONFIG_DIR}/config.yaml",
                                   data_dir=DATA_MOUNT if data else None, output_dir=job_dir)

    def role(node_rank: str, rendezvous: list[str], output: Volume, extra_env=()) -> dict:
        """One pod template: its node's supervisor and launcher command, env and output volume."""
        launch = command.launch_args(spec, master=None, nnodes=spec.nodes, node_rank=node_rank,
                                     log_dir=f"{launch_logs(spec)}/rank-{node_rank}")
        return {"command": rendezvous + launch + trainer, "env": env + list(extra_env),
                "output": dataclasses.asdict(output), "annotations": pod_annotations}

    common = dict(port=opts.port, start_timeout=opts.start_timeout)
    if not jobset:
        service = spec.name  # the Service shares the job's name: pods are <job>-<index>.<job>
        # Several nodes: each pod first finds rank 0's IP (trainer.rendezvous adds --master); with an
        # output claim, through numbered rounds there, so a restarted group never meets the one
        # before. Every pod runs its node through trainer.rendezvous, which also reports how the
        # node ended (the termination message; with an output claim, the outcomes rank 0 bounds
        # restarts by).
        rendezvous = rendezvous_command(
            node_rank="$(JOB_COMPLETION_INDEX)",
            outcomes_dir=f"{job_dir}/{contract.OUTCOMES}" if output.claim else "",
            **(dict(rank0_host=f"{spec.name}-0.{service}", pod_ip="$(POD_IP)", **common,
                    rounds_dir=f"{job_dir}/{ROUNDS_DIR}" if output.claim else "") if spec.nodes > 1 else {}))
        roles = {"job": role("$(JOB_COMPLETION_INDEX)", rendezvous, output)}
    else:
        # Rank 0 (the leader) alone mounts the output claim; the workers meet it by its pod's DNS
        # name over the network, with JobSet's restart attempt as the group's generation, and
        # relay the ranks' heartbeats through it (trainer.relay).
        service = spec.name             # the JobSet's own headless Service (network.subdomain)
        attempt_env = {"name": contract.RESTART_ATTEMPT_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.labels['{RESTART_ATTEMPT_LABEL}']"}}}
        network = dict(rank0_host=f"{spec.name}-{LEADER}-0-0.{service}", pod_ip="$(POD_IP)",
                       generation=f"$({contract.RESTART_ATTEMPT_ENV})",
                       heartbeats_dir=f"{job_dir}/{contract.HEARTBEATS}",
                       **common) if spec.nodes > 1 else {}
        # The leader keeps every node's outcomes on its claim, for its next start's restart decision.
        leader_outcomes = dict(outcomes_dir=f"{job_dir}/{contract.OUTCOMES}") if network else {}
        roles = {LEADER: role("0", rendezvous_command(node_rank="0", **network, **leader_outcomes), output,
                              [attempt_env])}
        if spec.nodes > 1:
            roles[WORKER] = role("$(JOB_COMPLETION_INDEX)", rendezvous_command(
                node_rank="$(JOB_COMPLETION_INDEX)", rank_offset=1, **network), Volume(""), [attempt_env])
    return service, roles


def context(spec: JobSpec, opts, namespace: str, attempt: int = 1) -> dict[str, Any]:
    jobset = opts.workload == "jobset"
    data, output = _checked_volumes(spec, opts)
    if jobset:
        check_jobset_name(spec.name, spec.nodes)
    site = scheduling.parse(opts)
    requests, limits = _resources(spec, opts, site)
    env = _trainer_env(spec, opts, site, namespace, attempt)
    labels = {**spec.labels, **site.labels}
    service, roles = _roles(spec, opts, env, {**site.annotations, **site.pod_annotations}, data, output)
    node_selector = {"nvidia.com/gpu.product": opts.gpu_product} if spec.gpus and opts.gpu_product else {}
    return {
        "name": spec.name,
        "namespace": namespace,
        "service": service,
        "labels": labels,
        "workload_labels": {**labels, **site.workload_labels},
        "annotations": {**site.annotations, "simsiam-job/config-source": spec.config_source,
                        ATTEMPT_ANNOTATION: str(attempt)},
        # Kueue admits a suspended job (the client must not rely on Kueue's webhook doing it).
        "suspend": bool(opts.queue),
        "config_yaml": spec.config_yaml,
        "nodes": spec.nodes,
        "gpus": spec.gpus,
        "port": opts.port,
        "backoff_limit": opts.backoff_limit,
        "pod_failure_rules": job_failure_rules() if not jobset else jobset_pod_failure_rules(),
        "jobset_failure_rules": jobset_failure_rules(),
        "max_restarts": opts.group_restarts,
        "termination_grace": opts.termination_grace,
        "image": spec.image,
        "roles": roles,
        "requests": requests,
        "limits": limits,
        "node_selector": {**node_selector, **site.node_selector},
        "tolerations": ([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                        if spec.gpus else []) + list(site.tolerations),
        "node_affinity": list(site.node_affinity),
        "scheduler_name": site.scheduler_name,
        "capabilities": list(site.capabilities),
        "service_account": opts.service_account,
        "priority_class": opts.priority_class,
        "image_pull_secrets": [{"name": s} for s in opts.image_pull_secrets],
        "uid": IMAGE_UID,
        "home": IMAGE_HOME,
        "shm_size": validate.shm_size(opts.shm_size, limits["memory"]),
        "config_dir": CONFIG_DIR,
        "data": data and dataclasses.asdict(data),
        "data_mount": DATA_MOUNT,
        "output_mount": OUTPUT_MOUNT,
        "launch_logs": launch_logs(spec),
    }


# ---- failure policies, generated from the contract's decision ------------------------------------

def _decided(code: int) -> contract.Decision:
    """What contract.decide does after a start whose deciding rank ended with ``code``."""
    ended = contract.Outcome(contract.end_of_exit(code), 0, code)
    return contract.decide([ended], restarts=0, bound=1, ranks=1)


def job_failure_rules() -> list[dict]:
    """The Indexed Job's podFailurePolicy: fail at once where the contract fails; a restart of the
    group (recreating the index) is Ignored (not counted against backoffLimit): the trainer bounds
    the group's restarts itself, counting only what the contract counts."""
    fail = [c for c in contract.EXIT_ENDS if _decided(c).action == contract.FAIL]
    restart = [c for c in contract.RESTART_EXITS if _decided(c).action == contract.RESTART]
    return [{"action": "FailJob", "exit_codes": fail},
            {"action": "Ignore", "exit_codes": restart},
            {"action": "Ignore", "disruption": True}]


def jobset_pod_failure_rules() -> list[dict]:
    """A JobSet's child Jobs fail on their pod's first failure (backoffLimit 0); these FailJob
    rules put the class of the failure into the Job's failure message ("... matching FailJob rule
    at index N"), which the JobSet's failurePolicy reads (jobset_failure_rules)."""
    fail = [c for c in contract.EXIT_ENDS if _decided(c).action == contract.FAIL]
    uncounted = [c for c in contract.RESTART_EXITS
                 if _decided(c).action == contract.RESTART and not _decided(c).counted]
    return [{"action": "FailJob", "exit_codes": fail},
            {"action": "FailJob", "exit_codes": uncounted},
            {"action": "FailJob", "disruption": True}]


def jobset_failure_rules() -> list[dict]:
    """The JobSet's failurePolicy rules: bad input, divergence and a start timeout fail the JobSet;
    a preemption, eviction or drain (exit 143, DisruptionTarget) restarts the group without
    counting; anything else (a crash, a lost peer) restarts it, counted against maxRestarts."""
    pattern = "matching FailJob rule at index {}$"
    return [{"name": "retryingCannotHelp", "action": "FailJobSet", "reasons": ["PodFailurePolicy"],
             "patterns": [pattern.format(0)]},
            {"name": "preemptedOrEvicted", "action": "RestartJobSetAndIgnoreMaxRestarts",
             "reasons": ["PodFailurePolicy"], "patterns": [pattern.format(1), pattern.format(2)]},
            {"name": "crashedOrPeerLost", "action": "RestartJobSet", "reasons": [], "patterns": []}]


def check_jobset_name(name: str, nodes: int) -> None:
    """A worker pod's hostname, <job>-worker-0-<index>, must be a DNS label (63 characters)."""
    longest = f"{name}-{WORKER}-0-{max(nodes - 2, 0)}"
    if len(longest) > 63:
        raise UsageError(f"job name {name!r} is too long for a JobSet on {nodes} nodes: its pods' hostnames "
                         f"({longest}) must fit in 63 characters; use at most "
                         f"{len(name) - (len(longest) - 63)} characters")


# What the API server adds to objects: not part of what we send.
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation",
                    "selfLink", "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds")
_SERVER_POD_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid", "job-name",
                      "batch.kubernetes.io/job-name")


def next_attempt(job: dict, config_map: dict, service: dict) -> list[dict]:
    """The manifests of a job's next attempt (``simsiam-job resume``), from the objects of the one
    before as the API server returns them (plain dicts): the same config, volumes and command, the
    attempt annotation and the trainer's SIMSIAM_JOB_ATTEMPT one higher, so the trainer counts the
    new attempt's group restarts afresh; the server's own fields removed."""
    import copy

    docs = []
    for obj in (config_map, service, job):
        doc = copy.deepcopy(obj)
        doc.pop("status", None)
        for key in _SERVER_METADATA:
            doc["metadata"].pop(key, None)
        docs.append(doc)
    config_map, service, job = docs
    spec = job["spec"]
    spec.pop("selector", None)          # the server derives it again, with the new Job's uid
    pod_meta = spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {k: v for k, v in (pod_meta.get("labels") or {}).items()
                          if k not in _SERVER_POD_LABELS}
    _next(job, [spec["template"]])
    return [config_map, service, job]


def next_jobset_attempt(jobset: dict, config_map: dict) -> list[dict]:
    """The same for a JobSet (its headless Service is the JobSet controller's own)."""
    import copy

    docs = []
    for obj in (config_map, jobset):
        doc = copy.deepcopy(obj)
        doc.pop("status", None)
        for key in _SERVER_METADATA:
            doc["metadata"].pop(key, None)
        docs.append(doc)
    config_map, jobset = docs
    _next(jobset, [r["template"]["spec"]["template"] for r in jobset["spec"]["replicatedJobs"]])
    return [config_map, jobset]


def _next(workload: dict, pod_templates: list[dict]) -> None:
    """The attempt one higher (annotation and the trainer's SIMSIAM_JOB_ATTEMPT); in a Kueue queue,
    suspended again, for Kueue to admit."""
    annotations = workload["metadata"].setdefault("annotations", {})
    attempt = int(annotations.get(ATTEMPT_ANNOTATION, "1")) + 1
    annotations[ATTEMPT_ANNOTATION] = str(attempt)
    for template in pod_templates:
        for container in template["spec"]["containers"]:
            for var in container.get("env") or []:
                if var.get("name") == contract.ATTEMPT_ENV:
                    var["value"] = str(attempt)
    if (workload["metadata"].get("labels") or {}).get(scheduling.QUEUE_LABEL):
        workload["spec"]["suspend"] = True


def launch_logs(spec: JobSpec) -> str:
    """paddle's launcher copies its whole environment, secrets included, into its log directory:
    the pods' init container makes this folder (on the output claim) private before it starts."""
    return f"{OUTPUT_MOUNT}/{spec.name}/launch-logs"
