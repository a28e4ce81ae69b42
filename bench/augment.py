"""Two-view SimSiam augmentation throughput: ours vs the torchvision pipeline, per core.

Both pipelines read the same JPEG files from an ImageFolder and apply the shipped ImageNet
recipe (two views of RandomResizedCrop 224 bicubic scale [0.2, 1], ColorJitter p 0.8,
RandomGrayscale 0.2, Gaussian blur p 0.5 sigma [0.1, 2], flip, ToTensor + Normalize).
torchvision's is the reference implementation (PIL decode, torchvision transforms, a PIL
Gaussian blur, default collate of float tensors). Ours hands uint8 batches over and normalizes
on the device, as the trainer does.

Each measurement runs in a fresh single-threaded process (one core, no loader workers); the
pipelines alternate for several rounds and the best round of each counts, which keeps noise from
other processes on a shared machine out of the ratio. Images/s per CPU-second is printed too.

    python bench/augment.py [--images 256] [--rounds 3] [--width 500 --height 375]

The decode-only figure (read + full-size decode of each file, one thread) is the per-core limit
any pipeline must stay under; ours is reported as a share of it.

The images are synthetic: colour 1/f ("pink") noise textures, whose spectrum resembles natural
photos, saved as JPEG quality 90 (about 120 KB at 500x375, close to ImageNet's average file).
Needs torch and torchvision (the `torch` extra) for the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "trainer" / "configs" / "simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml"
BATCH = 64


def pink_noise_image(rng, height, width) -> np.ndarray:
    spectrum = np.fft.rfft2(rng.standard_normal((3, height, width)))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    spectrum /= np.maximum(np.hypot(fx, fy), 1.0 / max(height, width))
    x = np.fft.irfft2(spectrum, s=(height, width))
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    tint = rng.uniform(60, 190, (3, 1, 1))
    return np.clip(tint + 45 * x, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def write_images(root: Path, n: int, width: int, height: int) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pink_noise_image(rng, height, width)).save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total // n


def recipe_section(root: Path, workers: int = 0) -> dict:
    section = yaml.safe_load(RECIPE.read_text())["DataLoader"]["Train"]
    section["dataset"]["root"] = str(root)
    section["sampler"]["batch_size"] = BATCH
    section["loader"]["num_workers"] = workers
    return section


# ---------------------------------------------------------------------------------------------
# The two pipelines (bench/loader_scaling.py runs them with loader workers too)


def ours_loader(root: Path, workers: int = 0):
    from trainer.data import build_train_loader

    loader = build_train_loader(recipe_section(root, workers), rank=0, world_size=1, seed=0)
    loader.set_epoch(1)
    return loader


def torchvision_loader(root: Path, workers: int = 0):
    import torch
    from PIL import ImageFilter
    from torchvision import datasets
    from torchvision import transforms as T

    torch.set_num_threads(1)

    class PILGaussianBlur:  # the reference recipe's blur: PIL's, sigma uniform in [0.1, 2]
        def __call__(self, image):
            return image.filter(ImageFilter.GaussianBlur(radius=float(np.random.uniform(0.1, 2.0))))

    one_view = T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PILGaussianBlur()], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    dataset = datasets.ImageFolder(str(root), transform=TwoViews(one_view))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


class TwoViews:
    """Two independent views of one image (a class, not a lambda: loader workers pickle it)."""

    def __init__(self, view):
        self.view = view

    def __call__(self, image):
        return [self.view(image), self.view(image)]


def decode_only(root: Path) -> tuple[int, float, float]:
    """The floor under any pipeline: read and decode every file at full size, nothing else (the
    fastest decoder we have, libjpeg-turbo through simplejpeg, one thread)."""
    import simplejpeg

    files = sorted(root.glob("*/*.jpg"))
    wall, cpu = time.perf_counter(), time.process_time()
    for path in files:
        simplejpeg.decode_jpeg(path.read_bytes(), "RGB")
    return len(files), time.perf_counter() - wall, time.process_time() - cpu


# ---------------------------------------------------------------------------------------------
# One measurement (runs in a child process)


def run_ours(root: Path) -> tuple[int, float, float]:
    loader = ours_loader(root)
    next(iter(loader))  # warm-up: imports, first allocations
    loader.set_epoch(2)
    return _timed(loader)


def run_torchvision(root: Path) -> tuple[int, float, float]:
    loader = torchvision_loader(root)
    next(iter(loader))
    return _timed(loader)


def _timed(loader) -> tuple[int, float, float]:
    images = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _, labels in loader:
        images += len(labels)
    return images, time.perf_counter() - wall, time.process_time() - cpu


def child(which: str, root: str) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    run = {"ours": run_ours, "torchvision": run_torchvision, "decode": decode_only}[which]
    images, wall, cpu = run(Path(root))
    print(json.dumps({"images": images, "wall": wall, "cpu": cpu}))


def measure(which: str, root: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--child", which, str(root)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{which} measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.exit("torchvision is needed for the reference: pip install -e '.[torch]'")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mean_bytes = write_images(root, args.images, args.width, args.height)
        print(f"{args.images} JPEGs {args.width}x{args.height} (synthetic 1/f colour noise, q90, "
              f"mean {mean_bytes // 1024} KB); two 224x224 views each; batch {BATCH}; "
              f"1 process, 1 thread per measurement; {os.cpu_count()} cores on this machine")
        rates = {"ours": [], "torchvision": [], "decode": []}
        for r in range(args.rounds):
            for which in ("torchvision", "ours", "decode"):
                m = measure(which, root)
                rates[which].append((m["images"] / m["wall"], m["images"] / m["cpu"]))
                print(f"  round {r + 1} {which:12s} {rates[which][-1][0]:7.1f} images/s  "
                      f"({rates[which][-1][1]:7.1f} per CPU-second)")
        best = {w: tuple(max(col) for col in zip(*rates[w], strict=True)) for w in rates}
        (ours, ours_cpu), (ref, ref_cpu), (_, decode_cpu) = best["ours"], best["torchvision"], best["decode"]
        print(f"\nimages/s per core (best of {args.rounds} rounds):")
        print(f"  torchvision {ref:7.1f}   ({ref_cpu:.1f} per CPU-second)")
        print(f"  ours        {ours:7.1f}   ({ours_cpu:.1f} per CPU-second)")
        print(f"  ratio       {ours / ref:7.2f}x  ({ours_cpu / ref_cpu:.2f}x per CPU-second)")
        print(f"  decode only {decode_cpu:7.1f} per CPU-second (full-size decode, nothing else): "
              f"ours reaches {100 * ours_cpu / decode_cpu:.0f}% of it")


if __name__ == "__main__":
    main()
