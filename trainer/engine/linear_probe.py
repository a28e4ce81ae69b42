"""Linear probe (Global.task_type: Classification): a linear classifier on frozen features.

    simsiam-train -c simsiam_resnet50_lp_in1k_1n8c_dp_fp32.yaml -o Global.pretrained_model=ENCODER
    simsiam-train eval -c CONFIG -o Global.pretrained_model=PROBE_WEIGHTS

Output (OUTPUT_DIR): config.yaml, train.log, metrics.jsonl, checkpoints/, probe.pdparams (the trained
probe: paddle.vision ResNet names with fc), eval.json (best and last top-1/top-5, with their epochs).
The run plumbing (output directory, logs, progress, checkpoints, SIGTERM) is the pretraining's.
"""
from __future__ import annotations

import json
import logging
import time

import paddle
import paddle.nn.functional as F

from trainer import checkpoint as ckpt
from trainer import dist
from trainer.config import ConfigError, dump
from trainer.data import build_eval_loader, build_train_loader
from trainer.engine.evaluate import evaluate, topk_correct
from trainer.engine.run import (Preempted, PreemptionSignal, Progress, RunDir, agree_to_stop,
                                format_eta, resume_state, seed_everything, set_cpu_threads)
from trainer.models import build_model
from trainer.optim.lars import MomentumLARC
from trainer.optim.schedule import LRSchedule
from trainer.weights import WeightsError, load_into

log = logging.getLogger("trainer")


# ---------------------------------------------------------------- config pieces

def loss_weight(cfg: dict, split: str) -> float:
    """PASSL's Loss.<split>: [CELoss: {weight: w}] -- the probe's only loss."""
    items = (cfg.get("Loss") or {}).get(split) or [{"CELoss": {"weight": 1.0}}]
    weight = 0.0
    for item in items:
        name, params = next(iter(item.items())) if isinstance(item, dict) and len(item) == 1 else (item, None)
        if name != "CELoss":
            raise ConfigError(f"bad value for 'Loss.{split}': {name!r} (the linear probe supports CELoss)")
        weight += float((params or {}).get("weight", 1.0))
    return weight


def topk(cfg: dict, split: str) -> tuple[int, ...]:
    """PASSL's Metric.<split>: [TopkAcc: {topk: [1, 5]}]."""
    for item in (cfg.get("Metric") or {}).get(split) or []:
        if isinstance(item, dict) and "TopkAcc" in item:
            ks = (item["TopkAcc"] or {}).get("topk", [1, 5])
            if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
                raise ConfigError(f"bad value for 'Metric.{split}.TopkAcc.topk': {ks!r} (positive integers)")
            return tuple(ks)
    return (1, 5)


def build_probe_optimizer(model, cfg: dict, *, epochs: int, steps_per_epoch: int):
    """(optimizer over fc only, LRSchedule) from Optimizer and LRScheduler (or Optimizer.lr)."""
    opt = cfg["Optimizer"]
    lr_cfg = cfg.get("LRScheduler") or opt.get("lr")
    if not lr_cfg:
        raise ConfigError("missing required section 'LRScheduler' (or 'Optimizer.lr')")
    schedule = LRSchedule.from_config(lr_cfg, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      decay_unit=opt.get("lr_decay_unit"))
    params = [p for p in model.parameters() if not p.stop_gradient]
    if opt["name"] in ("MomentumLARC", "LARS"):
        optimizer = MomentumLARC(schedule(0, 0), params, momentum=opt.get("momentum", 0.9),
                                 weight_decay=opt.get("weight_decay", 0.0),
                                 trust_coefficient=opt.get("trust_coefficient", 0.001),
                                 clip=opt.get("clip", False), eps=opt.get("epsilon", 1e-8))
    elif opt["name"] in ("Momentum", "SGD"):
        decay = opt.get("weight_decay", 0.0)
        optimizer = paddle.optimizer.Momentum(
            schedule(0, 0), momentum=opt.get("momentum", 0.9) if opt["name"] == "Momentum" else 0.0,
            parameters=params, weight_decay=paddle.regularizer.L2Decay(decay) if decay else None)
    else:
        raise ConfigError(f"bad value for 'Optimizer.name': {opt['name']!r} for the linear probe "
                          "(MomentumLARC, LARS, Momentum or SGD)")
    return optimizer, schedule


