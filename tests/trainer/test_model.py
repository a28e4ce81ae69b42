"""SimSiam's model as the paper and PASSL define it: names, the stop-gradient, the frozen bias."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle.vision.models import resnet50

from trainer.models import build_backbone, build_model
from trainer.models.simsiam import z_std
from trainer.optim import build_optimizer


def tiny_simsiam():
    paddle.seed(0)
    return build_model({"name": "simsiam_cifar_resnet18_pretrain", "width": 4, "dim": 16, "pred_dim": 8})


@pytest.mark.slow  # builds a real ResNet-50
def test_resnet50_names_equal_paddle_vision_plus_projector_and_predictor():
    names = list(build_model({"name": "simsiam_resnet50_pretrain"}).state_dict())
    vision = [k for k in resnet50().state_dict() if not k.startswith("fc.")]
    assert [k[len("encoder."):] for k in names if k.startswith("encoder.") and
            not k.startswith("encoder.fc.")] == vision
    assert [k for k in names if not k.startswith("encoder.") or k.startswith("encoder.fc.")] == [
        "encoder.fc.0.weight", *(f"encoder.fc.1.{s}" for s in ("weight", "bias", "_mean", "_variance")),
        "encoder.fc.3.weight", *(f"encoder.fc.4.{s}" for s in ("weight", "bias", "_mean", "_variance")),
        "encoder.fc.6.weight", "encoder.fc.6.bias", "encoder.fc.7._mean", "encoder.fc.7._variance",
        "predictor.0.weight", *(f"predictor.1.{s}" for s in ("weight", "bias", "_mean", "_variance")),
        "predictor.3.weight", "predictor.3.bias"]


@pytest.mark.slow  # builds a real ResNet-50
def test_resnet50_shapes_follow_the_paper():
    model = build_model({"name": "simsiam_resnet50_pretrain"})
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes["encoder.fc.0.weight"] == [2048, 2048]
    assert shapes["encoder.fc.6.bias"] == [2048]
    assert shapes["predictor.0.weight"] == [2048, 512]
    assert shapes["predictor.3.weight"] == [512, 2048]
    assert model.encoder.fc[6].bias.stop_gradient          # frozen: BN follows
    last_bns = [v for k, v in model.state_dict().items() if k.endswith("bn3.weight")]
    assert len(last_bns) == 16 and all(float(v.abs().sum()) == 0 for v in last_bns)


def test_cifar_backbone_has_a_small_stem_and_width():
    net = build_backbone("cifar_resnet18", width=8)
    assert net.conv1.weight.shape == [8, 3, 3, 3] and net.feature_dim == 64
    net.fc = paddle.nn.Identity()
    assert net(paddle.randn([2, 3, 32, 32])).shape == [2, 64]


def test_no_gradient_reaches_the_target_branch():
    """The model's gradient equals the one with z1, z2 as constants in the targets, and differs
    from the gradient without the stop-gradient."""
    model = tiny_simsiam()
    x1, x2 = paddle.randn([6, 3, 16, 16]), paddle.randn([6, 3, 16, 16])

    def grads(loss):
        model.clear_gradients()
        loss.backward()
        return [p.grad.numpy().copy() for p in model.encoder.parameters() if not p.stop_gradient]

    ours = grads(model(x1, x2)[0])
    z1, z2 = model.encoder(x1), model.encoder(x2)
    t1, t2 = paddle.to_tensor(z1.numpy()), paddle.to_tensor(z2.numpy())   # no graph behind them
    p1, p2 = model.predictor(z1), model.predictor(z2)
    as_constants = grads(-0.5 * (F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean()))
    z1, z2 = model.encoder(x1), model.encoder(x2)
    p1, p2 = model.predictor(z1), model.predictor(z2)
    no_stop = grads(-0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean()))
    for a, b in zip(ours, as_constants, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(not np.allclose(a, c, rtol=1e-3, atol=1e-6) for a, c in zip(ours, no_stop, strict=True))


def test_frozen_bias_unchanged_and_others_trained():
    model = tiny_simsiam()
    cfg = {"name": "Momentum", "momentum": 0.9, "weight_decay": 1e-4,
           "lr": {"name": "TimmCosine", "learning_rate": 0.5},
           "param_groups": [{"name": "encoder"}, {"name": "predictor", "lr": 0.5}]}
    optimizer, group_lr = build_optimizer(model, cfg, epochs=2, steps_per_epoch=3)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    for step in range(3):
        group_lr.set(0, step)
        model(paddle.randn([6, 3, 16, 16]), paddle.randn([6, 3, 16, 16]))[0].backward()
        optimizer.step()
        optimizer.clear_grad()
    after = model.state_dict()
    np.testing.assert_array_equal(after["encoder.fc.6.bias"].numpy(), before["encoder.fc.6.bias"])
    assert not np.array_equal(after["encoder.fc.6.weight"].numpy(), before["encoder.fc.6.weight"])
    assert not np.array_equal(after["predictor.3.bias"].numpy(), before["predictor.3.bias"])


def test_z_std_separates_healthy_from_collapsed():
    z = paddle.randn([256, 64])
    assert z_std(z) == pytest.approx(1 / 8, rel=0.1)          # 1/sqrt(d) for spread-out outputs
    assert z_std(paddle.ones([256, 64]) + 1e-4 * z) < 1e-3    # collapsed: one vector for all


def test_sync_batch_norm_keeps_the_parameter_names():
    """Only the conversion is checked: paddle's CPU build has no SyncBatchNorm kernel to run."""
    from trainer.dist import sync_batch_norm
    model = tiny_simsiam()
    names = list(model.state_dict())
    converted = sync_batch_norm(model)
    assert list(converted.state_dict()) == names
    assert type(converted.encoder.fc[7]).__name__ == "SyncBatchNorm"
    assert [n for n, p in converted.named_parameters() if n.startswith("encoder.fc.7")] == [
        "encoder.fc.7._mean", "encoder.fc.7._variance"]


@pytest.mark.slow  # builds a real ResNet-50
def test_initialisation_follows_the_official_code():
    model = build_model({"name": "simsiam_resnet50_pretrain"})
    expansion = model.encoder.layer1[0].conv3.weight.numpy()              # 64 -> 256, 1x1
    assert np.std(expansion) == pytest.approx(np.sqrt(2 / 256), rel=0.05)  # He normal over fan-out
    hidden = model.encoder.fc[0].weight.numpy()
    assert np.abs(hidden).max() <= 1 / np.sqrt(2048) and np.abs(hidden).max() > 0.9 / np.sqrt(2048)
    assert float(model.encoder.fc[6].bias.abs().max()) > 0                # frozen where it was drawn
