"""The parts of the training loop around a task's step, one place each, called by the Engine in
this order after every step and every epoch:

    Progress        step records at Global.print_batch_step (metrics.jsonl, the log, a stdout
                    progress line), epoch records; the only place the step's sums are read back
    DivergenceGuard a non-finite loss, remembered on the device, found at logged steps
    StopAgreement   SIGTERM, a timed save and divergence agreed between ranks (one collective at
                    logged steps): every rank stops or saves at the same step
    Checkpointing   saves at the step, minute and epoch intervals, at the end and after SIGTERM;
                    never after a non-finite loss or parameter

(The rank-loss watchdog starts as the group forms, before resume: trainer.lock.claim.)
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import TYPE_CHECKING

import paddle

from trainer import checkpoint as ckpt
from trainer import dist, guard, outcome
from trainer.config import dump
from trainer.sections import Global

if TYPE_CHECKING:
    from trainer.engine.loop import Engine, Task

log = logging.getLogger("trainer")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved. The CLI exits 143 with this message."""


@dataclasses.dataclass
class Step:
    """What one step leaves for the hooks; `epoch` and `index` count from 0."""

    epoch: int
    index: int
    out: dict                      # the task's device tensors to sum between logs ("loss", ...)
    latest: dict                   # the task's device tensors of this step only
    lrs: dict
    logged: bool = False           # a step record is written after this step
    sums: dict | None = None       # host floats at logged steps: the window's sums
    diverged_at: int = 0           # the group's first global step with a non-finite loss (0: none)
    stop: bool = False             # the group agreed to stop here (SIGTERM)
    save_due: bool = False         # a timed save is due


class Hook:
    def before_fit(self, engine: Engine, task: Task) -> None:
        pass

    def after_step(self, engine: Engine, task: Task, step: Step) -> None:
        pass

    def after_epoch(self, engine: Engine, task: Task, epoch: int, finished: bool, last: bool) -> None:
        """`epoch` counts from 1; `finished`: every step of it ran; `last`: the run ends after it."""

    def close(self) -> None:
        pass


class Progress(Hook):
    """Sums the step outputs on the device between logs and reads them back once per log."""

    def before_fit(self, engine, task):
        self.window: dict = {}
        self.window_steps = 0
        self.rate = Throughput(engine.total_steps, engine.global_step, engine.global_batch)
        self.epoch_start, self.epoch_loss, self.epoch_steps = time.monotonic(), 0.0, 0

    def after_step(self, engine, task, step):
        outcome.progress["global_step"] = engine.global_step
        for key, value in step.out.items():
            self.window[key] = self.window[key] + value if key in self.window else value
        self.window_steps += 1
        if not step.logged:
            return
        step.sums = dict(zip(self.window, paddle.stack(
            [v.astype("float32").reshape([]) for v in self.window.values()]).numpy().tolist(), strict=True))
        self.epoch_loss += step.sums["loss"]
        self.epoch_steps += self.window_steps
        engine.log_step(task, step, self.window_steps, self.rate)
        self.window, self.window_steps = {}, 0

    def after_epoch(self, engine, task, epoch, finished, last):
        if self.epoch_steps:
            engine.metric(type="epoch", epoch=epoch, global_step=engine.global_step,
                          loss=self.epoch_loss / self.epoch_steps,
                          seconds=round(time.monotonic() - self.epoch_start, 2),
                          bad_images=getattr(task.loader, "bad_images", 0))
        self.epoch_start, self.epoch_loss, self.epoch_steps = time.monotonic(), 0.0, 0


class DivergenceGuard(Hook):
    def before_fit(self, engine, task):
        self.nonfinite = guard.NonFiniteLoss()

    def after_step(self, engine, task, step):
        self.nonfinite.observe(step.out["loss"], engine.global_step)
        if step.logged and not math.isfinite(step.sums["loss"]):
            step.diverged_at = self.nonfinite.first_bad_step() or engine.global_step

    def check_before_save(self, engine, net, epoch: int) -> None:
        """Diverged on every rank if any rank saw a non-finite loss or holds a non-finite
        parameter (a non-finite gradient leaves one after the update): never a NaN checkpoint."""
        at, what = self.nonfinite.first_bad_step(), "the loss is not finite"
        if not at:
            name = guard.first_nonfinite_parameter(net)
            at, what = (engine.global_step, f"parameter {name} is not finite") if name else (0, "")
        at = agree_to_stop(engine.env, False, False, at)[2]
        if at:
            raise guard.Diverged(guard.diverged_message(at, epoch + 1, what or "another rank's loss or "
                                                        "parameters are not finite"))


class StopAgreement(Hook):
    """SIGTERM and the clock differ between ranks: they agree, with one collective, at logged
    steps (at every step on one process)."""

    def __init__(self, save_interval_minutes: float):
        self.minutes = save_interval_minutes

    def before_fit(self, engine, task):
        self.preemption = PreemptionSignal()
        self.last_save = time.monotonic()

    def after_step(self, engine, task, step):
        if engine.env.world_size > 1 and not step.logged:
            return
        due = bool(self.minutes) and time.monotonic() - self.last_save >= 60 * self.minutes
        step.stop, step.save_due, step.diverged_at = agree_to_stop(
            engine.env, self.preemption.requested, due, step.diverged_at)
        if step.diverged_at:
            raise guard.Diverged(guard.diverged_message(step.diverged_at, step.epoch + 1,
                                                        "the loss is not finite"))

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def close(self):
        self.preemption.restore()