def build_probe(cfg: dict, weights_spec: str | None, with_head: bool):
    """The probe model with its weights loaded; an error lists any key that does not fit."""
    model = build_model(cfg["Model"])
    if not hasattr(model, "fc") or not hasattr(model, "feature_dim"):
        raise ConfigError(f"Model.name {cfg['Model']['name']!r} is not a linear-probe model "
                          "(use e.g. simsiam_resnet50_linearprobe)")
    if weights_spec:
        try:
            loaded = load_into(model, weights_spec, with_head=with_head)
        except WeightsError as e:
            raise ConfigError(f"Global.pretrained_model: {e}") from None
        log.info("loaded %d tensors from %s", len(loaded), weights_spec)
    return model


# ---------------------------------------------------------------- training

def train(cfg: dict):
    """Train (or resume) the probe as configured; returns the model. Raises Preempted after SIGTERM."""
    g = cfg["Global"]
    if g["accum_steps"] != 1:
        raise ConfigError("bad value for 'Global.accum_steps': only 1 is supported")
    env = dist.init(g["device"])
    threads = set_cpu_threads(g["num_threads"]) if env.device == "cpu" else None
    run = RunDir(cfg, env.rank)
    seed_everything(g["seed"], env.rank)

    train_loader = build_train_loader(cfg["DataLoader"]["Train"], rank=env.rank, world_size=env.world_size,
                                      seed=g["seed"] or 0)
    eval_cfg = cfg["DataLoader"].get("Eval")
    eval_loader = build_eval_loader(eval_cfg, rank=env.rank, world_size=env.world_size) if eval_cfg else None
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError("DataLoader.Train gives no batches per epoch (dataset smaller than a batch)")
    if not g["pretrained_model"]:
        log.warning("WARNING: Global.pretrained_model is not set: probing a randomly initialised encoder")
    net = build_probe(cfg, g["pretrained_model"], with_head=False)
    optimizer, schedule = build_probe_optimizer(net, cfg, epochs=g["epochs"], steps_per_epoch=steps_per_epoch)
    weight, train_ks, eval_ks = loss_weight(cfg, "Train"), topk(cfg, "Train"), topk(cfg, "Eval")

    start_epoch, start_step, global_step, history = 0, 0, 0, {}
    resumed = resume_state(g, run)
    if resumed is not None:
        path, state = resumed
        net.set_state_dict(state["model"])
        ckpt.load_optimizer_state(optimizer, net, state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        history = state.get("eval") or {}
        log.info("resumed from %s at epoch %d, step %d", path, start_epoch, start_step)
    model, optimizer = dist.wrap(env, net, optimizer)

    batch = cfg["DataLoader"]["Train"]["sampler"]["batch_size"]
    total_steps = g["epochs"] * steps_per_epoch
    if g["max_train_step"]:
        total_steps = min(total_steps, g["max_train_step"])
    log.info("linear probe: %s, %d process(es) on %s%s, %d training images, global batch %d, "
             "%d steps/epoch, %d epochs", cfg["Model"]["name"], env.world_size, env.device,
             f" ({threads} threads)" if threads else "", train_loader.num_samples,
             batch * env.world_size, steps_per_epoch, g["epochs"])
    progress = Progress(total_steps, global_step, batch * env.world_size)
    preemption = PreemptionSignal()
    last_save = time.monotonic()

    def save(epoch: int, step: int) -> None:
        nonlocal last_save
        if step == steps_per_epoch:
            epoch, step = epoch + 1, 0
        if env.is_main:
            state = {"model": net.state_dict(), "optimizer": ckpt.optimizer_state(optimizer, net),
                     "scheduler": {"lr": schedule(min(epoch, g["epochs"] - 1), 0)}, "epoch": epoch,
                     "step": step, "global_step": global_step, "rng": ckpt.rng_state(),
                     "config": dump(cfg), "eval": history}
            path = ckpt.save_checkpoint(run.checkpoints, state, keep=g["max_num_latest_checkpoint"])
            ckpt.save_object(net.state_dict(), run.path / "probe.pdparams")
            log.info("saved checkpoint %s", path)
        last_save = time.monotonic()

    def run_eval(epoch: int) -> None:
        result = evaluate(net, eval_loader, eval_ks, env.world_size)
        record = {"epoch": epoch, **result}
        history["last"] = record
        if "best" not in history or record[f"top{eval_ks[0]}"] > history["best"][f"top{eval_ks[0]}"]:
            history["best"] = record
        run.metric(type="eval", global_step=global_step, **record)
        log.info("eval epoch %d: %s  (%d images; best top-%d %.4f at epoch %d)", epoch,
                 "  ".join(f"top-{k} {result[f'top{k}']:.4f}" for k in eval_ks), result["images"],
                 eval_ks[0], history["best"][f"top{eval_ks[0]}"], history["best"]["epoch"])
        if env.is_main:
            ckpt.atomic_write(run.path / "eval.json", (json.dumps(
                {**history, "pretrained_model": g["pretrained_model"], "model": cfg["Model"]["name"]},
                indent=2) + "\n").encode())

    try:
        for epoch in range(start_epoch, g["epochs"]):
            if global_step >= total_steps:
                break
            first_step = start_step if epoch == start_epoch else 0
            train_loader.set_epoch(epoch, first_step)
            # Frozen backbone, BN on running statistics, no dropout: train() would change nothing.
            model.eval()
            epoch_start, sums, counted, step = time.monotonic(), [0.0] * (len(train_ks) + 1), 0, first_step - 1
            for step, (views, labels) in enumerate(train_loader, start=first_step):
                lr = schedule(epoch, step)
                optimizer.set_lr(lr)
                x, y = train_loader.to_tensor(views[0]), paddle.to_tensor(labels)
                logits = model(x)
                loss = weight * F.cross_entropy(logits, y)
                loss.backward()
                optimizer.step()
                optimizer.clear_grad()
                global_step += 1
                sums[0] += float(loss) * len(labels)
                for i, hits in enumerate(topk_correct(logits.detach(), y, train_ks)):
                    sums[i + 1] += hits
                counted += len(labels)
                last_of_epoch = step + 1 == steps_per_epoch
                if global_step % g["print_batch_step"] == 0 or last_of_epoch or global_step >= total_steps:
                    images_per_sec, eta = progress.tick(global_step)
                    accs = {f"top{k}": sums[i + 1] / counted for i, k in enumerate(train_ks)}
                    run.metric(type="step", epoch=epoch + 1, step=step + 1, global_step=global_step,
                               loss=sums[0] / counted, lr=lr, images_per_sec=round(images_per_sec, 2), **accs)
                    log.info("epoch %d/%d  step %d/%d  loss %.4f  top-%d %.4f  lr %.5f  %.1f img/s  ETA %s",
                             epoch + 1, g["epochs"], step + 1, steps_per_epoch, sums[0] / counted, train_ks[0],
                             accs[f"top{train_ks[0]}"], lr, images_per_sec, format_eta(eta))
                stop, _ = agree_to_stop(env, preemption.requested, False)
                if stop:
                    save(epoch, step + 1)
                    raise Preempted(f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; checkpoint "
                                    f"saved in {run.checkpoints} (resume with -o Global.auto_resume=True)")
                if global_step >= total_steps:
                    break
            if counted:
                run.metric(type="epoch", epoch=epoch + 1, global_step=global_step, loss=sums[0] / counted,
                           seconds=round(time.monotonic() - epoch_start, 2), bad_images=train_loader.bad_images)
            finished = step + 1 == steps_per_epoch
            last = epoch + 1 == g["epochs"] or global_step >= total_steps
            if eval_loader is not None and (last or (finished and g["eval_during_train"]
                                                     and (epoch + 1) % g["eval_interval"] == 0)):
                run_eval(epoch + 1)
            if finished and ((epoch + 1) % g["save_interval"] == 0 or last) or global_step >= total_steps:
                save(epoch, step + 1)
    finally:
        preemption.restore()
        train_loader.close()
        if eval_loader is not None:
            eval_loader.close()
    if env.is_main:
        ckpt.save_object(net.state_dict(), run.path / "probe.pdparams")
    log.info("done: %d steps; probe weights in %s%s", global_step, run.path / "probe.pdparams",
             f"; eval in {run.path / 'eval.json'}" if history else "")
    run.close()
    return net


# ---------------------------------------------------------------- evaluation alone

def evaluate_only(cfg: dict) -> dict:
    """`simsiam-train eval`: top-k of a trained probe (Global.pretrained_model, with its fc) on
    DataLoader.Eval over all ranks; prints one JSON object on rank 0."""
    g = cfg["Global"]
    spec = g["pretrained_model"] or g["checkpoint"]
    if not spec:
        raise ConfigError("simsiam-train eval needs the trained probe: -o Global.pretrained_model=PATH "
                          "(probe.pdparams, a checkpoint, or a URL)")
    if "Eval" not in cfg["DataLoader"]:
        raise ConfigError("missing required section 'DataLoader.Eval'")
    env = dist.init(g["device"])
    if env.device == "cpu":
        set_cpu_threads(g["num_threads"])
    loader = build_eval_loader(cfg["DataLoader"]["Eval"], rank=env.rank, world_size=env.world_size)
    net = build_probe(cfg, spec, with_head=True)
    try:
        result = evaluate(net, loader, topk(cfg, "Eval"), env.world_size)
    finally:
        loader.close()
    if env.is_main:
        print(json.dumps({"weights": str(spec), "model": cfg["Model"]["name"], **result}), flush=True)
    return result
