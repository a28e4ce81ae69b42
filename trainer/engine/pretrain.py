"""SimSiam pretraining (Global.task_type: ContrastiveLearning): the task the Engine trains.

Output (OUTPUT_DIR): config.yaml, train.log, metrics.jsonl, checkpoints/, encoder.pdparams
(float32, whatever the AMP level).
"""
from __future__ import annotations

import logging
import math

import paddle

from trainer import checkpoint as ckpt
from trainer import contract, dist
from trainer.config import ConfigError
from trainer.data import build_eval_loader
from trainer.engine.amp import Amp
from trainer.engine.knn import evaluate_knn
from trainer.engine.loop import Engine, Task
from trainer.models import build_model
from trainer.models.simsiam import z_std
from trainer.optim import build_optimizer
from trainer.weights import WeightsError, load_into

log = logging.getLogger("trainer")

__all__ = ["Pretraining", "CollapseMonitor", "make_train_step", "train"]


class Pretraining(Task):
    name = "SimSiam pretraining"

    def __init__(self, engine: Engine):
        config, settings = engine.config, engine.settings
        # first: a bad name fails fast
        self.net = dist.use_sync_batch_norm(engine.env, build_model(config.model))
        self.loader = engine.train_loader()
        if settings.pretrained_model:
            try:
                # the backbone; the projector (fc) stays fresh
                load_into(self.net.encoder, settings.pretrained_model)
            except WeightsError as e:
                raise ConfigError(f"Global.pretrained_model: {e}") from None
        self.optimizer, self.group_lr = build_optimizer(self.net, config.optimizer, epochs=settings.epochs,
                                                        steps_per_epoch=len(self.loader))
        self.to_static = settings.to_static
        self.collapse = CollapseMonitor(self.net.dim, settings.collapse_warn_fraction,
                                        settings.collapse_patience)
        if config.eval_data:        # a small labelled folder: the kNN monitor's split
            self.eval_loader = build_eval_loader(config.eval_data, rank=engine.env.rank,
                                                 world_size=engine.env.world_size)

    def make_step(self, model, optimizer, amp):
        train_step = make_train_step(model, optimizer, amp, self.to_static)

        def step(views, labels):
            loss, z1 = train_step(views[0], views[1])
            return {"loss": loss}, {"z1": z1}
        return step

    def log_fields(self, sums, steps, last):
        std = z_std(last["z1"])
        warning = self.collapse.update(std)
        if warning:
            log.warning(warning)
        return {"z_std": std, **({"collapse_warning": True} if warning else {})}

    def log_text(self, fields):
        return f"z_std {fields['z_std']:.4f}"

    def after_epoch(self, engine, epoch, finished, last):
        if self.eval_loader is None or not engine.evaluation_due(epoch, finished, last):
            return
        result = evaluate_knn(self.net.encoder, self.eval_loader, engine.amp, engine.env.world_size)
        engine.metric(type="eval", epoch=epoch, global_step=engine.global_step, **result)
        log.info("kNN monitor epoch %d: top-1 %.4f (%d held-out images)", epoch, result["knn_top1"],
                 result["images"])

    def exports(self, output_dir):
        return {output_dir / contract.ENCODER: ckpt.encoder_state(self.net)}

    def done_text(self, output_dir):
        return f"encoder weights in {output_dir / contract.ENCODER}"


def train(cfg: dict):
    """Run (or resume) a pretraining run as configured and return the trained SimSiam model;
    raises Preempted after a SIGTERM checkpoint."""
    engine = Engine(cfg)
    return engine.fit(Pretraining(engine))


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
                    f"for {self.low} logs (healthy is about {self.healthy:.5f}); "
                    "check the lr and the predictor")
        return None
