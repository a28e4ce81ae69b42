"""Global.to_static compiles the forward pass; training must not change because of it."""
import numpy as np
import paddle

from trainer.engine.amp import Amp
from trainer.engine.pretrain import make_train_step
from trainer.models import build_model
from trainer.optim import build_optimizer


def _train(to_static: bool, steps: int = 3):
    paddle.seed(0)
    model = build_model({"name": "simsiam_cifar_resnet18_pretrain", "width": 4, "dim": 16, "pred_dim": 8})
    optimizer, group_lr = build_optimizer(
        model, {"name": "Momentum", "momentum": 0.9, "weight_decay": 1e-4,
                "lr": {"name": "TimmCosine", "learning_rate": 0.1},
                "param_groups": [{"name": "encoder"}, {"name": "predictor", "lr": 0.1}]},
        epochs=1, steps_per_epoch=steps)
    step = make_train_step(model, optimizer, Amp({}), to_static)
    paddle.seed(1)
    x1, x2 = paddle.randn([8, 3, 16, 16]), paddle.randn([8, 3, 16, 16])
    losses = []
    for i in range(steps):
        group_lr.set(0, i)
        losses.append(float(step(x1, x2)[0]))
    return losses, {k: v.numpy() for k, v in model.state_dict().items()}


def test_to_static_trains_exactly_like_dygraph():
    eager_losses, eager_state = _train(False)
    static_losses, static_state = _train(True)
    np.testing.assert_allclose(static_losses, eager_losses, rtol=1e-5)
    assert eager_losses[0] != eager_losses[-1]
    for key, value in eager_state.items():
        np.testing.assert_allclose(static_state[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
