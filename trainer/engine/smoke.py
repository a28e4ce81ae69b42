"""Smoke test of a cluster (Global.task_type: Smoke): what an operator runs before a long job.

Every rank trains the configured SimSiam model with the configured optimizer, AMP and BN set-up
on one fixed batch of synthetic images (two fixed views), so no data set is needed and the loss
has to fall if the training step works. It then times `paddle.distributed.all_reduce` of a tensor
the size of the model's gradients. Each rank reports:

    images/s            over the timed steps (the first tenth are warm-up and not timed)
    amp                 FP16.level, and the dtype the first convolution really computed in
    bn_synchronized     whether the model holds nn.SyncBatchNorm layers (read from the model)
    bus bandwidth       all-reduce algbw x 2(n-1)/n (NCCL-tests' definition), with the message size
    loss                finite at every step, and lower at the end than at the start
    peak memory         device memory on GPUs, the process's peak RSS on CPUs

Rank 0 prints a table and one line `smoke PASS: ...` or `smoke FAIL: <reason>`, writes the figures
to OUTPUT_DIR/smoke.json, and puts the line in the last progress record, so `simsiam-job status`
and `--wait` show it. A FAIL exits 1 on every rank; its outcome says retrying cannot help (a loss
that is not finite is a divergence, anything else a set-up the cluster or config got wrong).

It is a task of the one Engine: the output directory's lock, the watchdog, the progress records,
SIGTERM and AMP are the Engine's, as for training; it saves no checkpoint and resumes from none.

The number of steps is Global.max_train_step (default 50); the batch per rank is
DataLoader.Train.sampler.batch_size; the image size is the first crop/resize size in
DataLoader.Train's transform (the recipe's 224 for ImageNet).
"""
from __future__ import annotations

import json
import logging
import math
import resource
import socket
import time

import numpy as np
import paddle
import paddle.distributed as pdist
from paddle import nn

from trainer import checkpoint as ckpt
from trainer import contract, dist
from trainer.config import ConfigError
from trainer.engine.loop import Engine, Task
from trainer.engine.pretrain import make_train_step
from trainer.models import build_model
from trainer.optim import build_optimizer
from trainer.outcome import Failed
from trainer.sections import DataSplit

log = logging.getLogger("trainer")

DEFAULT_STEPS = 50
ALL_REDUCE_WARMUP, ALL_REDUCE_ITERS = 2, 10
_SIZED_OPS = ("RandomResizedCrop", "RandCropImage", "CenterCrop", "CenterCropImage", "Resize", "ResizeImage")


class SmokeFailed(Failed):
    """The verdict was FAIL: every rank exits 1 (the figures are already written)."""


class FixedBatch:
    """The smoke test's data: one fixed batch of two synthetic views per rank (different on each
    rank, as real data would be), for `steps` steps of one epoch."""

    bad_images = 0

    def __init__(self, batch: int, size: int, steps: int, seed: int):
        rng = np.random.default_rng(seed)
        self.views = [paddle.to_tensor(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
                      for _ in range(2)]
        self.steps, self.first, self.num_samples = steps, 0, batch

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int, first_step: int = 0) -> None:
        self.first = first_step

    def __iter__(self):
        for _ in range(self.first, self.steps):
            yield self.views, None

    def to_tensor(self, view):
        return view

    def close(self) -> None:
        pass


