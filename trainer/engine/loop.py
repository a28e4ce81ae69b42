"""The one training loop. A task (SimSiam pretraining, the linear probe, the smoke test) supplies its
model, optimizer, data and step; the Engine runs epochs and steps and calls its hooks
(trainer/engine/hooks.py) for everything around them: progress records, the divergence guard,
stops agreed between ranks, checkpoints. It also owns the set-up: process group, the output
directory's lock (and with it the rank-loss watchdog), CPU threads, seeds, AMP, and resume.

A task's step returns device tensors only; the Progress hook sums them on the device and reads
them back at logged steps, so a step never waits for the device to finish.
"""
from __future__ import annotations

import logging
import time

from trainer import checkpoint as ckpt
from trainer import contract, dist, guard, lock
from trainer.config import ConfigError
from trainer.data import build_train_loader
from trainer.engine.amp import Amp
from trainer.engine.hooks import (
    Checkpointing,
    DivergenceGuard,
    Hook,
    Preempted,
    Progress,
    Step,
    StopAgreement,
    format_eta,
)
from trainer.engine.output import OutputDir
from trainer.engine.process import seed_everything, set_cpu_threads
from trainer.engine.resume import resume_state
from trainer.sections import Config

log = logging.getLogger("trainer")


class Task:
    """What a task supplies. Set by the task's constructor: name, net (the bare model, saved in
    checkpoints), optimizer and group_lr (from trainer.optim.build_optimizer), loader."""

    name = "training"
    train_mode = True            # model.train() every epoch; the probe keeps its frozen BN in eval mode
    saves_checkpoints = True     # the smoke test neither saves nor resumes
    stops_on_divergence = True   # the smoke test reports a non-finite loss instead
    eval_loader = None           # DataLoader.Eval, when the task evaluates after epochs
    epochs: int | None = None    # None: Global.epochs

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

    def after_epoch(self, engine: Engine, epoch: int, finished: bool, last: bool) -> None:
        """After each epoch (1-based `epoch`), before its checkpoint: e.g. an evaluation."""

    def extra_state(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        pass

    def exports(self, output_dir) -> dict:
        """{path: state} of the task's weights files (rank 0 writes them with every checkpoint and
        at the end)."""
        return {}

    def done_text(self, output_dir) -> str:
        return ""

    def close(self) -> None:
        self.loader.close()
        if self.eval_loader is not None:
            self.eval_loader.close()


class Engine:
    def __init__(self, cfg: dict, *, resumes: bool = True, refuse_amp_on_cpu: bool = True):
        """`cfg`: a validated config (trainer.config.load_config). Tasks read its typed views,
        `config` (and `settings`, its Global section); the dict itself is what config.yaml is
        written from. `refuse_amp_on_cpu=False`: the smoke test runs an AMP config on a CPU to
        report that AMP did not take effect, where training would refuse it."""
        config = Config.of(cfg)
        settings = config.global_
        if settings.accum_steps != 1:
            raise ConfigError("bad value for 'Global.accum_steps': only 1 is supported; raise "
                              "DataLoader.Train.sampler.batch_size or the number of devices instead")
        self.cfg, self.config, self.settings = cfg, config, settings
        self.env = dist.init(settings.device)
        # before any write to the output directory
        takeover, self.restart_history = lock.claim(settings, self.env)
        self.threads = set_cpu_threads(settings.num_threads) if self.env.device == "cpu" else None
        self.amp = Amp(config.fp16, self.env.device if refuse_amp_on_cpu else "gpu")
        self.output = OutputDir(cfg, settings, self.env.rank)
        if takeover:
            log.warning(takeover)
        seed_everything(settings.seed, self.env.rank)
        # early: a bad checkpoint fails before the slow set-up of data and model
        self.resumed = resume_state(settings, self.output.checkpoints, self.env) if resumes else None
        self.global_step = self.start_epoch = self.start_step = self.step_in_epoch = 0
        self.epochs = self.steps_per_epoch = self.total_steps = self.global_batch = 0

    def train_loader(self):
        if self.config.train_data is None:
            raise ConfigError("missing required section 'DataLoader.Train'")
        loader = build_train_loader(self.config.train_data, rank=self.env.rank,
                                    world_size=self.env.world_size, seed=self.settings.seed or 0,
                                    index_dir=self.output.path)
        if len(loader) == 0:
            raise ConfigError("DataLoader.Train gives no batches per epoch (dataset smaller than a batch)")
        return loader

    def metric(self, **fields) -> None:
        self.output.metric(**fields)

    def evaluation_due(self, epoch: int, finished: bool, last: bool) -> bool:
        """After the last epoch, and every Global.eval_interval epochs with Global.eval_during_train."""
        return last or (finished and self.settings.eval_during_train
                        and epoch % self.settings.eval_interval == 0)

    def hooks(self, task: Task) -> list[Hook]:
        divergence, stops = DivergenceGuard(), StopAgreement(self.settings.save_interval_minutes)
        hooks: list[Hook] = [Progress(), *([divergence] if task.stops_on_divergence else []), stops]
        if task.saves_checkpoints:
            hooks.append(Checkpointing(self.settings, divergence, stops))
        return hooks

    # ------------------------------------------------------------------------------------------

    def fit(self, task: Task):
        """Train (or resume) `task` to the end; returns its model. Raises hooks.Preempted after a
        SIGTERM checkpoint, guard.Diverged on a non-finite loss or parameter."""
        net, optimizer = self.amp.decorate(task.net, task.optimizer)
        task.net, task.optimizer = net, optimizer
        self._plan(task)
        self._restore(task)
        model, optimizer = dist.wrap(self.env, net, optimizer)
        step_fn = task.make_step(model, optimizer, self.amp)
        hooks = self.hooks(task)
        try:
            for hook in hooks:
                hook.before_fit(self, task)
            for epoch in range(self.start_epoch, self.epochs):
                if self.global_step >= self.total_steps:
                    break
                self._epoch(task, model, step_fn, hooks, epoch)
        finally:
            for hook in hooks:
                hook.close()
            task.close()
        dist.average_buffers(self.env, net)
        if self.env.is_main:
            for path, state in task.exports(self.output.path).items():
                ckpt.save_object(state, path)
        log.info("done: %d steps; %s", self.global_step, task.done_text(self.output.path))
        self.output.close()
        return net

    def _plan(self, task: Task) -> None:
        settings = self.settings
        self.steps_per_epoch, self.epochs = len(task.loader), task.epochs or settings.epochs
        self.total_steps = self.epochs * self.steps_per_epoch
        if settings.max_train_step:
            self.total_steps = min(self.total_steps, settings.max_train_step)
        self.global_batch = self.config.train_data.sampler.batch_size * self.env.world_size
        log.info("%s: %s, %d process(es) on %s%s, %s, %d images, global batch %d, %d steps/epoch, %d epochs",
                 task.name, self.config.model.name, self.env.world_size, self.env.device,
                 f" ({self.threads} threads)" if self.threads else "", self.amp.describe(),
                 task.loader.num_samples, self.global_batch, self.steps_per_epoch, self.epochs)

    def _restore(self, task: Task) -> None:
        """The resumed checkpoint into the task's model and optimizer, the RNGs and the position."""
        if self.resumed is None:
            return
        path, state = self.resumed
        guard.check_model_state(task.net, state["model"], path)     # one line, not paddle's warnings
        task.net.set_state_dict(state["model"])
        ckpt.load_optimizer_state(task.optimizer, task.net, state["optimizer"])
        self.amp.set_state_dict(state.get("amp") or {})
        ckpt.set_rng_state(state["rng"])
        task.set_extra_state(state)
        self.start_epoch, self.start_step, self.global_step = (state["epoch"], state["step"],
                                                               state["global_step"])
        log.info("resumed from %s at epoch %d, step %d", path, self.start_epoch, self.start_step)

    def _epoch(self, task: Task, model, step_fn, hooks: list[Hook], epoch: int) -> None:
        first_step = self.start_step if epoch == self.start_epoch else 0
        task.loader.set_epoch(epoch, first_step)
        model.train() if task.train_mode else model.eval()
        for index, (views, labels) in enumerate(task.loader, start=first_step):
            lrs = task.group_lr.set(epoch, index)
            out, latest = step_fn([task.loader.to_tensor(v) for v in views], labels)
            self.global_step += 1
            self.step_in_epoch = index + 1
            logged = (self.global_step % self.settings.print_batch_step == 0
                      or index + 1 == self.steps_per_epoch
                      or self.global_step >= self.total_steps)
            step = Step(epoch, index, out, latest, lrs, logged)
            for hook in hooks:
                hook.after_step(self, task, step)
            if step.stop:       # a task that saves nothing (the smoke test) stops here
                raise Preempted(f"stopped by SIGTERM at epoch {epoch + 1}, step {index + 1}")
            if self.global_step >= self.total_steps:
                break
        finished = self.step_in_epoch == self.steps_per_epoch
        last = epoch + 1 == self.epochs or self.global_step >= self.total_steps
        hooks[0].after_epoch(self, task, epoch + 1, finished, last)      # the epoch record first
        task.after_epoch(self, epoch + 1, finished, last)               # e.g. an evaluation
        for hook in hooks[1:]:
            hook.after_epoch(self, task, epoch + 1, finished, last)

    def log_step(self, task: Task, step: Step, window_steps: int, rate) -> None:
        """One step record: metrics.jsonl, rank 0's progress line on stdout, the log line."""
        images_per_sec, eta = rate.tick(self.global_step)
        names = sorted(step.lrs, key=lambda name: name != "encoder")     # "lr" is the encoder's
        extra = task.log_fields(step.sums, window_steps, step.latest)
        record = {"type": "step", "epoch": step.epoch + 1, "epochs": self.epochs, "step": step.index + 1,
                  "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
                  "total_steps": self.total_steps, "loss": step.sums["loss"] / window_steps,
                  "lr": step.lrs[names[0]], **{f"lr_{name}": step.lrs[name] for name in names[1:]},
                  "images_per_sec": round(images_per_sec, 2), "eta_seconds": round(eta, 1), **extra}
        self.progress_record(record)
        text = task.log_text(record)
        log.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.5f  %s%.1f img/s  ETA %s", step.epoch + 1,
                 self.epochs, step.index + 1, self.steps_per_epoch, record["loss"], record["lr"],
                 f"{text}  " if text else "", images_per_sec, format_eta(eta))

    def progress_record(self, record: dict) -> None:
        """A step record (trainer.contract's progress fields) in metrics.jsonl and, from rank 0,
        as a progress line on stdout (what a follower reads where only the log is reachable)."""
        record = {**record, **self.restart_history, "time": round(time.time(), 3)}
        self.metric(**record)
        if self.env.is_main:
            print(contract.progress_line(record), flush=True)
