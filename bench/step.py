"""Seconds per SimSiam ResNet-50 training step on the CPU: ours (paddle) vs the same model in torch.

    python bench/step.py [--steps 5] [--batch 16] [--size 112] [--threads N]

One step = two views of `batch` images at `size` px through encoder + predictor, the symmetric
loss, backward and an SGD-momentum update. Each variant runs in its own process (thread settings
are per process). The torch reference is built here from torchvision's resnet50 with the paper's
projector and predictor. Prints one line per variant and the ratio to torch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def paddle_step_time(args) -> float:
    import paddle

    from trainer.engine.amp import Amp
    from trainer.engine.pretrain import make_train_step
    from trainer.engine.process import set_cpu_threads
    from trainer.models import build_model
    from trainer.optim import build_optimizer

    if args.threads_api:
        set_cpu_threads(args.threads)
    paddle.set_device("cpu")
    paddle.seed(0)
    model = build_model({"name": "simsiam_resnet50_pretrain"})
    optimizer, group_lr = build_optimizer(
        model, {"name": "Momentum", "momentum": 0.9, "weight_decay": 1e-4,
                "lr": {"name": "TimmCosine", "learning_rate": 0.1},
                "param_groups": [{"name": "encoder"}, {"name": "predictor", "lr": 0.1}]},
        epochs=1, steps_per_epoch=args.steps + 2)
    step = make_train_step(model, optimizer, Amp({}), to_static=args.to_static)
    x1 = paddle.randn([args.batch, 3, args.size, args.size])
    x2 = paddle.randn([args.batch, 3, args.size, args.size])
    return _time(lambda i: (group_lr.set(0, i), float(step(x1, x2)[0])), args.steps)


def torch_step_time(args) -> float:
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim, pred_dim = 2048, 512
    encoder = torchvision.models.resnet50(zero_init_residual=True)
    encoder.fc = torch.nn.Sequential(
        torch.nn.Linear(2048, dim, bias=False), torch.nn.BatchNorm1d(dim), torch.nn.ReLU(),
        torch.nn.Linear(dim, dim, bias=False), torch.nn.BatchNorm1d(dim), torch.nn.ReLU(),
        torch.nn.Linear(dim, dim), torch.nn.BatchNorm1d(dim, affine=False))
    encoder.fc[6].bias.requires_grad = False
    predictor = torch.nn.Sequential(torch.nn.Linear(dim, pred_dim, bias=False),
                                    torch.nn.BatchNorm1d(pred_dim),
                                    torch.nn.ReLU(), torch.nn.Linear(pred_dim, dim))
    params = [p for p in [*encoder.parameters(), *predictor.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    cos = torch.nn.CosineSimilarity(dim=1)
    x1 = torch.randn(args.batch, 3, args.size, args.size)
    x2 = torch.randn(args.batch, 3, args.size, args.size)

    def step(_):
        z1, z2 = encoder(x1), encoder(x2)
        p1, p2 = predictor(z1), predictor(z2)
        loss = -0.5 * (cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    return _time(step, args.steps)


def _time(step, steps: int) -> float:
    step(0)                                   # warm-up: allocation, kernel selection, tracing
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return (time.perf_counter() - start) / steps


VARIANTS = {
    # name: (framework, extra environment, extra flags)
    "torch": ("torch", {}, []),
    "paddle: default threads": ("paddle", {}, []),
    "paddle: threads from cores (ours)": ("paddle", {}, ["--threads-api"]),
    "paddle: threads from cores + to_static": ("paddle", {}, ["--threads-api", "--to-static"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every variant this many times, interleaved; report the median "
                             "(steadier on a shared machine)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--run", help=argparse.SUPPRESS)            # internal: one variant
    parser.add_argument("--threads-api", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--to-static", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        seconds = torch_step_time(args) if args.run == "torch" else paddle_step_time(args)
        print(json.dumps({"seconds": seconds}))
        return
    print(f"SimSiam ResNet-50 step on CPU: batch {args.batch} x 2 views, {args.size} px, "
          f"{args.threads} thread(s), mean of {args.steps} steps after one warm-up, "
          f"median of {args.rounds} round(s); load average {os.getloadavg()[0]:.1f}")
    names = args.variants.split(",")
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            framework, env, flags = VARIANTS[name]
            cmd = [sys.executable, __file__, "--run", framework, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--size", str(args.size), "--threads", str(args.threads),
                   *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                print(f"  {name:<42} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            times[name].append(json.loads(lines[-1])["seconds"])
    reference = statistics.median(times["torch"]) if times.get("torch") else None
    for name in names:
        if not times[name]:
            continue
        seconds = statistics.median(times[name])
        ratio = f"{seconds / reference:.2f}x torch's time" if reference else ""
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:<42} {seconds:7.2f} s/step  {ratio:<20} (runs: {runs})", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
