"""The probe model: frozen backbone, BN on running statistics, fc init, and every weight format."""
import numpy as np
import paddle
import pytest

from trainer import weights
from trainer.models import build_model

PROBE = {"name": "cifar_resnet18_linearprobe", "class_num": 10, "width": 8}
PRETRAIN = {"name": "simsiam_cifar_resnet18_pretrain", "width": 8, "dim": 32, "pred_dim": 8}


def randomized(model, seed):
    """Distinct random values everywhere, BN statistics included, so a skipped key would show."""
    rng = np.random.default_rng(seed)
    for name, tensor in model.state_dict().items():
        low = 0.5 if name.endswith("_variance") else -0.5
        tensor.set_value(rng.uniform(low, 1.0, tensor.shape).astype("float32"))
    return model


def test_only_fc_trains_and_backbone_and_bn_stats_stay_unchanged():
    paddle.seed(0)
    model = randomized(build_model(PROBE), 0)
    assert sorted(n for n, p in model.named_parameters() if not p.stop_gradient) == ["fc.bias", "fc.weight"]
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.train()
    opt = paddle.optimizer.Momentum(0.5, parameters=model.parameters())
    for _ in range(3):
        loss = paddle.nn.functional.cross_entropy(model(paddle.randn([8, 3, 32, 32])),
                                                  paddle.randint(0, 10, [8]))
        loss.backward()
        opt.step()
        opt.clear_grad()
    changed = sorted(k for k, v in model.state_dict().items() if not np.array_equal(before[k], v.numpy()))
    assert changed == ["fc.bias", "fc.weight"]


def test_bn_uses_running_statistics_in_train_mode():
    model = randomized(build_model(PROBE), 1)
    x = paddle.randn([4, 3, 32, 32])
    model.eval()
    expected = model(x).numpy()
    model.train()
    np.testing.assert_array_equal(model(x).numpy(), expected)


@pytest.mark.slow  # builds a real ResNet-50
def test_fc_is_initialised_normal_0_01_with_zero_bias():
    paddle.seed(3)
    model = build_model({"name": "resnet50_linearprobe", "class_num": 1000})
    w = model.fc.weight.numpy()
    assert w.shape == (2048, 1000)
    assert abs(w.mean()) < 1e-4 and abs(w.std() - 0.01) < 2e-4
    assert not model.fc.bias.numpy().any()


@pytest.mark.slow  # builds a real ResNet-50
def test_recipe_name_is_resnet50():
    model = build_model({"name": "simsiam_resnet50_linearprobe", "class_num": 7})
    assert model.fc.weight.shape == [2048, 7]
    assert set(model.state_dict()) == set(paddle.vision.models.resnet50(num_classes=7).state_dict())


def test_encoder_only_state_dict_loads_with_no_missing_keys(tmp_path):
    """(a): paddle.vision names without fc, saved PASSL-style and given without the suffix."""
    source = randomized(build_model(PROBE), 4)
    encoder = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    paddle.save(encoder, str(tmp_path / "encoder.pdparams"))
    probe = build_model(PROBE)
    fc_before = probe.fc.weight.numpy().copy()
    loaded = weights.load_into(probe, tmp_path / "encoder")
    assert sorted(loaded) == sorted(encoder)
    for k, v in encoder.items():
        np.testing.assert_array_equal(probe.state_dict()[k].numpy(), v.numpy())
    np.testing.assert_array_equal(probe.fc.weight.numpy(), fc_before)  # the head stays fresh


def test_full_passl_named_pretrain_state_dict_loads(tmp_path):
    """(b): encoder.* with the projector as encoder.fc.*, predictor.*; from our SimSiam model."""
    pretrain = randomized(build_model(PRETRAIN), 5)
    paddle.save(pretrain.state_dict(), str(tmp_path / "simsiam.pdparams"))
    probe = build_model(PROBE)
    loaded = weights.load_into(probe, tmp_path / "simsiam.pdparams")
    assert sorted(loaded) == sorted(k for k in probe.state_dict() if not k.startswith("fc."))
    np.testing.assert_array_equal(probe.layer4[1].bn2._variance.numpy(),
                                  pretrain.encoder.layer4[1].bn2._variance.numpy())


def test_trained_probe_loads_with_its_head_for_evaluation(tmp_path):
    source = randomized(build_model(PROBE), 6)
    paddle.save(source.state_dict(), str(tmp_path / "probe.pdparams"))
    probe = build_model(PROBE)
    weights.load_into(probe, tmp_path / "probe.pdparams", with_head=True)
    np.testing.assert_array_equal(probe.fc.weight.numpy(), source.fc.weight.numpy())
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    paddle.save(encoder_only, str(tmp_path / "encoder.pdparams"))
    with pytest.raises(weights.WeightsError, match="missing: fc.bias, fc.weight"):
        weights.load_into(probe, tmp_path / "encoder.pdparams", with_head=True)


def test_wrong_files_are_clear_errors(tmp_path):
    probe = build_model(PROBE)
    with pytest.raises(weights.WeightsError, match=r"not found: .*nope \(also tried nope.pdparams\)"):
        weights.load_into(probe, tmp_path / "nope")
    (tmp_path / "junk.pdparams").write_bytes(b"\x00garbage")
    with pytest.raises(weights.WeightsError, match="is not a paddle state dict"):
        weights.load_into(probe, tmp_path / "junk.pdparams")
    # A different architecture: wrong shapes and missing/unexpected keys, all named.
    paddle.save(paddle.vision.models.resnet18().state_dict(), str(tmp_path / "r18.pdparams"))
    with pytest.raises(weights.WeightsError) as err:
        weights.load_into(probe, tmp_path / "r18.pdparams")
    message = str(err.value)
    assert "shape mismatch: bn1._mean [64] vs model [8]" in message
    assert "\n" not in message
    # Half an encoder: the missing keys are listed, nothing is loaded silently.
    partial = {k: v for k, v in probe.state_dict().items() if not k.startswith(("fc.", "layer4"))}
    paddle.save(partial, str(tmp_path / "partial.pdparams"))
    with pytest.raises(weights.WeightsError, match=r"missing: layer4\.0\.bn1\._mean.*in all\)"):
        weights.load_into(probe, tmp_path / "partial.pdparams")
    # PyTorch names are pointed to the converter.
    paddle.save({"module.conv1.weight": paddle.zeros([1])}, str(tmp_path / "torchish.pdparams"))
    with pytest.raises(weights.WeightsError, match="simsiam-train convert"):
        weights.load_into(probe, tmp_path / "torchish.pdparams")
