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

import json
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


def _run(req: Request, label: str, err: Callable[[str], None]) -> JobRef | None:
    spec = build_spec(req)
    backend = get_backend(spec.backend, spec.options)
    ref = backend.submit(spec)
    err(f"{label}: {ref}  (logs: simsiam-job logs -f {ref})")
    state = follow(backend, ref, label=f"  {label}: ")
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
    _prepare_data(data, n_train, n_val, err)
    common = dict(backend="local", procs=procs, data=str(data), output=str(outputs))

    pretrain = _run(Request(phase="pretrain", config=_shipped(PRETRAIN_CONFIG), overrides=extra_overrides,
                            **common), "pretrain", err)
    if pretrain is None:
        return 1
    results = []
    for label, overrides, from_pretrain in PROBES:
        ref = _run(Request(phase="linear-probe", config=_shipped(PROBE_CONFIG),
                           overrides=[*extra_overrides, *overrides],
                           from_ref=str(pretrain) if from_pretrain else None, **common),
                   f"probe: {label}", err)
        if ref is None:
            return 1
        results.append((label, _top1(get_backend("local").output_location(ref)), ref))

    width = max(len(label) for label, _, _ in results)
    echo("")
    echo(f"Linear probe on Fashion-MNIST ({n_train} train / {n_val} val images), top-1:")
    for label, top1, ref in results:
        shown = f"{100 * top1:5.1f} %" if top1 is not None else "  n/a"
        echo(f"  {label.ljust(width)}  {shown}   {ref}")
    echo(f"Training curves (open in a browser): {Path(get_backend('local').output_location(pretrain), 'curves.svg')}")
    return 0
