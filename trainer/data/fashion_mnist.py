"""Write a balanced Fashion-MNIST subset as an ImageFolder (train/ and val/, 32x32 PNG).

The images come from Debian's ``dataset-fashion-mnist`` package (the original idx ``.gz`` files),
so tests and the quick start use real data without any download. Usage::

    python -m trainer.data.fashion_mnist OUT --train 5000 --val 2000 [--seed 0]
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
# Folder names keep Fashion-MNIST's label order under ImageFolder's alphabetical class sort.
CLASSES = [f"{i}_{name}" for i, name in enumerate(
    ["tshirt_top", "trouser", "pullover", "dress", "coat",
     "sandal", "shirt", "sneaker", "bag", "ankle_boot"])]
PAD = 2  # 28x28 -> 32x32, the CIFAR-sized input the small configs use


def source_dir() -> Path:
    return Path(os.environ.get("SIMSIAM_FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (big-endian header: magic, dims) into a uint8 array."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file {path} not found; "
                        "install it with: apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of the 'train' or 't10k' split."""
    root = source_dir()
    return (_read_idx(root / f"{split}-images-idx3-ubyte.gz"),
            _read_idx(root / f"{split}-labels-idx1-ubyte.gz"))


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n samples with class counts differing by at most one."""
    num_classes = len(CLASSES)
    per_class = [n // num_classes + (c < n % num_classes) for c in range(num_classes)]
    picked = []
    for c, k in enumerate(per_class):
        pool = np.flatnonzero(labels == c)
        if k > len(pool):
            raise DataError(f"asked for {n} images but class {CLASSES[c]} has only {len(pool)}")
        picked.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def _write_split(out: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        padded = np.pad(images[i], PAD)
        Image.fromarray(padded).save(out / CLASSES[labels[i]] / f"{i:05d}.png")


def write_image_folder(out_dir, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write out_dir/train/<class>/*.png (from the training split) and out_dir/val/<class>/*.png
    (from the test split), balanced over the 10 classes, chosen deterministically by seed."""
    if n_train < 0 or n_val < 0:
        raise DataError("--train and --val must be >= 0")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, subdir, n in (("train", "train", n_train), ("t10k", "val", n_val)):
        if n == 0:
            continue
        images, labels = load_split(split)
        _write_split(out / subdir, images, labels, balanced_subset(labels, n, rng))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.data.fashion_mnist",
        description="Write a balanced Fashion-MNIST subset as an ImageFolder (32x32 PNG).")
    parser.add_argument("out", help="output directory (train/ and val/ are created in it)")
    parser.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--val", type=int, default=2000, help="validation images (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = write_image_folder(args.out, args.train, args.val, args.seed)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train + {args.val} val images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