class Smoke(Task):
    name = "smoke test"
    saves_checkpoints = False
    stops_on_divergence = False     # a loss that is not finite is part of the report
    epochs = 1

    def __init__(self, engine: Engine):
        config, settings, env = engine.config, engine.settings, engine.env
        if config.train_data is None:
            raise ConfigError("missing required section 'DataLoader.Train' (the smoke test reads its batch "
                              "size and crop size)")
        self.steps = settings.max_train_step or DEFAULT_STEPS
        if self.steps < 2:
            raise ConfigError(f"bad value for 'Global.max_train_step': {self.steps} (the smoke test needs at "
                              f"least 2 steps to see the loss fall; default {DEFAULT_STEPS})")
        self.model_name, self.env, self.amp = config.model.name, env, engine.amp
        self.batch = config.train_data.sampler.batch_size
        self.size = image_size(config.train_data)
        self.on_gpu = env.device.startswith("gpu")
        self.net = dist.use_sync_batch_norm(env, build_model(config.model))
        self.optimizer, self.group_lr = build_optimizer(self.net, config.optimizer, epochs=1,
                                                        steps_per_epoch=self.steps)
        self.loader = FixedBatch(self.batch, self.size, self.steps, (settings.seed or 0) + 1000 * env.rank)
        self.conv_dtype = _watch_first_conv(self.net)
        self.to_static = settings.to_static
        self.losses, self.started, self.done = [], None, 0
        log.info("smoke: %s, %d rank(s), batch %d per rank of %dx%d synthetic images, %d steps, FP16 %s",
                 config.model.name, env.world_size, self.batch, self.size, self.size, self.steps,
                 engine.amp.level)

    def make_step(self, model, optimizer, amp):
        train_step = make_train_step(model, optimizer, amp, self.to_static)
        warmup = max(1, self.steps // 10)

        def step(views, labels):
            if self.done == warmup:         # the first tenth is warm-up, not timed
                _synchronize(self.on_gpu)
                self.started = time.perf_counter()
            loss, _ = train_step(views[0], views[1])
            self.losses.append(loss)
            self.done += 1
            return {"loss": loss}, {}
        return step

    def after_epoch(self, engine, epoch, finished, last):
        if not finished:
            return
        report = self.report()
        if self.env.is_main:
            ckpt.atomic_write(engine.output.path / contract.SMOKE,
                              (json.dumps(report, indent=2) + "\n").encode())
            print(format_report(report), flush=True)
            engine.progress_record({"type": "step", "epoch": 1, "epochs": 1, "step": self.steps,
                                    "steps_per_epoch": self.steps, "global_step": self.steps,
                                    "total_steps": self.steps, "loss": report["total"]["loss_last"],
                                    "lr": self.group_lr.set(0, self.steps - 1).get("encoder", 0.0),
                                    "images_per_sec": report["total"]["images_per_sec"], "eta_seconds": 0.0,
                                    "summary": report["summary"]})
        dist.barrier(self.env)
        if report["verdict"] != "PASS":
            not_finite = report["reason"].startswith("loss is not finite")
            raise SmokeFailed(contract.End.DIVERGED if not_finite else contract.End.BAD_INPUT,
                              report["summary"])
        self.summary = report["summary"]

    def report(self) -> dict:
        """This rank's figures, gathered from every rank, and the verdict."""
        _synchronize(self.on_gpu)
        warmup = max(1, self.steps // 10)
        seconds = time.perf_counter() - self.started if self.started is not None else float("nan")
        losses = [float(v) for v in paddle.stack(self.losses).astype("float32").numpy().reshape(-1)]
        mine = {
            "rank": self.env.rank, "host": socket.gethostname(), "device": paddle.get_device(),
            "images_per_sec": (round(self.batch * (self.steps - warmup) / seconds, 2)
                               if self.steps > warmup else None),
            "amp_level": self.amp.level, "compute_dtype": self.conv_dtype.get("dtype"),
            "bn_synchronized": any(isinstance(layer, nn.SyncBatchNorm) for layer in self.net.sublayers()),
            **all_reduce_bandwidth(self.env, self.net, self.on_gpu),
            "loss_first": losses[0], "loss_last": losses[-1], "loss_finite": all(map(math.isfinite, losses)),
            "first_bad_step": next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None),
            "loss_fell": loss_fell(losses),
            **peak_memory(self.on_gpu),
        }
        return summarize(_gather(self.env, mine), self.model_name, steps=self.steps, batch=self.batch,
                         size=self.size, amp_level=self.amp.level)

    def done_text(self, output_dir):
        return getattr(self, "summary", "")


def smoke_test(cfg: dict) -> None:
    """Run the smoke test as configured (raises SmokeFailed on FAIL)."""
    engine = Engine(cfg, resumes=False, refuse_amp_on_cpu=False)
    engine.fit(Smoke(engine))


def image_size(split: DataSplit) -> int:
    """The first crop/resize size of the training transform (the recipe's view size); 224 if none."""
    def ops(items):
        for entry in items or []:
            (name, params), = entry.items()
            if name == "TwoViewsTransform":
                yield from ops(params["base_transform1"])
            else:
                yield name, params or {}

    for name, params in ops(split.dataset.transform):
        if name in _SIZED_OPS and "size" in params:
            size = params["size"]
            return size if isinstance(size, int) else max(size)
    return 224


def loss_fell(losses: list[float]) -> bool:
    """The mean over the last tenth of the steps is below the mean over the first tenth."""
    k = max(1, len(losses) // 10)
    return len(losses) > 1 and float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def all_reduce_bandwidth(env: dist.DistEnv, net: nn.Layer, on_gpu: bool) -> dict:
    """Time all_reduce (sum) of a float32 tensor as large as the model's parameters, the bytes one
    data-parallel step all-reduces. Bus bandwidth = algbw x 2(n-1)/n, as NCCL-tests define it."""
    numel = sum(int(np.prod(p.shape)) for p in net.parameters())
    size = 4 * numel
    if env.world_size == 1:
        return {"allreduce_bytes": size, "allreduce_seconds": None, "bus_bandwidth_mbps": None}
    tensor = paddle.zeros([numel], dtype="float32")   # zeros: repeated sums stay finite at any scale
    for _ in range(ALL_REDUCE_WARMUP):
        pdist.all_reduce(tensor)
    _synchronize(on_gpu)
    dist.barrier(env)
    started = time.perf_counter()
    for _ in range(ALL_REDUCE_ITERS):
        pdist.all_reduce(tensor)
    _synchronize(on_gpu)
    seconds = (time.perf_counter() - started) / ALL_REDUCE_ITERS
    n = env.world_size
    bus = size / seconds * 2 * (n - 1) / n
    return {"allreduce_bytes": size, "allreduce_seconds": seconds, "bus_bandwidth_mbps": round(bus / 1e6, 1)}


def peak_memory(on_gpu: bool) -> dict:
    if on_gpu:
        return {"peak_memory_mb": round(paddle.device.cuda.max_memory_allocated() / 1e6, 1),
                "peak_memory_kind": "device"}
    # ru_maxrss is in KiB on Linux
    return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1),
            "peak_memory_kind": "rss"}


