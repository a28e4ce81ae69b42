"""Training stall per checkpoint, synchronous write vs the background writer, for the ImageNet
recipe's state (SimSiam ResNet-50 + momentum buffers, and encoder.pdparams written with it).

    python bench/checkpoint.py [--rounds 3] [--dir DIR] [--batch 4 --size 64]

Builds the shipped recipe's model and optimizer on the CPU, takes training steps (small images, so
that a step is short) and saves the state as the engine does, alternating in one process:

  sync    what the engine did before: write the checkpoint and encoder.pdparams, then go on
  async   trainer.checkpoint.CheckpointWriter: the state is copied to host memory, a thread writes it

stall: how long the training loop waits in the save. While an async write runs the loop keeps
stepping; those steps compete with the write for cores and the interpreter lock, so the bench
also prints how much longer they took than steps without a write ("slowed"). On a GPU the copy
to host memory is a device-to-host copy and the steps run on the device, so there the slowdown
is smaller than on this CPU-only measurement. The files go to DIR (default: the system's temporary
folder); put it on the filesystem the checkpoints will live on.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

RECIPE = "simsiam_resnet50_pt_in1k_1n8c_dp_fp32"


def build(batch: int, size: int):
    import paddle

    from trainer.config import load_config, shipped_config
    from trainer.engine.amp import Amp
    from trainer.engine.pretrain import make_train_step
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.sections import Config

    paddle.set_device("cpu")
    paddle.seed(0)
    cfg = load_config(shipped_config(RECIPE), ["Global.device=cpu"])
    config = Config.of(cfg)
    net = build_model(config.model)
    optimizer, _ = build_optimizer(net, config.optimizer, epochs=config.global_.epochs, steps_per_epoch=100)
    step = make_train_step(net, optimizer, Amp({}), to_static=False)
    x1, x2 = paddle.randn([batch, 3, size, size]), paddle.randn([batch, 3, size, size])
    return cfg, net, optimizer, lambda: float(step(x1, x2)[0])


def engine_state(cfg, net, optimizer, global_step: int) -> dict:
    from trainer import checkpoint as ckpt
    from trainer.config import dump

    return {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(optimizer, net), "epoch": 0,
            "step": global_step, "global_step": global_step, "rng": ckpt.rng_state(), "config": dump(cfg)}


def state_megabytes(state: dict) -> float:
    import paddle

    def size(obj):
        if isinstance(obj, paddle.Tensor):
            return obj.numel().item() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        return 0

    return size({k: state[k] for k in ("model", "optimizer")}) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the checkpoints are written")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    from trainer import checkpoint as ckpt

    cfg, net, optimizer, step = build(args.batch, args.size)
    step()                                          # momentum buffers exist after the first step
    base = [time_it(step) for _ in range(3)]
    step_seconds = statistics.median(base)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = Path(tmp)
        state = engine_state(cfg, net, optimizer, 1)
        print(f"SimSiam ResNet-50 (recipe {RECIPE}): checkpoint {state_megabytes(state):.0f} MB of tensors "
              f"+ encoder.pdparams; training step {step_seconds:.2f} s (batch {args.batch} x 2 views, "
              f"{args.size} px, CPU); files in {out}")
        sync, stall, write, slowed = [], [], [], []
        for r in range(args.rounds):
            global_step = 2 * r + 1
            started = time.perf_counter()
            ckpt.save_checkpoint(out / "checkpoints", engine_state(cfg, net, optimizer, global_step))
            ckpt.save_object(ckpt.encoder_state(net), out / "encoder.pdparams")
            sync.append(time.perf_counter() - started)
            step()

            done = threading.Event()
            writer = ckpt.CheckpointWriter()
            started = time.perf_counter()
            writer.save(out / "checkpoints", engine_state(cfg, net, optimizer, global_step + 1),
                        {out / "encoder.pdparams": ckpt.encoder_state(net)},
                        after=lambda path, done=done: done.set())
            stall.append(time.perf_counter() - started)
            overlapped = []
            while not done.is_set():                # training goes on while the thread writes
                overlapped.append(time_it(step))
            write.append(time.perf_counter() - started)
            writer.wait()
            slowed.append(sum(overlapped) - len(overlapped) * step_seconds)
            print(f"  round {r + 1}: sync {sync[-1]:.3f} s   async stall {stall[-1]:.3f} s "
                  f"(write {write[-1]:.2f} s in the background, {len(overlapped)} steps meanwhile, "
                  f"slowed by {slowed[-1]:+.2f} s)")
    s, a, lost = statistics.median(sync), statistics.median(stall), statistics.median(slowed)
    print(f"\nmedian of {args.rounds} rounds, seconds the training loop waits per checkpoint:")
    print(f"  sync   {s:7.3f}")
    print(f"  async  {a:7.3f}   ratio {a / s:.3f} ({100 * a / s:.1f}% of the synchronous write)")
    print(f"  async, counting the slowdown of the steps that overlap the write: {a + lost:.3f} "
          f"(ratio {(a + lost) / s:.3f})")


def time_it(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
