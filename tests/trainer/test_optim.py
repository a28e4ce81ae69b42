"""The learning rates the optimizer really applies: encoder on the cosine, predictor fixed."""
import math

import numpy as np
import paddle
import pytest

from trainer.models import build_model
from trainer.optim import build_optimizer
from trainer.optim.schedule import LRSchedule


def applied_lr(param, before, grad):
    """With momentum 0 and no weight decay an SGD step is w -= lr * g: recover lr."""
    return float(np.mean((before - param.numpy()) / grad))


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_predictor_lr_constant_while_encoder_follows_cosine(unit):
    paddle.seed(0)
    model = build_model({"name": "simsiam_cifar_resnet18_pretrain", "width": 4, "dim": 16, "pred_dim": 8})
    cfg = {"name": "Momentum", "momentum": 0.0, "weight_decay": 0.0,
           "lr": {"name": "TimmCosine", "learning_rate": 0.1, "decay_unit": unit},
           "param_groups": [{"name": "encoder"}, {"name": "predictor", "lr": 0.05}]}
    epochs, steps = 4, 2
    optimizer, group_lr = build_optimizer(model, cfg, epochs=epochs, steps_per_epoch=steps)
    enc, pred = model.encoder.fc[0].weight, model.predictor[0].weight
    for epoch in range(epochs):
        for step in range(steps):
            group_lr.set(epoch, step)
            model(paddle.randn([4, 3, 16, 16]), paddle.randn([4, 3, 16, 16]))[0].backward()
            e0, p0, eg, pg = enc.numpy().copy(), pred.numpy().copy(), enc.grad.numpy(), pred.grad.numpy()
            optimizer.step()
            optimizer.clear_grad()
            t, total = (epoch, epochs) if unit == "epoch" else (epoch * steps + step, epochs * steps)
            assert applied_lr(enc, e0, eg) == pytest.approx(0.05 * (1 + math.cos(math.pi * t / total)),
                                                            rel=1e-3)
            assert applied_lr(pred, p0, pg) == pytest.approx(0.05, rel=1e-3)


def test_timm_cosine_with_warmup():
    s = LRSchedule("TimmCosine", 1.0, epochs=10, steps_per_epoch=5, warmup_epoch=2, warmup_start_lr=0.1,
                   warmup_prefix=True)
    assert s(0) == pytest.approx(0.1) and s(1) == pytest.approx(0.55)
    assert s(2) == pytest.approx(1.0) and s(6) == pytest.approx(0.5)
    assert s(9, 4) == s(9, 0) > 0
    per_step = LRSchedule("TimmCosine", 1.0, epochs=2, steps_per_epoch=5, decay_unit="step")
    assert per_step(1, 0) == pytest.approx(0.5) and per_step(0, 1) < per_step(0, 0)
