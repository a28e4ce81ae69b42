"""Time to the first batch on an ImageNet-sized ImageFolder, with and without the file index.

    python bench/startup.py [--classes 1000 --per-class 1281] [--workers N] [--rounds 2] [--dir DIR]

Builds a tree shaped like ImageNet-1k's train split: 1,000 class folders of 1,281 files each
(1.28 M entries) under a temporary folder in DIR, deleted afterwards. Each class holds one real
JPEG (500x375, q90) and hard links to it, so the tree costs 1,000 files of disk space but every
entry decodes. Folders are dated back a minute, as a dataset copied a while ago would be (folders
changed in the last seconds are not indexed).

Each measurement is a fresh process that builds the shipped recipe's training loader (batch 64,
rank r of 8) and takes its first batch:

  no index     a rank that finds no index scans all class folders (as every rank did before)
  first start  rank 0 without an index: scans and writes ROOT/.simsiam-index
  with index   any rank once the index exists: reads it and checks 1,001 folder mtimes

The scan here runs against the operating system's warm directory cache of a local disk; on a
network filesystem every folder listing is a round trip to the server, the index one file read.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "trainer" / "configs" / "simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml"
WORLD = 8


def build_tree(root: Path, classes: int, per_class: int) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from augment import pink_noise_image
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        first = folder / f"n{c:08d}_0.JPEG"
        Image.fromarray(pink_noise_image(rng, 375, 500)).save(first, "JPEG", quality=90)
        for i in range(1, per_class):
            os.link(first, folder / f"n{c:08d}_{i}.JPEG")
    past = time.time() - 60
    for folder in [root, *root.iterdir()]:
        os.utime(folder, (past, past))


def child(root: str, rank: int, workers: int) -> None:
    started = time.perf_counter()
    from trainer.data import build_train_loader

    imported = time.perf_counter()
    section = yaml.safe_load(RECIPE.read_text())["DataLoader"]["Train"]
    section["dataset"]["root"] = root
    section["loader"]["num_workers"] = workers
    loader = build_train_loader(section, rank=rank, world_size=WORLD, seed=0)
    built = time.perf_counter()
    views, labels = next(iter(loader))
    first = time.perf_counter()
    loader.close()
    print(json.dumps({"images": loader.num_samples, "import": imported - started, "list": built - imported,
                      "first_batch": first - imported, "batch": len(labels)}))


def measure(root: Path, rank: int, workers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), str(rank), str(workers)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        sys.exit(f"measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1281)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None,
                        help="where the tree is built (default: the system's temporary folder)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), int(args.child[2]))

    from trainer.data import index

    tmp = Path(tempfile.mkdtemp(prefix="simsiam-startup-", dir=args.dir))
    try:
        root = tmp / "train"
        started = time.perf_counter()
        build_tree(root, args.classes, args.per_class)
        print(f"{args.classes} classes x {args.per_class} files = {args.classes * args.per_class:,} entries "
              f"in {root} (built in {time.perf_counter() - started:.0f} s); "
              f"recipe loader, batch 64, rank r of {WORLD}, {args.workers} workers; "
              f"{os.cpu_count()} cores on this machine")
        kept = root / index.IN_ROOT
        results = {"no index": [], "first start": [], "with index": []}
        for r in range(args.rounds):
            kept.unlink(missing_ok=True)
            results["no index"].append(measure(root, 1, args.workers))
            results["first start"].append(measure(root, 0, args.workers))
            assert kept.is_file(), "rank 0 wrote no index"
            results["with index"].append(measure(root, 1, args.workers))
            for name, rows in results.items():
                m = rows[-1]
                print(f"  round {r + 1} {name:12s} file list {m['list']:6.2f} s   "
                      f"first batch {m['first_batch']:6.2f} s"
                      f"   ({m['images']:,} images; imports {m['import']:.2f} s)")
        print(f"  index file: {kept.stat().st_size / 2**20:.1f} MB")
        best = {name: min(rows, key=lambda m: m["first_batch"]) for name, rows in results.items()}
        print(f"\nseconds to the first batch per rank (best of {args.rounds} rounds; file list in brackets):")
        for name, m in best.items():
            print(f"  {name:12s} {m['first_batch']:6.2f}  ({m['list']:.2f})")
        print("  ratio with/without index: "
              f"{best['with index']['first_batch'] / best['no index']['first_batch']:.2f} "
              f"(file list: {best['with index']['list'] / best['no index']['list']:.2f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
