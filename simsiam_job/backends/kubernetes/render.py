"""The manifests of one job (pure: reads the kubeconfig file for the namespace, never the cluster).

A ConfigMap (the trainer config), a headless Service (rendezvous) and an Indexed Job with one pod
per node, from ``k8s/job.yaml.j2``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from simsiam_job import command, templates, validate
from simsiam_job.backends.base import Rendered
from simsiam_job.errors import UsageError
from simsiam_job.spec import JobSpec
from trainer import contract
from trainer.rendezvous import ROUNDS_DIR
from trainer.rendezvous import command as rendezvous_command

TEMPLATE = "k8s/job.yaml.j2"
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
    docs = templates.render_yaml_stream(TEMPLATE, **context(spec, options, namespace, attempt))
    import yaml

    text = yaml.safe_dump_all(docs, sort_keys=False)
    return Rendered(text=text, files={f"{spec.name}.yaml": text}, payload=docs)


def context(spec: JobSpec, opts, namespace: str, attempt: int = 1) -> dict[str, Any]:
    data = parse_claim(spec.data or opts.data_pvc, "--data") if (spec.data or opts.data_pvc) else None
    output = output_volume(spec, opts)
    if output is None and spec.nodes > 1 and spec.phase.value in RESUMING_PHASES:
        raise UsageError(
            f"a job on {spec.nodes} nodes needs an output claim (--output CLAIM or --set output_pvc=CLAIM): "
            "without one each pod keeps its checkpoints in its own emptyDir, and after a restart the "
            "ranks could never resume from the same checkpoint")
    output = output or Volume("")
    service = spec.name  # the Service shares the job's name: pods are <job>-<index>.<job>
    # Several nodes: each pod first finds rank 0's IP (trainer.rendezvous adds --master); with an
    # output claim, through numbered rounds there, so a restarted group never meets the one before.
    # Every pod runs its node through trainer.rendezvous, which also reports how the node ended (the
    # termination message; with an output claim, the outcomes rank 0 bounds restarts by).
    job_dir = f"{OUTPUT_MOUNT}/{spec.name}"
    rendezvous = rendezvous_command(
        node_rank="$(JOB_COMPLETION_INDEX)",
        outcomes_dir=f"{job_dir}/{contract.OUTCOMES}" if output.claim else "",
        **(dict(rank0_host=f"{spec.name}-0.{service}", port=opts.port, pod_ip="$(POD_IP)",
                rounds_dir=f"{job_dir}/{ROUNDS_DIR}" if output.claim else "") if spec.nodes > 1 else {}))
    argv = rendezvous + command.launch_args(
        spec, master=None, nnodes=spec.nodes, node_rank="$(JOB_COMPLETION_INDEX)",
        log_dir=f"{launch_logs(spec)}/rank-$(JOB_COMPLETION_INDEX)",
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
    # The kubelet expands $(NAME) in env values and reads $$ as $: each $ doubled, the container
    # gets the value as typed, as on the other backends.
    env = [{"name": k, "value": v.replace("$", "$$")} for k, v in spec.env]
    env += [{"name": k, "valueFrom": {"secretKeyRef": dict(zip(("name", "key"), ref.split("/", 1)))}}
            for k, ref in spec.env_secrets]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})  # logs reach `kubectl logs` at once
    env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    # The trainer names the job in its lock (a restarted pod takes its own job's lock over) and,
    # rank 0, counts the group's starts of this attempt in the output volume: past the bound it
    # exits 2 with "gave up after N group restarts: ...", which fails the job (FailJob).
    env += [{"name": contract.JOB_ENV, "value": spec.name},
            {"name": contract.JOB_ID_ENV, "value": f"kubernetes://{namespace}/{spec.name}"},
            {"name": contract.ATTEMPT_ENV, "value": str(attempt)},
            {"name": contract.GROUP_RESTARTS_ENV, "value": str(opts.group_restarts)}]
    return {
        "name": spec.name,
        "namespace": namespace,
        "service": service,
        "labels": spec.labels,
        "annotations": {"simsiam-job/config-source": spec.config_source, ATTEMPT_ANNOTATION: str(attempt)},
        "config_yaml": spec.config_yaml,
        "nodes": spec.nodes,
        "gpus": spec.gpus,
        "port": opts.port,
        "backoff_limit": opts.backoff_limit,
        "fail_job_exit_codes": list(contract.FINAL_EXITS),
        # 75: a peer was lost (or this pod's rendezvous round superseded); 143: the pod was asked
        # to stop (deleted, evicted) and saved a checkpoint. Either way the group restarts.
        "restart_exit_codes": list(contract.RESTART_EXITS),
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
        "shm_size": validate.shm_size(opts.shm_size, limits["memory"]),
        "config_dir": CONFIG_DIR,
        "data": data and dataclasses.asdict(data),
        "data_mount": DATA_MOUNT,
        "output": dataclasses.asdict(output),
        "output_mount": OUTPUT_MOUNT,
        "launch_logs": launch_logs(spec),
    }


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
    pod_meta["labels"] = {k: v for k, v in (pod_meta.get("labels") or {}).items() if k not in _SERVER_POD_LABELS}
    annotations = job["metadata"].setdefault("annotations", {})
    attempt = int(annotations.get(ATTEMPT_ANNOTATION, "1")) + 1
    annotations[ATTEMPT_ANNOTATION] = str(attempt)
    for container in spec["template"]["spec"]["containers"]:
        for var in container.get("env") or []:
            if var.get("name") == contract.ATTEMPT_ENV:
                var["value"] = str(attempt)
    return [config_map, service, job]


def launch_logs(spec: JobSpec) -> str:
    """paddle's launcher copies its whole environment, secrets included, into its log directory:
    the pods' init container makes this folder (on the output claim) private before it starts."""
    return f"{OUTPUT_MOUNT}/{spec.name}/launch-logs"
