"""Checkpoints that survive preemption: atomic writes, newest-valid auto-resume, encoder export.

A checkpoint is one file, OUTPUT_DIR/checkpoints/epoch_EEE_step_GGGGGGGG.pdckpt, holding a dict:
model, optimizer (keyed by structured parameter names, so it loads into a freshly built model),
scheduler, epoch and step (the position of the next batch), global_step, rng, config (YAML text).
Files are written to a temporary name, fsynced and renamed, so a crash leaves either the old set of
checkpoints or the new one, never a half-written file under a checkpoint's name.

CheckpointWriter keeps the write off the training path: the loop waits only while the state is
copied to host memory; serializing and writing (seconds for ResNet-50) happen in a thread.
"""
from __future__ import annotations

import io
import logging
import os
import random
import re
import threading
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

log = logging.getLogger("trainer")

SUFFIX = ".pdckpt"
_NAME = re.compile(r"^epoch_(\d+)_step_(\d+)\.pdckpt$")
REQUIRED = ("model", "optimizer", "epoch", "step", "global_step")


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that `path` is either absent/old or complete: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)        # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_object(obj, path: Path) -> None:
    buffer = io.BytesIO()
    paddle.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# State that is not in the model: RNGs, optimizer accumulators under stable names.

def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])


def _param_names(model: nn.Layer) -> list[tuple[str, str]]:
    """(paddle's generated name, structured name) per parameter, longest generated name first."""
    pairs = [(p.name, n) for n, p in model.named_parameters()]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def optimizer_state(optimizer, model: nn.Layer) -> dict:
    """optimizer.state_dict() with accumulators keyed by structured names (encoder.conv1.weight_velocity_0)
    instead of paddle's per-process generated names (conv2d_0.w_0_velocity_0)."""
    pairs = _param_names(model)
    out = {}
    for key, value in optimizer.state_dict().items():
        for generated, structured in pairs:
            if key.startswith(generated + "_"):
                key = structured + key[len(generated):]
                break
        out[key] = value
    return out


def load_optimizer_state(optimizer, model: nn.Layer, state: dict) -> None:
    pairs = sorted(((n, p.name) for n, p in model.named_parameters()), key=lambda pair: -len(pair[0]))
    renamed = {}
    for key, value in state.items():
        for structured, generated in pairs:
            if key.startswith(structured + "_"):
                key = generated + key[len(structured):]
                break
        renamed[key] = value
    optimizer.set_state_dict(renamed)


# ---------------------------------------------------------------------------------------------

def checkpoint_path(directory: Path, epoch: int, global_step: int) -> Path:
    return Path(directory) / f"epoch_{epoch:03d}_step_{global_step:08d}{SUFFIX}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first (by global step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write `state` atomically (retention: trainer.guard.Retention)."""
    path = checkpoint_path(directory, state["epoch"], state["global_step"])
    save_object(state, path)
    return path


def host_copy(obj, memo: dict | None = None):
    """A copy of a nested state (dicts, lists, tuples of tensors, arrays and plain values) in host
    memory, which training can no longer change. Tensors keep their names, so the file written from
    the copy is byte for byte the one the state itself gives; a tensor met twice is copied once."""
    memo = {} if memo is None else memo
    if isinstance(obj, paddle.Tensor):
        if id(obj) not in memo:
            # .cpu() copies from a device but returns a CPU tensor itself, so that one is cloned
            copy = obj.detach().clone() if obj.place.is_cpu_place() else obj.detach().cpu()
            copy.name = obj.name
            memo[id(obj)] = copy
        return memo[id(obj)]
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return type(obj)((key, host_copy(value, memo)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(value, memo) for value in obj)
    return obj                  # numbers, strings, RNG states: new objects that nothing changes


class CheckpointWriter:
    """Writes checkpoints in a background thread. save() copies the state (and the weights files
    written with it) to host memory, which is all the training loop waits for; the thread writes
    the checkpoint atomically, then the weights files, then calls `after(path)`. One write at a
    time: save() first waits for the one under way. wait() returns when nothing is being written
    and raises the error of a write that failed."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, directory: Path, state: dict, files: dict | None = None, after=None) -> Path:
        """Write `state` as a checkpoint in `directory` and {path: state} `files`; returns the
        checkpoint's path (complete once wait() returns)."""
        self.wait()
        path = checkpoint_path(directory, state["epoch"], state["global_step"])
        memo = {}
        todo = [(path, host_copy(state, memo))] + [(Path(p), host_copy(s, memo))
                                                   for p, s in (files or {}).items()]
        # Not a daemon: an interpreter that exits still finishes the write first.
        self._thread = threading.Thread(target=self._write, args=(todo, after, path),
                                        name="simsiam-checkpoint")
        self._thread.start()
        return path

    def _write(self, todo, after, path) -> None:
        try:
            for target, state in todo:
                save_object(state, target)
            if after is not None:
                after(path)
        except BaseException as e:        # raised in the training thread by the next wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path: Path) -> dict:
    """Load and sanity-check one checkpoint; ValueError with a one-line reason if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = paddle.load(str(path))
    except Exception as e:                    # truncated or corrupt file: any unpickling error
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'corrupt'})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = ", ".join(k for k in REQUIRED if k not in (state if isinstance(state, dict) else {}))
        raise ValueError(f"checkpoint {path} is incomplete (missing {missing})")
    return state


def latest_valid_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; corrupt or truncated newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except ValueError as e:
            log.warning("WARNING: skipping %s; resuming from an older checkpoint if there is one", e)
    return None


def float32_state(state: dict) -> dict:
    """Floating tensors as float32: AMP O2 trains float16/bfloat16 weights, and what a run exports
    must load into a float32 model (the linear probe, paddle.vision, PASSL)."""
    low = (paddle.float16, paddle.bfloat16)
    return {k: v.astype("float32") if v.dtype in low else v for k, v in state.items()}


def encoder_state(model: nn.Layer) -> dict:
    """The backbone's weights under paddle.vision ResNet names (conv1.weight, layer1.0.bn1._mean, ...),
    without fc, in float32: what a linear probe (ours or PASSL's) loads."""
    return float32_state({k: v for k, v in model.encoder.state_dict().items() if not k.startswith("fc.")})


def export_encoder(model: nn.Layer, path: Path) -> None:
    save_object(encoder_state(model), path)
