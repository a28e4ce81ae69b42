"""Linear probe (Global.task_type: Classification): a linear classifier on frozen features.

    simsiam-train -c simsiam_resnet50_lp_in1k_1n8c_dp_fp32.yaml -o Global.pretrained_model=ENCODER
    simsiam-train eval -c CONFIG -o Global.pretrained_model=PROBE_WEIGHTS

Output (OUTPUT_DIR): config.yaml, train.log, metrics.jsonl, checkpoints/, probe.pdparams (the trained
probe: paddle.vision ResNet names with fc), eval.json (best and last top-1/top-5, with their epochs).
The loop (output directory, logs, progress, checkpoints, SIGTERM, AMP) is the Engine's.
"""
from __future__ import annotations

import json
import logging

import paddle
import paddle.nn.functional as F

from trainer import checkpoint as ckpt
from trainer import contract, dist
from trainer.config import ConfigError
from trainer.data import build_eval_loader
from trainer.engine.evaluate import evaluate, topk_hits
from trainer.engine.loop import Engine, Task
from trainer.engine.process import set_cpu_threads
from trainer.models import build_model
from trainer.optim import build_optimizer
from trainer.sections import Config, Model, PerSplit
from trainer.weights import WeightsError, load_into

log = logging.getLogger("trainer")

PROBE = contract.PROBE


# ---------------------------------------------------------------- config pieces

def loss_weight(loss: PerSplit, split: str) -> float:
    """PASSL's Loss.<split>: [CELoss: {weight: w}] -- the probe's only loss."""
    items = loss.of_split(split) or [{"CELoss": {"weight": 1.0}}]
    weight = 0.0
    for item in items:
        name, params = next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (item, None)
        if name != "CELoss":
            raise ConfigError(f"bad value for 'Loss.{split}': {name!r} (the linear probe supports CELoss)")
        weight += float((params or {}).get("weight", 1.0))
    return weight


def topk(metric: PerSplit, split: str) -> tuple[int, ...]:
    """PASSL's Metric.<split>: [TopkAcc: {topk: [1, 5]}]."""
    for item in metric.of_split(split) or []:
        if isinstance(item, dict) and "TopkAcc" in item:
            ks = (item["TopkAcc"] or {}).get("topk", [1, 5])
            if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
                raise ConfigError(f"bad value for 'Metric.{split}.TopkAcc.topk': {ks!r} (positive integers)")
            return tuple(ks)
    return (1, 5)


def build_probe(section: Model, weights_spec: str | None, with_head: bool):
    """The probe model with its weights loaded; an error lists any key that does not fit."""
    model = build_model(section)
    if not hasattr(model, "fc") or not hasattr(model, "feature_dim"):
        raise ConfigError(f"Model.name {section.name!r} is not a linear-probe model "
                          "(use e.g. simsiam_resnet50_linearprobe)")
    if weights_spec:
        try:
            loaded = load_into(model, weights_spec, with_head=with_head)
        except WeightsError as e:
            raise ConfigError(f"Global.pretrained_model: {e}") from None
        log.info("loaded %d tensors from %s", len(loaded), weights_spec)
    return model


# ---------------------------------------------------------------- training

