"""Fixtures for the data pipeline tests: small real image folders."""

import numpy as np
import pytest
from helpers.prereqs import unavailable
from PIL import Image

from trainer.data import fashion_mnist


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory):
    """A real Fashion-MNIST ImageFolder: 60 train, 20 val images."""
    if not (fashion_mnist.source_dir() / "train-images-idx3-ubyte.gz").is_file():
        unavailable("Debian package dataset-fashion-mnist is not installed")
    return fashion_mnist.write_image_folder(tmp_path_factory.mktemp("fmnist"), 60, 20, seed=0)


@pytest.fixture
def write_folder():
    """write_folder(root, {class_name: count}, size=(w, h)): an ImageFolder of random-noise JPEGs."""
    return _write_folder


def _write_folder(root, counts, size=(40, 30), fmt="JPEG", seed=0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}", fmt)
    return root


@pytest.fixture
def torchvision_functional():
    """torchvision's functional transforms (the reference implementation), or skip/fail."""
    try:
        import torchvision.transforms.functional as F
    except ImportError:
        unavailable("torchvision is not installed (pip install -e '.[torch]')")
    return F
