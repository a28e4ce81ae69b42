"""Pretrained weights for the linear probe (Global.pretrained_model), in every form users bring them.

Accepted (the key names decide, not the file name):
  (a) encoder-only state dicts with paddle.vision ResNet names (conv1.weight, bn1._mean, layer1.0...):
      what pretraining exports as encoder.pdparams and what PASSL releases;
  (b) a full SimSiam pretrain state dict (encoder.*, predictor.*; PASSL's and ours): `encoder.` is
      stripped, the projector (encoder.fc.*) and the predictor are dropped;
  (c) this project's checkpoints (a dict holding the model's state dict next to optimizer state etc.);
  (d) an http(s) URL of any of these, downloaded once into a cache (`#sha256=<hex>` checks the bytes).
A path may be given with or without its `.pdparams` suffix, as in PASSL.

Whatever the form, the keys must match the model exactly: a missing, unexpected or wrongly shaped
backbone tensor is an error that lists them, so a probe never trains on silently random weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import numpy as np

HEAD_PREFIX = "fc."
_LISTED = 8  # names shown per category in an error line


class WeightsError(ValueError):
    """Weights that cannot be used: missing file, failed download, wrong format or keys. One line."""


# ---------------------------------------------------------------- locating and downloading

def cache_dir() -> Path:
    """Where downloaded weights live: $SIMSIAM_CACHE_DIR, else ~/.cache/simsiam/weights."""
    env = os.environ.get("SIMSIAM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "simsiam" / "weights"


def is_url(spec: str) -> bool:
    return urllib.parse.urlparse(str(spec)).scheme in ("http", "https")


def resolve(spec: str | os.PathLike) -> Path:
    """A local file for `spec`: the path itself, the path plus `.pdparams`, or a cached download."""
    spec = str(spec)
    if is_url(spec):
        return download(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".pdparams")
    if with_suffix.is_file():
        return with_suffix
    if path.is_dir():
        raise WeightsError(f"pretrained model {path} is a directory; give the .pdparams file in it")
    raise WeightsError(f"pretrained model not found: {path} (also tried {with_suffix.name})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, directory: Path | None = None) -> Path:
    """Download `url` into the cache once; later calls (and other ranks) reuse the file.

    The bytes go to a temporary file next to the target and are renamed into place only after the
    size (Content-Length) and, when the URL ends in `#sha256=<hex>`, the checksum are right, so the
    cache never holds a half file. A lock file serialises concurrent downloads of the same URL.
    """
    address, _, fragment = url.partition("#")
    expected_sha = None
    if fragment:
        if not fragment.startswith("sha256="):
            raise WeightsError(f"unsupported URL fragment '#{fragment}' (only #sha256=<hex> is understood)")
        expected_sha = fragment[len("sha256="):].lower()
    name = Path(urllib.parse.urlparse(address).path).name or "weights.pdparams"
    # Same file name from two different URLs must not collide: one sub-folder per URL.
    target = (directory or cache_dir()) / hashlib.sha1(address.encode()).hexdigest()[:12] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            if expected_sha is None or _sha256(target) == expected_sha:
                return target
            print(f"cached {target} does not match sha256 {expected_sha}; downloading again", file=sys.stderr)
            target.unlink()
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                received, total = _fetch(address, out, name)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and received != total:
                raise WeightsError(f"download of {address} is incomplete: {received} of {total} bytes")
            if expected_sha is not None:
                actual = _sha256(Path(part))
                if actual != expected_sha:
                    raise WeightsError(f"download of {address} has sha256 {actual}, expected {expected_sha}")
            os.replace(part, target)
        finally:
            if os.path.exists(part):
                os.unlink(part)
    return target


def _fetch(url: str, out, name: str) -> tuple[int, int | None]:
    """Stream `url` into `out` with a progress line on stderr; returns (bytes received, expected)."""
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as e:
        raise WeightsError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received, start, shown = 0, time.monotonic(), 0.0
        while True:
            try:
                chunk = response.read(1 << 20)
            except Exception as e:  # connection dropped mid-body: http.client.IncompleteRead, resets
                raise WeightsError(f"download of {url} failed after {received} bytes: {e!r}") from None
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            now = time.monotonic()
            if now - shown >= 0.5:
                shown = now
                _progress(name, received, total, now - start, end="\r")
        _progress(name, received, total, time.monotonic() - start, end="\n")
    return received, total


def _progress(name: str, received: int, total: int | None, seconds: float, end: str) -> None:
    rate = received / max(seconds, 1e-6)
    line = f"downloading {name}: {received / 1e6:.1f}"
    if total:
        eta = (total - received) / max(rate, 1e-6)
        line += f"/{total / 1e6:.1f} MB ({100 * received / total:.0f}%) {rate / 1e6:.1f} MB/s ETA {eta:.0f}s"
    else:
        line += f" MB {rate / 1e6:.1f} MB/s"
    print(line, end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- reading and normalising

def read_state_dict(spec: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read any accepted form and return backbone tensors with paddle.vision names (fc.* kept if any)."""
    path = resolve(spec)
    import paddle  # the launcher imports nothing from here at module level

    try:
        loaded = paddle.load(str(path), return_numpy=True)
    except Exception as e:
        raise WeightsError(
            f"{path} is not a paddle state dict ({type(e).__name__}); PyTorch checkpoints are "
            "imported with `simsiam-train convert`") from None
    return normalize(loaded, str(path))