class LinearProbe(Task):
    name = "linear probe"
    train_mode = False   # frozen backbone, BN on running statistics, no dropout: train() would change nothing

    def __init__(self, engine: Engine):
        config, settings, env = engine.config, engine.settings, engine.env
        self.model_name, self.pretrained = config.model.name, settings.pretrained_model
        self.loader = engine.train_loader()
        if config.eval_data:
            self.eval_loader = build_eval_loader(config.eval_data, rank=env.rank, world_size=env.world_size)
        if not settings.pretrained_model:
            log.warning("WARNING: Global.pretrained_model is not set: probing a randomly initialised encoder")
        # Rank 0 alone reads the weights: the data-parallel wrapper broadcasts its parameters and
        # buffers to every rank (the others need not see the file: on Kubernetes only rank 0
        # mounts the output claim).
        self.net = build_probe(config.model, settings.pretrained_model if env.is_main else None,
                               with_head=False)
        self.optimizer, self.group_lr = build_optimizer(self.net, config.optimizer, epochs=settings.epochs,
                                                        steps_per_epoch=len(self.loader),
                                                        lr_section=config.lr_scheduler)
        self.weight = loss_weight(config.loss, "Train")
        self.train_ks, self.eval_ks = topk(config.metric, "Train"), topk(config.metric, "Eval")
        self.world_size, self.history = env.world_size, {}

    def make_step(self, model, optimizer, amp):
        def step(views, labels):
            y = paddle.to_tensor(labels)
            with amp.autocast():
                logits = model(views[0])
            loss = self.weight * F.cross_entropy(logits.astype("float32"), y)
            amp.backward_and_step(loss, optimizer)
            hits = topk_hits(logits.detach(), y, self.train_ks)
            return {"loss": loss.detach(), "images": paddle.to_tensor(len(labels)), **hits}, {}
        return step

    def log_fields(self, sums, steps, last):
        return {f"top{k}": sums[f"top{k}"] / sums["images"] for k in self.train_ks}

    def log_text(self, fields):
        k = self.train_ks[0]
        return f"top-{k} {fields[f'top{k}']:.4f}"

    def after_epoch(self, engine, epoch, finished, last):
        if self.eval_loader is None or not engine.evaluation_due(epoch, finished, last):
            return
        ks = self.eval_ks
        with engine.amp.autocast():         # O2's float16 weights need their inputs cast
            result = evaluate(self.net, self.eval_loader, ks, self.world_size)
        record = {"epoch": epoch, **result}
        self.history["last"] = record
        if "best" not in self.history or record[f"top{ks[0]}"] > self.history["best"][f"top{ks[0]}"]:
            self.history["best"] = record
        engine.metric(type="eval", global_step=engine.global_step, **record)
        log.info("eval epoch %d: %s  (%d images; best top-%d %.4f at epoch %d)", epoch,
                 "  ".join(f"top-{k} {result[f'top{k}']:.4f}" for k in ks), result["images"],
                 ks[0], self.history["best"][f"top{ks[0]}"], self.history["best"]["epoch"])
        if engine.env.is_main:
            ckpt.atomic_write(engine.output.path / contract.EVAL, (json.dumps(
                {**self.history, "pretrained_model": self.pretrained, "model": self.model_name},
                indent=2) + "\n").encode())

    def extra_state(self):
        return {"eval": self.history}

    def set_extra_state(self, state):
        self.history = state.get("eval") or {}

    def exports(self, output_dir):
        return {output_dir / PROBE: ckpt.float32_state(self.net.state_dict())}

    def done_text(self, output_dir):
        return f"probe weights in {output_dir / PROBE}" + \
            (f"; eval in {output_dir / contract.EVAL}" if self.history else "")


def train(cfg: dict):
    """Train (or resume) the probe as configured; returns the model. Raises Preempted after SIGTERM."""
    engine = Engine(cfg)
    return engine.fit(LinearProbe(engine))


# ---------------------------------------------------------------- evaluation alone

def evaluate_only(cfg: dict) -> dict:
    """`simsiam-train eval`: top-k of a trained probe (Global.pretrained_model, with its fc) on
    DataLoader.Eval over all ranks; prints one JSON object on rank 0."""
    config = Config.of(cfg)
    settings = config.global_
    spec = settings.pretrained_model or settings.checkpoint
    if not spec:
        raise ConfigError("simsiam-train eval needs the trained probe: -o Global.pretrained_model=PATH "
                          "(probe.pdparams, a checkpoint, or a URL)")
    if config.eval_data is None:
        raise ConfigError("missing required section 'DataLoader.Eval'")
    env = dist.init(settings.device)
    if env.device == "cpu":
        set_cpu_threads(settings.num_threads)
    loader = build_eval_loader(config.eval_data, rank=env.rank, world_size=env.world_size)
    net = build_probe(config.model, spec, with_head=True)
    try:
        result = evaluate(net, loader, topk(config.metric, "Eval"), env.world_size)
    finally:
        loader.close()
    if env.is_main:
        print(json.dumps({"weights": str(spec), "model": config.model.name, **result}), flush=True)
    return result