def summarize(ranks: list[dict], model: str, *, steps: int, batch: int, size: int, amp_level: str) -> dict:
    """Totals over the ranks and the verdict with its reason (the first problem found)."""
    n = len(ranks)
    buses = [r["bus_bandwidth_mbps"] for r in ranks if r["bus_bandwidth_mbps"] is not None]
    speeds = [r["images_per_sec"] for r in ranks if r["images_per_sec"] is not None]
    total = {
        "ranks": n, "nodes": len({r["host"] for r in ranks}),
        "images_per_sec": round(sum(speeds), 2) if len(speeds) == n else None,
        # the slowest rank's figure: a collective goes at the pace of its slowest member
        "bus_bandwidth_mbps": min(buses) if buses else None,
        "allreduce_bytes": ranks[0]["allreduce_bytes"],
        "loss_first": float(np.mean([r["loss_first"] for r in ranks])),
        "loss_last": float(np.mean([r["loss_last"] for r in ranks])),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in ranks),
        "bn_synchronized": all(r["bn_synchronized"] for r in ranks),
    }
    reason = _problem(ranks, amp_level, steps)
    figures = (f"{n} rank(s) on {total['nodes']} node(s), "
               f"{_fmt(total['images_per_sec'], '.1f')} images/s, AMP {amp_level}, "
               f"BN {'synchronized' if total['bn_synchronized'] else 'per device'}, "
               f"all-reduce {_bus(total['bus_bandwidth_mbps'], total['allreduce_bytes'])}, "
               f"loss {total['loss_first']:.4f} -> {total['loss_last']:.4f} over {steps} steps, "
               f"peak memory {total['peak_memory_mb']:.0f} MB")
    verdict = "FAIL" if reason else "PASS"
    return {
        "verdict": verdict, "reason": reason,
        "summary": f"smoke {verdict}: {reason}; {figures}" if reason else f"smoke PASS: {figures}",
        "model": model, "steps": steps, "batch_per_rank": batch, "image_size": size,
        "total": total, "ranks": ranks,
    }