class Checkpointing(Hook):
    """Global.save_interval (epochs), save_interval_steps, save_interval_minutes (through the
    StopAgreement), the end of the run, and SIGTERM; with each save the task exports its weights.
    Files are written in the background (checkpoint.CheckpointWriter), one write at a time."""

    def __init__(self, settings: Global, divergence: DivergenceGuard, stops: StopAgreement):
        self.epoch_interval, self.step_interval = settings.save_interval, settings.save_interval_steps
        self.keep = settings.max_num_latest_checkpoint
        self.divergence, self.stops = divergence, stops
        self.writer = ckpt.CheckpointWriter()

    def before_fit(self, engine, task):
        self.retention = guard.Retention(engine.output.checkpoints, self.keep)

    def after_step(self, engine, task, step):
        last_of_epoch = step.index + 1 == engine.steps_per_epoch
        if step.stop:
            self.save(engine, task, step.epoch, step.index + 1)
            self.writer.wait()                  # the checkpoint is complete before the exit
            raise Preempted(f"stopped by SIGTERM at epoch {step.epoch + 1}, step {step.index + 1}; "
                            f"checkpoint saved in {engine.output.checkpoints} "
                            "(resume with -o Global.auto_resume=True)")
        due = step.save_due or (bool(self.step_interval) and engine.global_step % self.step_interval == 0)
        if due and not last_of_epoch:
            self.save(engine, task, step.epoch, step.index + 1)

    def after_epoch(self, engine, task, epoch, finished, last):
        if (finished and (epoch % self.epoch_interval == 0 or epoch == engine.epochs)) \
                or engine.global_step >= engine.total_steps:
            self.save(engine, task, epoch - 1, engine.steps_per_epoch if finished else engine.step_in_epoch)

    def save(self, engine, task, epoch: int, step: int) -> None:
        """The state after `step` steps of `epoch` (0-based): rank 0 writes it, every rank agrees
        first that nothing diverged."""
        net = task.net
        self.divergence.check_before_save(engine, net, epoch)
        if step == engine.steps_per_epoch:
            epoch, step = epoch + 1, 0
        dist.average_buffers(engine.env, net)
        if engine.env.is_main:
            state = {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(task.optimizer, net),
                     "scheduler": {"lr": task.group_lr.schedule(min(epoch, engine.epochs - 1), 0)},
                     "amp": engine.amp.state_dict(), "epoch": epoch, "step": step,
                     "global_step": engine.global_step, "rng": ckpt.rng_state(), "config": dump(engine.cfg),
                     **task.extra_state()}
            # The loop waits only while the state is copied to host memory; a thread writes it.
            self.writer.save(engine.output.checkpoints, state, task.exports(engine.output.path),
                             after=self.written)
        self.stops.saved()

    def written(self, path) -> None:
        """In the writer's thread, once the checkpoint and the weights files are complete."""
        self.retention.written(path)
        self.retention.apply()
        log.info("saved checkpoint %s", path)

    def close(self) -> None:
        self.writer.wait()          # a checkpoint under way is completed, however the loop ends


# ---- pieces of the above ------------------------------------------------------------------------

class Throughput:
    """Images/s and ETA over a run of `total_steps`, for the progress records."""

    def __init__(self, total_steps: int, done_steps: int, images_per_step: int):
        self.total, self.done0 = total_steps, done_steps
        self.images_per_step = images_per_step
        self.start = self.mark = time.monotonic()
        self.mark_step = done_steps

    def tick(self, done_steps: int) -> tuple[float, float]:
        """(images/s since the last tick, seconds left at the average rate since the start)."""
        now = time.monotonic()
        rate = (done_steps - self.mark_step) * self.images_per_step / max(now - self.mark, 1e-9)
        per_step = (now - self.start) / max(done_steps - self.done0, 1)
        self.mark, self.mark_step = now, done_steps
        return rate, per_step * (self.total - done_steps)


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PreemptionSignal:
    """Turns SIGTERM (Kubernetes' and Slurm's preemption signal) into a flag the loop checks between
    steps, so the checkpoint is written from a consistent state."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if not self.requested:
            log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def agree_to_stop(env, stop: bool, due: bool, diverged_at: int = 0) -> tuple[bool, bool, int]:
    """Every rank must save (a collective) and stop at the same step: take the max over ranks.
    `diverged_at`, the first global step with a non-finite loss on this rank (0: none), becomes the
    group's earliest (negated, so the max finds it)."""
    stop, due, earliest = dist.all_reduce_max([stop, due, -diverged_at if diverged_at else -math.inf], env)
    return stop > 0, due > 0, 0 if earliest == -math.inf else int(-earliest)