def _model_part(loaded: dict) -> dict:
    """(c) checkpoints: the model's state dict inside a dict that also holds optimizer state etc."""
    for key in ("model", "state_dict"):
        inner = loaded.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, np.ndarray) for v in inner.values()):
            return inner
    return loaded


def normalize(loaded, source: str = "state dict") -> dict[str, np.ndarray]:
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{source} holds no state dict (got {type(loaded).__name__})")
    state = _model_part(loaded)
    tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise WeightsError(f"{source} holds no tensors (keys: {', '.join(list(state)[:_LISTED])})")
    names = list(tensors)
    if any(k.startswith("module.") for k in names) or any(k.endswith("running_mean") for k in names):
        raise WeightsError(
            f"{source} looks like a PyTorch state dict (module.* / running_mean names); "
            "import it first with `simsiam-train convert`")
    if any(k.startswith("encoder.") for k in names):
        # (b) full SimSiam model: the encoder minus its projector; the predictor is not a backbone part.
        return {k[len("encoder."):]: v for k, v in tensors.items()
                if k.startswith("encoder.") and not k.startswith("encoder." + HEAD_PREFIX)}
    return tensors


# ---------------------------------------------------------------- loading into a model

def load_into(model, spec: str | os.PathLike, with_head: bool = False) -> list[str]:
    """Load weights into a backbone-with-fc model (the linear probe).

    with_head=False: the backbone only; fc.* in the file is ignored and the model's fc stays as
    initialised (training a probe). with_head=True: fc too (evaluating a trained probe).
    Returns the loaded names; raises WeightsError listing every mismatch.
    """
    source = resolve(spec)
    state = read_state_dict(source)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not with_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
        expected = {k: s for k, s in expected.items() if not k.startswith(HEAD_PREFIX)}
    check_keys(expected, state, str(source))
    # A checkpoint of an AMP O2 run holds float16 weights; the model here decides the dtype.
    import paddle
    float32 = {k for k, v in model.state_dict().items() if v.dtype == paddle.float32}
    state = {k: v.astype(np.float32) if k in float32 and v.dtype == np.float16 else v
             for k, v in state.items()}
    with warnings.catch_warnings():  # paddle warns about the fc it skips; check_keys vetted the rest
        warnings.simplefilter("ignore")
        model.set_state_dict(state)
    return sorted(state)


def check_keys(expected: dict[str, tuple], state: dict[str, np.ndarray], source: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k} {list(state[k].shape)} vs model {list(expected[k])}"
                        for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > _LISTED else ""
            shown = ", ".join(items[:_LISTED]) + more
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{source} does not fit the model: " + "; ".join(problems))