def _problem(ranks: list[dict], amp_level: str, steps: int) -> str | None:
    bad = [r for r in ranks if not r["loss_finite"]]
    if bad:
        r = min(bad, key=lambda r: r["first_bad_step"])
        return f"loss is not finite (rank {r['rank']}, from step {r['first_bad_step']} of {steps})"
    flat = [r for r in ranks if not r["loss_fell"]]
    if flat:
        r = flat[0]
        return (f"loss did not fall on a fixed batch (rank {r['rank']}: {r['loss_first']:.4f} -> "
                f"{r['loss_last']:.4f} over {steps} steps); check Optimizer.lr")
    if amp_level != "O0" and any(r["compute_dtype"] == "float32" for r in ranks):
        return f"FP16.level {amp_level} is set but convolutions ran in float32 (AMP not in effect)"
    multi_gpu = len(ranks) > 1 and all(r["device"].startswith("gpu") for r in ranks)
    if multi_gpu and not all(r["bn_synchronized"] for r in ranks):
        return "BatchNorm is not synchronized across GPUs (each GPU would keep its own statistics)"
    return None


def format_report(report: dict) -> str:
    """The table a person reads, then the summary line."""
    head = ("rank", "host", "device", "images/s", "amp", "bn sync", "all-reduce", "bus MB/s",
            "loss first -> last", "peak MB")
    rows = [head]
    for r in report["ranks"] + [dict(report["total"], rank="total", host="", device="", amp_level="",
                                     compute_dtype=None)]:
        amp = r["amp_level"] + (f" ({r['compute_dtype']})" if r.get("compute_dtype") else "")
        rows.append((str(r["rank"]), r["host"], r["device"], _fmt(r["images_per_sec"], ".1f"), amp,
                     "yes" if r["bn_synchronized"] else "no", _size(r["allreduce_bytes"]),
                     _fmt(r["bus_bandwidth_mbps"], ".1f"), f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}",
                     f"{r['peak_memory_mb']:.0f}" + (" (RSS)" if r.get("peak_memory_kind") == "rss" else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines + [report["summary"]])


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def _bus(mbps, nbytes: int) -> str:
    return "n/a (1 rank)" if mbps is None else f"{mbps:.1f} MB/s bus bandwidth at {_size(nbytes)}"


def _watch_first_conv(net: nn.Layer) -> dict:
    """Record the dtype the first convolution computes in (float16/bfloat16 when AMP is in effect)."""
    seen: dict = {}
    conv = next((layer for layer in net.sublayers() if isinstance(layer, nn.Conv2D)), None)
    if conv is None:
        return seen

    def hook(layer, inputs, output):
        seen.setdefault("dtype", str(output.dtype).replace("paddle.", ""))
        handle.remove()

    handle = conv.register_forward_post_hook(hook)
    return seen


def _synchronize(on_gpu: bool) -> None:
    if on_gpu:
        paddle.device.synchronize()


def _gather(env: dist.DistEnv, mine: dict) -> list[dict]:
    if env.world_size == 1:
        return [mine]
    gathered: list = []
    pdist.all_gather_object(gathered, mine)
    return sorted(gathered, key=lambda r: r["rank"])
