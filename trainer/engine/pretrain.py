"""SimSiam pretraining loop (Global.task_type: ContrastiveLearning).

Output (OUTPUT_DIR): config.yaml, train.log, metrics.jsonl, checkpoints/, encoder.pdparams.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time

import paddle

from trainer import checkpoint as ckpt
from trainer import dist
from trainer.config import ConfigError, dump
from trainer.data import build_train_loader
from trainer.engine.run import (Preempted, PreemptionSignal, Progress, RunDir, agree_to_stop,
                                format_eta, resume_state, seed_everything, set_cpu_threads)
from trainer.models import build_model
from trainer.models.simsiam import z_std
from trainer.optim import build_optimizer
from trainer.weights import WeightsError, load_into

log = logging.getLogger("trainer")


class Amp:
    """FP16.level O0 (off), O1 (autocast) or O2 (low-precision weights, fp32 master copies), in
    float16 (with a GradScaler) or bfloat16 (no scaling needed)."""

    def __init__(self, fp16_cfg: dict):
        self.level = fp16_cfg.get("level", "O0")
        self.dtype = fp16_cfg.get("dtype", "float16")
        self.scaler = None
        if self.level != "O0" and self.dtype == "float16":
            scaler_cfg = fp16_cfg.get("GradScaler") or {}
            self.scaler = paddle.amp.GradScaler(
                init_loss_scaling=scaler_cfg.get("init_loss_scaling", 65536.0),
                incr_every_n_steps=scaler_cfg.get("incr_every_n_steps", 2000),
                decr_every_n_nan_or_inf=scaler_cfg.get("decr_every_n_nan_or_inf", 1))

    def decorate(self, model, optimizer):
        if self.level == "O2":
            return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=self.dtype)
        return model, optimizer

    def autocast(self):
        if self.level == "O0":
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(level=self.level, dtype=self.dtype)

    def backward_and_step(self, loss, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        optimizer.clear_grad()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def set_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def train(cfg: dict):
    """Run (or resume) a pretraining run as configured and return the trained SimSiam model;
    raises Preempted after a SIGTERM checkpoint."""
    g = cfg["Global"]
    if g["accum_steps"] != 1:
        raise ConfigError("bad value for 'Global.accum_steps': only 1 is supported; raise "
                          "DataLoader.Train.sampler.batch_size or the number of devices instead")
    env = dist.init(g["device"])
    threads = set_cpu_threads(g["num_threads"]) if env.device == "cpu" else None
    run = RunDir(cfg, env.rank)
    seed_everything(g["seed"], env.rank)
    resumed = resume_state(g, run)          # early: a bad Global.checkpoint fails before slow set-up

    net = dist.use_sync_batch_norm(env, build_model(cfg["Model"]))   # first: a bad Model.name fails fast
    loader = build_train_loader(cfg["DataLoader"]["Train"], rank=env.rank, world_size=env.world_size,
                                seed=g["seed"] or 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError("DataLoader.Train gives no batches per epoch (dataset smaller than a batch)")
    if g["pretrained_model"]:
        try:
            load_into(net.encoder, g["pretrained_model"])   # the backbone; the projector (fc) stays fresh
        except WeightsError as e:
            raise ConfigError(f"Global.pretrained_model: {e}") from None
    optimizer, group_lr = build_optimizer(net, cfg["Optimizer"], epochs=g["epochs"],
                                          steps_per_epoch=steps_per_epoch)
    amp = Amp(cfg.get("FP16") or {})
    net, optimizer = amp.decorate(net, optimizer)

    start_epoch, start_step, global_step = 0, 0, 0
    if resumed is not None:
        path, state = resumed
        net.set_state_dict(state["model"])
        ckpt.load_optimizer_state(optimizer, net, state["optimizer"])
        amp.set_state_dict(state.get("amp") or {})
        ckpt.set_rng_state(state["rng"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        log.info("resumed from %s at epoch %d, step %d", path, start_epoch, start_step)
    model, optimizer = dist.wrap(env, net, optimizer)
    step_fn = make_train_step(model, optimizer, amp, g["to_static"])

    batch = cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
    total_steps = g["epochs"] * steps_per_epoch
    if g["max_train_step"]:
        total_steps = min(total_steps, g["max_train_step"])
    log.info("SimSiam pretraining: %s, %d process(es) on %s%s, %d images, global batch %d, %d steps/epoch, "
             "%d epochs", cfg["Model"]["name"], env.world_size, env.device,
             f" ({threads} threads)" if threads else "", loader.num_samples, batch * env.world_size,
             steps_per_epoch, g["epochs"])
    progress = Progress(total_steps, global_step, batch * env.world_size)
    collapse = CollapseMonitor(net.dim, g["collapse_warn_fraction"], g["collapse_patience"])
    preemption = PreemptionSignal()
    last_save = time.monotonic()

    def save(epoch: int, step: int) -> None:
        nonlocal last_save
        if step == steps_per_epoch:
            epoch, step = epoch + 1, 0
        dist.average_buffers(env, net)
        if env.is_main:
            state = {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(optimizer, net),
                     "scheduler": {"lr": group_lr.schedule(min(epoch, g["epochs"] - 1), 0)},
                     "amp": amp.state_dict(), "epoch": epoch, "step": step, "global_step": global_step,
                     "rng": ckpt.rng_state(), "config": dump(cfg)}
            path = ckpt.save_checkpoint(run.checkpoints, state, keep=g["max_num_latest_checkpoint"])
            ckpt.export_encoder(net, run.path / "encoder.pdparams")
            log.info("saved checkpoint %s", path)
        last_save = time.monotonic()

    try:
        for epoch in range(start_epoch, g["epochs"]):
            if global_step >= total_steps:
                break
            first_step = start_step if epoch == start_epoch else 0
            loader.set_epoch(epoch, first_step)
            model.train()
            epoch_start, epoch_loss, epoch_steps = time.monotonic(), 0.0, 0
            window_loss, window_steps = paddle.zeros([]), 0
            for step, (views, _) in enumerate(loader, start=first_step):
                lrs = group_lr.set(epoch, step)
                x1, x2 = loader.to_tensor(views[0]), loader.to_tensor(views[1])
                loss, z1 = step_fn(x1, x2)
                global_step += 1
                window_loss, window_steps = window_loss + loss, window_steps + 1
                last_of_epoch = step + 1 == steps_per_epoch
                logged = global_step % g["print_batch_step"] == 0 or last_of_epoch or global_step >= total_steps
                if logged:
                    mean_loss = float(window_loss) / window_steps
                    epoch_loss, epoch_steps = epoch_loss + mean_loss * window_steps, epoch_steps + window_steps
                    window_loss, window_steps = paddle.zeros([]), 0
                    images_per_sec, eta = progress.tick(global_step)
                    std = z_std(z1)
                    warning = collapse.update(std)
                    run.metric(type="step", epoch=epoch + 1, step=step + 1, global_step=global_step,
                               loss=mean_loss, lr=_encoder_lr(lrs), lr_predictor=lrs.get("predictor"),
                               images_per_sec=round(images_per_sec, 2), z_std=std,
                               **({"collapse_warning": True} if warning else {}))
                    log.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.5f  %.1f img/s  z_std %.4f  ETA %s",
                             epoch + 1, g["epochs"], step + 1, steps_per_epoch, mean_loss, _encoder_lr(lrs),
                             images_per_sec, std, format_eta(eta))
                    if warning:
                        log.warning(warning)
                stop, due = False, bool(g["save_interval_steps"]) and global_step % g["save_interval_steps"] == 0
                if env.world_size == 1 or logged:
                    # SIGTERM and the clock differ between ranks: agree (one collective) at log steps
                    minutes_due = bool(g["save_interval_minutes"]) and \
                        time.monotonic() - last_save >= 60 * g["save_interval_minutes"]
                    stop, minutes_due = agree_to_stop(env, preemption.requested, minutes_due)
                    due = due or minutes_due
                if stop:
                    save(epoch, step + 1)
                    raise Preempted(f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; checkpoint "
                                    f"saved in {run.checkpoints} (resume with -o Global.auto_resume=True)")
                if due and not last_of_epoch:
                    save(epoch, step + 1)
                if global_step >= total_steps:
                    break
            if epoch_steps:
                run.metric(type="epoch", epoch=epoch + 1, global_step=global_step, loss=epoch_loss / epoch_steps,
                           seconds=round(time.monotonic() - epoch_start, 2), bad_images=loader.bad_images)
            finished_epoch = step + 1 == steps_per_epoch
            if finished_epoch and ((epoch + 1) % g["save_interval"] == 0 or epoch + 1 == g["epochs"]):
                save(epoch, step + 1)
            elif global_step >= total_steps:
                save(epoch, step + 1)
    finally:
        preemption.restore()
        loader.close()
    dist.average_buffers(env, net)
    if env.is_main:
        ckpt.export_encoder(net, run.path / "encoder.pdparams")
    log.info("done: %d steps; encoder weights in %s", global_step, run.path / "encoder.pdparams")
    run.close()
    return net


def _encoder_lr(lrs: dict) -> float:
    return lrs.get("encoder", next(iter(lrs.values())))


def make_train_step(model, optimizer, amp: Amp, to_static: bool):
    """One optimization step on two views; returns (loss, z1) for logging."""
    def forward(x1, x2):
        with amp.autocast():
            loss, z1, _ = model(x1, x2)
        return loss, z1

    if to_static:
        forward = paddle.jit.to_static(forward, full_graph=True)

    def step(x1, x2):
        loss, z1 = forward(x1, x2)
        amp.backward_and_step(loss, optimizer)
        return loss.detach(), z1

    return step


class CollapseMonitor:
    """Warns when z_std stays below `fraction` x 1/sqrt(dim) (a healthy run sits near 1/sqrt(dim),
    a collapsed one at 0, the paper's Fig. 2) for `patience` consecutive logs."""

    def __init__(self, dim: int, fraction: float, patience: int):
        self.healthy = 1 / math.sqrt(dim)
        self.threshold = fraction * self.healthy
        self.patience, self.low = patience, 0

    def update(self, std: float) -> str | None:
        self.low = self.low + 1 if std < self.threshold else 0
        if self.low >= self.patience:
            return (f"WARNING: possible collapse: z_std {std:.5f} has been below {self.threshold:.5f} "
                    f"for {self.low} logs (healthy is about {self.healthy:.5f}); check the lr and the predictor")
        return None
