"""How the training loader scales with its workers: ours vs torch's DataLoader with the official
torchvision pipeline, on the same files, with the same worker counts, in one run.

    python bench/loader_scaling.py [--images 1024] [--workers 1,2,...] [--rounds 2]

Both run the shipped ImageNet recipe's two-view augmentation (bench/augment.py has the two
pipelines) at batch 64 over synthetic 500x375 JPEGs. Each measurement is a fresh process that
starts the loader, takes one batch (workers up, first allocations done) and then times the rest of
the epoch. Efficiency at N workers is images/s at N divided by N times images/s at 1 worker: 100%
is perfect scaling. The default worker counts go from 1 to every core of this machine; the main
process (which collates, or receives the batches) shares those cores.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import BATCH, REPO, ours_loader, torchvision_loader, write_images  # noqa: E402

LOADERS = {"ours": ours_loader, "torch": torchvision_loader}


def child(which: str, root: str, workers: int) -> None:
    loader = LOADERS[which](Path(root), workers)
    batches = iter(loader)
    next(batches)                       # workers started, first allocations made
    images, start = 0, time.perf_counter()
    for _, labels in batches:
        images += len(labels)
    print(json.dumps({"images": images, "wall": time.perf_counter() - start}))


def measure(which: str, root: Path, workers: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--child", which, str(root), str(workers)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{which} with {workers} workers failed:\n{out.stderr[-3000:]}")
    m = json.loads(out.stdout.strip().splitlines()[-1])
    return m["images"] / m["wall"]


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", default=",".join(map(str, sorted({1, *range(2, cores + 1, 2), cores}))),
                        help="comma-separated worker counts (default: 1 to every core)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.images, 500, 375)
        print(f"{args.images} JPEGs 500x375, two 224x224 views each, batch {BATCH}; {cores} cores; "
              f"load before: {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds")
        rates: dict[str, dict[int, float]] = {w: {} for w in LOADERS}
        for _ in range(args.rounds):
            for workers in counts:
                for which in LOADERS:
                    rate = measure(which, root, workers)
                    rates[which][workers] = max(rate, rates[which].get(workers, 0.0))
        print(f"\n{'workers':>8} {'ours img/s':>11} {'eff.':>6} "
              f"{'torch img/s':>12} {'eff.':>6} {'ours/torch':>11}")
        for workers in counts:
            ours, torch = rates["ours"][workers], rates["torch"][workers]
            eff = {w: rates[w][workers] / (workers * rates[w][counts[0]] / counts[0]) for w in LOADERS}
            print(f"{workers:>8} {ours:>11.1f} {eff['ours']:>6.0%} {torch:>12.1f} {eff['torch']:>6.0%} "
                  f"{ours / torch:>10.2f}x")


if __name__ == "__main__":
    main()
