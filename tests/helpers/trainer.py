"""``simsiam-train`` run as a user runs it, on tiny models and tiny image folders (the trainer and
fault tests)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.paths import REPO

TINY_MODEL = ["-o", "Model.name=simsiam_cifar_resnet18_pretrain", "-o", "Model.width=4",
              "-o", "Model.dim=16", "-o", "Model.pred_dim=8"]


def write_pngs(root: Path, classes=("a", "b"), per_class=8, size=(12, 10), seed=0) -> Path:
    """A tiny ImageFolder of random RGB PNGs."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def tiny_run_args(output_dir, image_root, *extra):
    """simsiam-train arguments for a seconds-long CPU run of the shipped small config."""
    return ["-c", str(REPO / "trainer/configs/simsiam_cifar_resnet18_cpu.yaml"), *TINY_MODEL,
            "-o", f"Global.output_dir={output_dir}", "-o", f"DataLoader.Train.dataset.root={image_root}",
            "-o", "DataLoader.Train.sampler.batch_size=4", "-o", "Global.print_batch_step=1",
            "-o", "Global.epochs=2", *extra]


def run_cli(args, timeout=240, env=None, **kw):
    """Run `simsiam-train ARGS` in a fresh process (as a user would)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO, **kw)


class HostReads:
    """Counts reads of tensor values back to the host (numpy(), float(), int(), item(), tolist()):
    each one waits for the device to finish all queued work."""

    METHODS = ("numpy", "__float__", "__int__", "item", "tolist")

    def __init__(self, monkeypatch):
        import paddle

        self.count = 0
        for name in self.METHODS:
            original = getattr(paddle.Tensor, name)
            monkeypatch.setattr(paddle.Tensor, name, self._counting(original))

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return read
