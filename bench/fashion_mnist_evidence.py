"""Evidence on real data at CPU scale: does SimSiam pretraining beat a random encoder?

Runs, with the shipped configs and the real `simsiam-train` CLI:
  1. a Fashion-MNIST ImageFolder (PNG, 32x32) from Debian's dataset-fashion-mnist;
  2. SimSiam pretraining (simsiam_cifar_resnet18_fmnist_pt_cpu.yaml: width-8 CIFAR-stem ResNet-18);
  3. the same linear probe (simsiam_cifar_resnet18_fmnist_lp_cpu.yaml) on three frozen inputs:
     the pretrained encoder, the same encoder randomly initialised, and raw pixels;
  4. as a cross-check, scikit-learn logistic regression on standardized features of the same three
     (the method of the PyTorch reference in the issue).
Prints a markdown table with top-1 on the validation images, and wall/CPU seconds per stage.

    python bench/fashion_mnist_evidence.py OUT_DIR [--train 5000 --val 2000 --pretrain-epochs N]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "trainer" / "configs"
PRETRAIN = CONFIGS / "simsiam_cifar_resnet18_fmnist_pt_cpu.yaml"
PROBE = CONFIGS / "simsiam_cifar_resnet18_fmnist_lp_cpu.yaml"


def timed(label: str, argv: list[str], timings: dict, done: Path | None = None) -> None:
    """Run one stage, timing it; skipped when `done` exists (a rerun continues where it stopped)."""
    print(f"$ {' '.join(argv)}", flush=True)
    if done is not None and done.exists():
        print(f"[{label}] already done ({done}), skipped", flush=True)
        return
    wall = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timings[label] = {"wall_s": round(time.monotonic() - wall, 1),
                      "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}
    print(f"[{label}] wall {timings[label]['wall_s']} s, CPU {timings[label]['cpu_s']} s", flush=True)


PROCS = 2  # CPU processes per run, as the quick start runs them (the configs' batches are per process)


def train_cmd(config: Path, log_dir: Path, *overrides: str) -> list[str]:
    trainer = Path(sys.executable).with_name("simsiam-train")
    args = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(PROCS),
            "--log_dir", str(log_dir), str(trainer), "-c", str(config)]
    for item in overrides:
        args += ["-o", item]
    return args


def logistic_regression(data: Path, model_name: str, weights: str | None) -> float:
    """Top-1 of sklearn's logistic regression on standardized frozen features (no augmentation)."""
    import numpy as np
    import paddle
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from trainer.config import load_config
    from trainer.data import build_eval_loader
    from trainer.engine.linear_probe import build_probe
    from trainer.sections import Config

    config = Config.of(load_config(PROBE, [f"Model.name={model_name}"]))
    model = build_probe(config.model, weights, with_head=False)
    model.fc = paddle.nn.Identity()
    model.eval()
    section = config.eval_data
    features = {}
    for split in ("train", "val"):
        dataset = dataclasses.replace(section.dataset, root=str(data / split))
        loader = build_eval_loader(dataclasses.replace(section, dataset=dataset), rank=0, world_size=1)
        xs, ys = [], []
        with paddle.no_grad():
            for views, labels in loader:
                xs.append(model(loader.to_tensor(views[0])).numpy())
                ys.append(labels)
        loader.close()
        features[split] = (np.concatenate(xs), np.concatenate(ys))
    scaler = StandardScaler().fit(features["train"][0])
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(features["train"][0]), features["train"][1])
    return float(clf.score(scaler.transform(features["val"][0]), features["val"][1]))


def cached_logreg(probe_dir: Path, data: Path, model_name: str, weights: str | None, timings: dict,
                  key: str) -> float:
    """logistic_regression() once per probe directory (kept in logreg.json for reruns)."""
    cache = probe_dir / "logreg.json"
    if cache.exists():
        return json.loads(cache.read_text())["top1"]
    start = time.monotonic()
    top1 = logistic_regression(data, model_name, weights)
    timings[f"logreg {key}"] = {"wall_s": round(time.monotonic() - start, 1)}
    cache.write_text(json.dumps({"top1": top1, "seconds": timings[f"logreg {key}"]["wall_s"]}) + "\n")
    return top1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--no-logreg", action="store_true", help="skip the scikit-learn cross-check")
    args = parser.parse_args()
    out = args.out.resolve()
    data = out / "fmnist"
    timings: dict = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    timed("data", [sys.executable, "-m", "trainer.data.fashion_mnist", str(data),
                   "--train", str(args.train), "--val", str(args.val)], timings, data / "val")
    roots = [f"DataLoader.Train.dataset.root={data / 'train'}"]
    pretrain = roots + [f"Global.output_dir={out / 'pretrain'}"]
    if args.pretrain_epochs:
        pretrain.append(f"Global.epochs={args.pretrain_epochs}")
    timed("pretrain", train_cmd(PRETRAIN, out / "logs" / "pretrain", *pretrain), timings,
          out / "pretrain" / "done")
    (out / "pretrain" / "done").touch()

    encoder = out / "pretrain" / "encoder.pdparams"
    rows = [("simsiam", "SimSiam-pretrained encoder", "cifar_resnet18_linearprobe", str(encoder)),
            ("random", "random-init encoder", "cifar_resnet18_linearprobe", None),
            ("raw", "raw pixels", "pixels_linearprobe", None)]
    results = []
    for key, label, model_name, weights in rows:
        overrides = roots + [f"DataLoader.Eval.dataset.root={data / 'val'}", f"Model.name={model_name}",
                             f"Global.output_dir={out / ('probe_' + key)}"]
        if weights:
            overrides.append(f"Global.pretrained_model={weights}")
        timed(f"probe {key}", train_cmd(PROBE, out / "logs" / key, *overrides), timings,
              out / ("probe_" + key) / "eval.json")
        evaluation = json.loads((out / ("probe_" + key) / "eval.json").read_text())
        row = {"input": label, "probe_top1": evaluation["last"]["top1"],
               "probe_top5": evaluation["last"]["top5"], "best_top1": evaluation["best"]["top1"]}
        if not args.no_logreg:
            row["logreg_top1"] = cached_logreg(out / ("probe_" + key), data, model_name, weights,
                                               timings, key)
        results.append(row)

    print(f"\nFashion-MNIST, {args.train} train / {args.val} val images, run {started}\n")
    print("| frozen input | linear probe top-1 (LARS, last epoch) | top-5 | logistic regression top-1 |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['input']} | {r['probe_top1']:.3f} | {r['probe_top5']:.3f} | "
              f"{r.get('logreg_top1', float('nan')):.3f} |")
    print()
    for label, t in timings.items():
        print(f"{label:>28}: wall {t['wall_s']:7.1f} s"
              + (f", CPU {t['cpu_s']:7.1f} s" if "cpu_s" in t else ""))
    (out / "evidence.json").write_text(json.dumps({"started": started, "train": args.train, "val": args.val,
                                                   "results": results, "timings": timings}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
