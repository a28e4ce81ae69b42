"""Weight interchange with PyTorch: the official SimSiam checkpoints in, torchvision ResNets out.

    simsiam-train convert torch-pretrain checkpoint_0099.pth.tar OUT_DIR
        official pretraining checkpoint -> OUT_DIR/simsiam.pdparams (full model, encoder.* / predictor.*)
        and OUT_DIR/encoder.pdparams (paddle.vision names, no fc: what the linear probe loads)
    simsiam-train convert torch-lincls model_best.pth.tar OUT.pdparams
        official linear classifier -> a trained probe (paddle.vision names with fc.*)
    simsiam-train convert to-torch encoder.pdparams OUT.pth
        any weights the probe accepts -> a torchvision ResNet state dict (fc.* only if the input has it)

The two layouts differ only in names and Linear orientation: torch BatchNorm's running_mean /
running_var are paddle's _mean / _variance (num_batches_tracked has no paddle counterpart), and
torch stores Linear weights [out, in] where paddle stores [in, out]. In a ResNet or the SimSiam
heads every 2-D tensor is a Linear weight, so the transposition is decided by rank alone.

torch is imported only here, inside the functions (optional extra: pip install '.[torch]').
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np

from trainer.weights import WeightsError, check_keys, read_state_dict

_TORCH_TO_PADDLE_BN = {"running_mean": "_mean", "running_var": "_variance"}
_PADDLE_TO_TORCH_BN = {v: k for k, v in _TORCH_TO_PADDLE_BN.items()}


class ConvertError(WeightsError):
    """The input is not the checkpoint the chosen conversion expects. One line."""


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("converting PyTorch weights needs torch: "
                           "pip install 'simsiam-job[torch]'") from None
    return torch


def _read_torch_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The state dict of a torch checkpoint as numpy, without the DataParallel `module.` prefix."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text advises loading with weights_only=False, which would run the file's code
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise ConvertError(f"{path} is not a PyTorch checkpoint (it does not unpickle as tensors and "
                               "plain values)") from None
        raise ConvertError(f"{path} holds Python objects ({found.group(1)}) besides tensors and plain "
                           "values; they are not loaded, since loading them could run code (save the "
                           "state_dict alone)") from None
    except Exception as e:
        raise ConvertError(f"{path} is not a PyTorch checkpoint: {type(e).__name__}: {e}"
                           .splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise ConvertError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict")
    state = loaded.get("state_dict", loaded)
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConvertError(f"{path} holds no tensors")
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}, loaded


def torch_to_paddle(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if leaf in _TORCH_TO_PADDLE_BN:
            key = f"{prefix}.{_TORCH_TO_PADDLE_BN[leaf]}"
        out[key] = np.ascontiguousarray(value.T if value.ndim == 2 else value, dtype=np.float32)
    return out


def paddle_to_torch(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in _PADDLE_TO_TORCH_BN:
            key = f"{prefix}.{_PADDLE_TO_TORCH_BN[leaf]}"
        out[key] = np.ascontiguousarray(value.T if value.ndim == 2 else value)
    return out


def _save_paddle(state: dict[str, np.ndarray], path: Path) -> None:
    import paddle

    _write_atomic(path, lambda tmp: paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, tmp))


def _write_atomic(path: Path, save) -> None:
    """save(tmp) to a temporary name, then rename: a crash never leaves a half file. The file gets
    the mode every other output of the trainer gets (0644 under the usual umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(tmp)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _arch(loaded: dict, state: dict[str, np.ndarray], prefix: str) -> str:
    """resnet18/34/50 from the checkpoint's 'arch' or, failing that, from the block structure."""
    arch = loaded.get("arch")
    if isinstance(arch, str) and arch in ("resnet18", "resnet34", "resnet50"):
        return arch
    if f"{prefix}layer1.0.conv3.weight" in state:
        return "resnet50"
    return "resnet34" if f"{prefix}layer3.5.conv1.weight" in state else "resnet18"


def import_torch_pretrain(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Official SimSiam pretraining checkpoint -> simsiam.pdparams + encoder.pdparams in out_dir."""
    state, loaded = _read_torch_state(checkpoint)
    if not any(k.startswith("encoder.") for k in state) or not any(k.startswith("predictor.") for k in state):
        raise ConvertError(f"{checkpoint} is not a SimSiam pretraining checkpoint "
                           "(expected module.encoder.* and module.predictor.* keys)")
    full = torch_to_paddle(state)
    dim, pred_dim = full["predictor.0.weight"].shape
    from trainer.models import build_model

    arch = _arch(loaded, full, "encoder.")
    model = build_model({"name": f"simsiam_{arch}_pretrain", "dim": int(dim), "pred_dim": int(pred_dim)})
    check_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, full, str(checkpoint))
    encoder = {k[len("encoder."):]: v for k, v in full.items()
               if k.startswith("encoder.") and not k.startswith("encoder.fc.")}
    out_dir = Path(out_dir)
    paths = {"model": out_dir / "simsiam.pdparams", "encoder": out_dir / "encoder.pdparams"}
    _save_paddle(full, paths["model"])
    _save_paddle(encoder, paths["encoder"])
    return paths


def import_torch_lincls(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Official linear-classifier checkpoint (module.conv1.weight ... module.fc.*) -> a probe .pdparams."""
    state, loaded = _read_torch_state(checkpoint)
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise ConvertError(f"{checkpoint} is not a ResNet classifier checkpoint "
                           "(expected module.conv1.weight ... module.fc.weight keys)")
    probe = torch_to_paddle(state)
    import paddle

    from trainer.models import build_backbone

    arch = _arch(loaded, probe, "")
    backbone = build_backbone(arch)
    backbone.fc = paddle.nn.Linear(backbone.feature_dim, probe["fc.weight"].shape[1])
    check_keys({k: tuple(v.shape) for k, v in backbone.state_dict().items()}, probe, str(checkpoint))
    out = Path(out)
    _save_paddle(probe, out)
    return out


def export_torchvision(weights: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Encoder (or probe) weights in any accepted form -> a torchvision ResNet state dict (.pth)."""
    torch = _torch()
    state = paddle_to_torch(read_state_dict(weights))
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    for key in list(tensors):
        if key.endswith(".running_mean"):  # torchvision's BatchNorm also carries this counter
            tensors[key[: -len("running_mean")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out = Path(out)
    _write_atomic(out, lambda tmp: torch.save(tensors, tmp))
    return out


DIRECTIONS = {
    "torch-pretrain": (import_torch_pretrain, "official SimSiam pretraining checkpoint -> OUT directory"),
    "torch-lincls": (import_torch_lincls, "official linear-classifier checkpoint -> OUT .pdparams"),
    "to-torch": (export_torchvision, "encoder/probe .pdparams -> torchvision state dict OUT .pth"),
}


def main(argv: list[str]) -> int:
    """simsiam-train convert DIRECTION INPUT OUTPUT; exit 2 with one line on bad input."""
    import sys
    import warnings

    warnings.filterwarnings("ignore", message="No ccache found")   # paddle's import-time notice

    from trainer.cli import _Parser

    parser = _Parser(prog="simsiam-train convert", description="Convert weights between the official "
                     "PyTorch SimSiam code / torchvision and this project (paddle).",
                     epilog="; ".join(f"{name}: {text}" for name, (_, text) in DIRECTIONS.items()))
    parser.add_argument("direction", choices=sorted(DIRECTIONS))
    parser.add_argument("input", help="checkpoint or weights file to read")
    parser.add_argument("output", help="where to write (a directory for torch-pretrain)")
    args = parser.parse_args(argv)
    try:
        written = DIRECTIONS[args.direction][0](args.input, args.output)
    except WeightsError as e:
        print(f"simsiam-train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:        # the output path: an existing directory, a missing or read-only parent
        print(f"simsiam-train: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    for path in (written.values() if isinstance(written, dict) else [written]):
        print(f"wrote {path}")
    return 0
