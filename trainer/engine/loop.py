"""The one training loop. A task (SimSiam pretraining, the linear probe) supplies its model,
optimizer and step; the Engine owns everything around them:

    set-up     process group, CPU threads, output directory, seeds, AMP
    resume     rank 0 chooses the checkpoint, every rank loads it
    logging    one step record per Global.print_batch_step (metrics.jsonl, the log, a stdout
               progress line), one epoch record per epoch
    stopping   SIGTERM and timed saves agreed between ranks at logged steps
    saving     every save_interval epochs, every save_interval_steps steps, every
               save_interval_minutes minutes, at the end; the task exports its weights with each

A task's step returns device tensors only; the Engine sums them on the device and reads them back
at logged steps, so a step never waits for the device to finish.
"""
from __future__ import annotations

import logging
import math
import time

import paddle

from trainer import checkpoint as ckpt
from trainer import contract, dist, guard, lock
from trainer.config import ConfigError, dump
from trainer.data import build_train_loader
from trainer.engine.amp import Amp
from trainer.engine.run import (Preempted, PreemptionSignal, Progress, RunDir, agree_to_stop,
                                format_eta, resume_state, seed_everything, set_cpu_threads)

log = logging.getLogger("trainer")


class Task:
    """What a task supplies. Set by the task's constructor: name, net (the bare model, saved in
    checkpoints), optimizer and group_lr (from trainer.optim.build_optimizer), loader."""

    name = "training"
    train_mode = True            # model.train() every epoch; the probe keeps its frozen BN in eval mode
    eval_loader = None           # DataLoader.Eval, when the task evaluates after epochs

    def make_step(self, model, optimizer, amp: Amp):
        """step(views, labels) -> (sums, latest): dicts of device tensors. The Engine adds up
        `sums` (one of them "loss", the batch mean) over the steps between two logs; `latest` is
        the last step's, for fields measured on one batch."""
        raise NotImplementedError

    def log_fields(self, sums: dict, steps: int, last: dict) -> dict:
        """Extra fields of a step record from the summed step outputs (host floats) and the last
        step's outputs (device tensors)."""
        return {}

    def log_text(self, fields: dict) -> str:
        """The task's part of the human progress line."""
        return ""

    def after_epoch(self, engine: "Engine", epoch: int, finished: bool, last: bool) -> None:
        """After each epoch (1-based `epoch`), before its checkpoint: e.g. an evaluation."""

    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass

    def export(self, output_dir) -> None:
        """Write the task's weights (rank 0, with every checkpoint and at the end)."""

    def done_text(self, output_dir) -> str:
        return ""

    def close(self) -> None:
        self.loader.close()
        if self.eval_loader is not None:
            self.eval_loader.close()


