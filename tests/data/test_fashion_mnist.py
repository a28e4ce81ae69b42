"""The Fashion-MNIST ImageFolder writer that the quick start and the end-to-end tests use."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data import fashion_mnist


def _listing(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_balanced_padded_and_deterministic(fmnist_root, tmp_path):
    train = _listing(fmnist_root / "train")
    assert len(train) == 60 and len(_listing(fmnist_root / "val")) == 20
    assert set(Counter(p.split("/")[0] for p in train).values()) == {6}
    image = np.asarray(Image.open(fmnist_root / "train" / train[0]))
    assert image.shape == (32, 32)
    assert image[:2].max() == 0 and image[:, -2:].max() == 0  # the 2-pixel padding
    again = fashion_mnist.write_image_folder(tmp_path / "again", 60, 20, seed=0)
    assert _listing(again / "train") == train
    other = fashion_mnist.write_image_folder(tmp_path / "other", 60, 0, seed=1)
    assert _listing(other / "train") != train


def test_cli_missing_package_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.data.fashion_mnist", str(tmp_path / "out"), "--train", "10"],
        env={"SIMSIAM_FASHION_MNIST_DIR": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in proc.stderr
