"""The command every backend runs on every node, built in this one place.

A node runs ``launch_args(...) + trainer_args(...)``: paddle.distributed.launch starts the
per-device (GPU) or per-process (CPU) workers, each of which runs ``simsiam-train`` (found on PATH;
paddle's launcher executes a non-``.py`` entry point directly).

How each backend passes ``node_rank``: local: "0" (one node); slurm: "$SLURM_NODEID" (the script
shell-expands it, so it must not go through the ``sh`` filter); kubernetes: "$(JOB_COMPLETION_INDEX)"
(the kubelet expands ``$(VAR)`` in a container's args).
"""

from __future__ import annotations

import json

from simsiam_job.spec import JobSpec

TRAINER = "simsiam-train"


def _override(key: str, value: object) -> list[str]:
    # The trainer parses an override's value as YAML: JSON-encoding keeps a path such as
    # "/data/a: b" or "yes" a string, exactly as given.
    return ["-o", f"{key}={json.dumps(value)}"]


def trainer_args(spec: JobSpec, *, config_path: str, data_dir: str | None, output_dir: str) -> list[str]:
    """``simsiam-train -c CONFIG -o ...``: the resolved config file plus the locations the backend
    chose. The user's own ``-o`` overrides are already inside the config file (spec.config_yaml);
    ``--from`` is too (Global.pretrained_model, set when the spec is built)."""
    args = [TRAINER, "-c", config_path]
    args += _override("Global.output_dir", output_dir)
    if data_dir is not None:
        args += _override("DataLoader.Train.dataset.root", f"{data_dir}/train")
        if spec.config.get("DataLoader", {}).get("Eval"):  # the probe's val split, pretraining's kNN monitor
            args += _override("DataLoader.Eval.dataset.root", f"{data_dir}/val")
    args += _override("Global.auto_resume", True)
    args += _override("Global.device", "gpu" if spec.gpus > 0 else "cpu")
    return args


def launch_args(
    spec: JobSpec, *, master: str | None, nnodes: int, node_rank: str, log_dir: str,
    python: str = "python",
) -> list[str]:
    """``python -m paddle.distributed.launch ...`` for one node. ``master`` is HOST:PORT of rank 0
    (None for a single node: paddle then rendezvouses locally)."""
    args = [python, "-m", "paddle.distributed.launch"]
    if master is not None:
        args += ["--master", master]
    args += ["--nnodes", str(nnodes), "--rank", str(node_rank)]
    # One process per GPU (or per CPU share). No --devices: paddle reads --devices as entries of
    # CUDA_VISIBLE_DEVICES, so "0,1" fails where Slurm or a shared machine made GPUs 4-7 visible;
    # with the count alone, process i gets the i-th visible GPU.
    args += ["--nproc_per_node", str(spec.gpus or spec.procs_per_node)]
    args += ["--log_dir", log_dir, "--job_id", spec.name]
    return args