class Engine:
    def __init__(self, cfg: dict):
        g = cfg["Global"]
        if g["accum_steps"] != 1:
            raise ConfigError("bad value for 'Global.accum_steps': only 1 is supported; raise "
                              "DataLoader.Train.sampler.batch_size or the number of devices instead")
        self.cfg, self.g = cfg, g
        self.env = dist.init(g["device"])
        takeover = lock.claim(cfg, self.env)        # before any write to the output directory
        self.threads = set_cpu_threads(g["num_threads"]) if self.env.device == "cpu" else None
        self.amp = Amp(cfg.get("FP16"), self.env.device)
        self.run = RunDir(cfg, self.env.rank)
        if takeover:
            log.warning(takeover)
        seed_everything(g["seed"], self.env.rank)
        self.resumed = resume_state(g, self.run, self.env)   # early: a bad checkpoint fails before slow set-up
        self.global_step = 0

    def train_loader(self):
        loader = build_train_loader(self.cfg["DataLoader"]["Train"], rank=self.env.rank,
                                    world_size=self.env.world_size, seed=self.g["seed"] or 0,
                                    index_dir=self.run.path)
        if len(loader) == 0:
            raise ConfigError("DataLoader.Train gives no batches per epoch (dataset smaller than a batch)")
        return loader

    def metric(self, **fields) -> None:
        self.run.metric(**fields)

    def evaluation_due(self, epoch: int, finished: bool, last: bool) -> bool:
        """After the last epoch, and every Global.eval_interval epochs with Global.eval_during_train."""
        return last or (finished and self.g["eval_during_train"] and epoch % self.g["eval_interval"] == 0)

    # ------------------------------------------------------------------------------------------

    def fit(self, task: Task):
        """Train (or resume) `task` to the end; returns its model. Raises Preempted after a SIGTERM
        checkpoint."""
        g, env, amp, run = self.g, self.env, self.amp, self.run
        loader = task.loader
        steps_per_epoch, epochs = len(loader), g["epochs"]
        net, optimizer = amp.decorate(task.net, task.optimizer)
        task.net, task.optimizer = net, optimizer
        start_epoch, start_step = 0, 0
        if self.resumed is not None:
            path, state = self.resumed
            guard.check_model_state(net, state["model"], path)     # one line, not paddle's warnings
            net.set_state_dict(state["model"])
            ckpt.load_optimizer_state(optimizer, net, state["optimizer"])
            amp.set_state_dict(state.get("amp") or {})
            ckpt.set_rng_state(state["rng"])
            task.set_extra_state(state)
            start_epoch, start_step, self.global_step = state["epoch"], state["step"], state["global_step"]
            log.info("resumed from %s at epoch %d, step %d", path, start_epoch, start_step)
        model, optimizer = dist.wrap(env, net, optimizer)
        step_fn = task.make_step(model, optimizer, amp)

        batch = self.cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
        total_steps = epochs * steps_per_epoch
        if g["max_train_step"]:
            total_steps = min(total_steps, g["max_train_step"])
        log.info("%s: %s, %d process(es) on %s%s, %s, %d images, global batch %d, %d steps/epoch, %d epochs",
                 task.name, self.cfg["Model"]["name"], env.world_size, env.device,
                 f" ({self.threads} threads)" if self.threads else "", amp.describe(), loader.num_samples,
                 batch * env.world_size, steps_per_epoch, epochs)
        progress = Progress(total_steps, self.global_step, batch * env.world_size)
        preemption = PreemptionSignal()
        nonfinite = guard.NonFiniteLoss()
        retention = guard.Retention(run.checkpoints, g["max_num_latest_checkpoint"])
        last_save = time.monotonic()

        def save(epoch: int, step: int) -> None:
            nonlocal last_save
            self._stop_if_diverged(nonfinite, net, epoch)          # never a NaN checkpoint or export
            if step == steps_per_epoch:
                epoch, step = epoch + 1, 0
            dist.average_buffers(env, net)
            if env.is_main:
                state = {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(optimizer, net),
                         "scheduler": {"lr": task.group_lr.schedule(min(epoch, epochs - 1), 0)},
                         "amp": amp.state_dict(), "epoch": epoch, "step": step, "global_step": self.global_step,
                         "rng": ckpt.rng_state(), "config": dump(self.cfg), **task.extra_state()}
                path = ckpt.save_checkpoint(run.checkpoints, state)
                retention.written(path)
                retention.apply()
                task.export(run.path)
                log.info("saved checkpoint %s", path)
            last_save = time.monotonic()

        try:
            for epoch in range(start_epoch, epochs):
                if self.global_step >= total_steps:
                    break
                first_step = start_step if epoch == start_epoch else 0
                loader.set_epoch(epoch, first_step)
                if task.train_mode:
                    model.train()
                else:
                    model.eval()
                epoch_start, epoch_loss, epoch_steps = time.monotonic(), 0.0, 0
                window, window_steps = {}, 0
                for step, (views, labels) in enumerate(loader, start=first_step):
                    lrs = task.group_lr.set(epoch, step)
                    out, latest = step_fn([loader.to_tensor(v) for v in views], labels)
                    self.global_step += 1
                    nonfinite.observe(out["loss"], self.global_step)
                    for key, value in out.items():
                        window[key] = window[key] + value if key in window else value
                    window_steps += 1
                    last_of_epoch = step + 1 == steps_per_epoch
                    logged = (self.global_step % g["print_batch_step"] == 0 or last_of_epoch
                              or self.global_step >= total_steps)
                    if logged:
                        sums = dict(zip(window, paddle.stack([v.astype("float32").reshape([])
                                                              for v in window.values()]).numpy().tolist()))
                        epoch_loss, epoch_steps = epoch_loss + sums["loss"], epoch_steps + window_steps
                        self._log_step(task, progress, epoch, step, steps_per_epoch, total_steps, lrs,
                                       sums, window_steps, latest)
                        window, window_steps = {}, 0
                    stop, diverged_at = False, 0
                    if logged and not math.isfinite(sums["loss"]):
                        diverged_at = nonfinite.first_bad_step() or self.global_step
                    due = bool(g["save_interval_steps"]) and self.global_step % g["save_interval_steps"] == 0
                    if env.world_size == 1 or logged:
                        # SIGTERM and the clock differ between ranks: agree (one collective) at log steps
                        minutes_due = bool(g["save_interval_minutes"]) and \
                            time.monotonic() - last_save >= 60 * g["save_interval_minutes"]
                        stop, minutes_due, diverged_at = agree_to_stop(env, preemption.requested, minutes_due,
                                                                       diverged_at)
                        due = due or minutes_due
                    if diverged_at:
                        raise guard.Diverged(guard.diverged_message(diverged_at, epoch + 1, "the loss is not finite"))
                    if stop:
                        save(epoch, step + 1)
                        raise Preempted(f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; checkpoint "
                                        f"saved in {run.checkpoints} (resume with -o Global.auto_resume=True)")
                    if due and not last_of_epoch:
                        save(epoch, step + 1)
                    if self.global_step >= total_steps:
                        break
                if epoch_steps:
                    self.metric(type="epoch", epoch=epoch + 1, global_step=self.global_step,
                                loss=epoch_loss / epoch_steps, seconds=round(time.monotonic() - epoch_start, 2),
                                bad_images=loader.bad_images)
                finished = step + 1 == steps_per_epoch
                last = epoch + 1 == epochs or self.global_step >= total_steps
                task.after_epoch(self, epoch + 1, finished, last)
                if finished and ((epoch + 1) % g["save_interval"] == 0 or epoch + 1 == epochs):
                    save(epoch, step + 1)
                elif self.global_step >= total_steps:
                    save(epoch, step + 1)
        finally:
            preemption.restore()
            task.close()
        dist.average_buffers(env, net)
        if env.is_main:
            task.export(run.path)
        log.info("done: %d steps; %s", self.global_step, task.done_text(run.path))
        run.close()
        return net

    def _stop_if_diverged(self, nonfinite: "guard.NonFiniteLoss", net, epoch: int) -> None:
        """Before a save: Diverged on every rank if any rank saw a non-finite loss or holds a
        non-finite parameter (a non-finite gradient leaves one after the update)."""
        at, what = nonfinite.first_bad_step(), "the loss is not finite"
        if not at:
            name = guard.first_nonfinite_parameter(net)
            at, what = (self.global_step, f"parameter {name} is not finite") if name else (0, "")
        at = agree_to_stop(self.env, False, False, at)[2]
        if at:
            raise guard.Diverged(guard.diverged_message(at, epoch + 1, what or "another rank's loss or "
                                                        "parameters are not finite"))

    def _log_step(self, task: Task, progress: Progress, epoch: int, step: int, steps_per_epoch: int,
                  total_steps: int, lrs: dict, sums: dict, steps: int, last: dict) -> None:
        images_per_sec, eta = progress.tick(self.global_step)
        names = sorted(lrs, key=lambda name: name != "encoder")     # "lr" is the encoder's
        extra = task.log_fields(sums, steps, last)
        record = {"type": "step", "epoch": epoch + 1, "epochs": self.g["epochs"], "step": step + 1,
                  "steps_per_epoch": steps_per_epoch, "global_step": self.global_step,
                  "total_steps": total_steps, "loss": sums["loss"] / steps, "lr": lrs[names[0]],
                  **{f"lr_{name}": lrs[name] for name in names[1:]},
                  "images_per_sec": round(images_per_sec, 2), "eta_seconds": round(eta, 1),
                  **extra, "time": round(time.time(), 3)}
        self.metric(**record)
        if self.env.is_main:
            print(contract.progress_line(record), flush=True)
        text = task.log_text(record)
        log.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.5f  %s%.1f img/s  ETA %s", epoch + 1, self.g["epochs"],
                 step + 1, steps_per_epoch, record["loss"], record["lr"], f"{text}  " if text else "",
                 images_per_sec, format_eta(eta))
