"""``simsiam-job quickstart``: a real, small SimSiam experiment on this machine.

1. Fashion-MNIST (Debian's dataset-fashion-mnist) subset written as an ImageFolder, 32x32.
2. SimSiam pretraining of a narrow CIFAR-stem ResNet-18 on the local backend.
3. Three linear probes with the same recipe: the SimSiam encoder (``--from`` the pretrain job),
   a randomly initialised encoder, and raw pixels (logistic regression on the image).
4. A table of their top-1 accuracies.

Every step is an ordinary local job (``simsiam-job list`` shows them, ``simsiam-job logs`` reads
them); this module only chains them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from simsiam_job.backends import get_backend
from simsiam_job.backends.base import JobRef, State
from simsiam_job.build import Request, build_spec
from simsiam_job.errors import UsageError
from simsiam_job.progress import follow

# The shipped small CPU recipes (trainer/configs/) the quick start runs, and their data size.
PRETRAIN_CONFIG = "simsiam_cifar_resnet18_fmnist_pt_cpu"
PROBE_CONFIG = "simsiam_cifar_resnet18_fmnist_lp_cpu"
TRAIN_IMAGES = 5000
VAL_IMAGES = 2000
MAX_TRAIN_IMAGES, MAX_VAL_IMAGES = 60000, 10000    # Fashion-MNIST's training and test sets

PROBES = [  # (row label, extra overrides, probe the pretrained encoder?)
    ("SimSiam encoder (pretrained)", [], True),
    ("random-init encoder", [], False),
    ("raw pixels (logistic regression)", ["Model.name=pixels_linearprobe"], False),
]


def _prepare_data(data: Path, n_train: int, n_val: int, err: Callable[[str], None]) -> None:
    if (data / "train").is_dir() and (data / "val").is_dir():
        err(f"data: reusing {data}")
        return
    err(f"data: writing {n_train} train + {n_val} val Fashion-MNIST images (32x32) to {data}")
    # A subprocess: the launcher itself never imports the trainer's data stack.
    proc = subprocess.run([sys.executable, "-m", "trainer.data.fashion_mnist", str(data),
                           "--train", str(n_train), "--val", str(n_val)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise UsageError(f"cannot prepare Fashion-MNIST: {last} (is the Debian package "
                         "dataset-fashion-mnist installed?)")


def _shipped(name: str) -> str:
    from trainer.config import ConfigError, shipped_config

    try:
        return str(shipped_config(name))
    except ConfigError as err:
        raise UsageError(f"quickstart: {err}") from None


def _check(root: Path, requests: list[Request], n_train: int, n_val: int) -> None:
    """Every argument, before the data set is written: a mistake costs seconds, not minutes."""
    if not 1 <= n_train <= MAX_TRAIN_IMAGES:
        raise UsageError(f"--train must be between 1 and {MAX_TRAIN_IMAGES} (Fashion-MNIST's training set), "
                         f"got {n_train}")
    if not 1 <= n_val <= MAX_VAL_IMAGES:
        raise UsageError(f"--val must be between 1 and {MAX_VAL_IMAGES} (Fashion-MNIST's test set), "
                         f"got {n_val}")
    for req in requests:
        spec = build_spec(req, check_from=False)  # the config, its -o overrides and --procs
        sampler = spec.config["DataLoader"]["Train"]["sampler"]
        batch = sampler["batch_size"] * spec.world_size
        if sampler.get("drop_last", True) and n_train < batch:
            raise UsageError(f"--train {n_train} is less than one {req.phase} batch ({sampler['batch_size']} "
                             f"per process x {spec.world_size}): give --train {batch} or more")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise UsageError(f"--workdir {root}: {e.strerror or e}") from None


def _run(req: Request, label: str, err: Callable[[str], None]) -> JobRef | None:
    spec = build_spec(req)
    backend = get_backend(spec.backend, spec.options)
    ref = backend.submit(spec)
    err(f"{label}: {ref}  (logs: simsiam-job logs -f {ref})")
    try:
        state = follow(backend, ref, label=f"  {label}: ")
    except KeyboardInterrupt:
        err(f"\nstopped waiting; {ref} keeps running (stop it: simsiam-job cancel {ref})")
        raise
    return ref if state is State.SUCCEEDED else None


def _top1(output_dir: str) -> float | None:
    try:
        history = json.loads(Path(output_dir, "eval.json").read_text())
        return float(history["best"]["top1"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def run(*, workdir: str, procs: int, echo: Callable[[str], None], err: Callable[[str], None],
        n_train: int = TRAIN_IMAGES, n_val: int = VAL_IMAGES, extra_overrides: tuple[str, ...] = ()) -> int:
    root = Path(workdir).expanduser().absolute()
    data = root / f"fashion-mnist-{n_train}-{n_val}"
    outputs = root / "outputs"
    common = dict(backend="local", procs=procs, data=str(data), output=str(outputs))
    pretrain_request = Request(phase="pretrain", config=_shipped(PRETRAIN_CONFIG), overrides=extra_overrides,
                               **common)
    probe_requests = [Request(phase="linear-probe", config=_shipped(PROBE_CONFIG),
                              overrides=[*extra_overrides, *overrides], **common)
                      for _, overrides, _ in PROBES]
    _check(root, [pretrain_request, *probe_requests], n_train, n_val)
    _prepare_data(data, n_train, n_val, err)

    pretrain = _run(pretrain_request, "pretrain", err)
    if pretrain is None:
        return 1
    results = []
    for (label, _, from_pretrain), request in zip(PROBES, probe_requests, strict=True):
        if from_pretrain:
            request = dataclasses.replace(request, from_ref=str(pretrain))
        ref = _run(request, f"probe: {label}", err)
        if ref is None:
            return 1
        results.append((label, _top1(get_backend("local").output_location(ref)), ref))

    width = max(len(label) for label, _, _ in results)
    echo("")
    echo(f"Linear probe on Fashion-MNIST ({n_train} train / {n_val} val images), top-1:")
    for label, top1, ref in results:
        shown = f"{100 * top1:5.1f} %" if top1 is not None else "  n/a"
        echo(f"  {label.ljust(width)}  {shown}   {ref}")
    echo("Training curves (open in a browser): "
         f"{Path(get_backend('local').output_location(pretrain), 'curves.svg')}")
    return 0
