"""Mixed precision: the loss in float32, float32 exports, every FP16 key reaching paddle."""
import numpy as np
import paddle
import pytest
from helpers.trainer import run_cli

from trainer import checkpoint as ckpt
from trainer import weights
from trainer.config import shipped_config
from trainer.models import build_model
from trainer.models.simsiam import negative_cosine


def test_loss_is_float32_on_float16_inputs_whose_sums_overflow_float16():
    """AMP O2 hands the loss float16 p and z; 2048 entries of size ~10 make Sum(p^2) ~ 2e5 > 65504."""
    rng = np.random.default_rng(0)
    p_np, z_np = (rng.normal(0, 10, (4, 2048)) for _ in range(2))
    p = paddle.to_tensor(p_np.astype("float16"), stop_gradient=False)
    z = paddle.to_tensor(z_np.astype("float16"))
    loss = negative_cosine(p, z)
    p16, z16 = p_np.astype("float16").astype("float64"), z_np.astype("float16").astype("float64")
    expected = -np.mean(np.sum(p16 * z16, 1) / np.linalg.norm(p16, axis=1) / np.linalg.norm(z16, axis=1))
    assert loss.dtype == paddle.float32
    assert float(loss) == pytest.approx(expected, rel=1e-4) and expected != 0
    loss.backward()
    grad = p.grad.astype("float32").numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0      # a gradient the run can train on


def tiny_probe():
    return build_model({"name": "cifar_resnet18_linearprobe", "width": 4, "class_num": 2})


def test_encoder_export_is_float32_and_loads_into_the_probe(tmp_path):
    """After AMP O2 the weights are float16 (paddle's CPU build leaves decorate at float32, so the
    weights are cast here); encoder.pdparams and the checkpoint must still load into the float32 probe."""
    paddle.seed(0)
    net = build_model({"name": "simsiam_cifar_resnet18_pretrain", "width": 4, "dim": 16, "pred_dim": 8})
    net.to(dtype="float16")
    assert net.encoder.conv1.weight.dtype == paddle.float16
    ckpt.export_encoder(net, tmp_path / "encoder.pdparams")
    exported = paddle.load(str(tmp_path / "encoder.pdparams"))
    assert {str(v.dtype) for v in exported.values()} == {"paddle.float32"}
    probe = tiny_probe()
    weights.load_into(probe, tmp_path / "encoder.pdparams")
    np.testing.assert_array_equal(probe.conv1.weight.numpy(),
                                  net.encoder.conv1.weight.astype("float32").numpy())

    # a checkpoint of the O2 run (float16 model state) loads into the probe too
    path = ckpt.save_checkpoint(tmp_path / "checkpoints", {"model": net.state_dict(), "optimizer": {},
                                                           "epoch": 1, "step": 0, "global_step": 4})
    probe = tiny_probe()
    weights.load_into(probe, path)
    assert probe.layer1[0].conv1.weight.dtype == paddle.float32


class Recorder:
    """Stands in for paddle.amp.GradScaler / auto_cast, which act only on a GPU (on CPU paddle's
    GradScaler disables itself and drops its arguments, auto_cast casts nothing): records the call."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self


def test_every_fp16_key_reaches_paddle(monkeypatch):
    from trainer.engine.amp import Amp
    scaler, autocast = Recorder(), Recorder()
    monkeypatch.setattr(paddle.amp, "GradScaler", scaler)
    monkeypatch.setattr(paddle.amp, "auto_cast", autocast)
    section = {"level": "O1", "dtype": "float16",
               "GradScaler": {"init_loss_scaling": 1024.0, "incr_ratio": 3.0, "decr_ratio": 0.25,
                              "incr_every_n_steps": 7, "decr_every_n_nan_or_inf": 2,
                              "use_dynamic_loss_scaling": False},
               "fp16_custom_white_list": ["elementwise_add"], "fp16_custom_black_list": ["reduce_mean"]}
    amp = Amp(section, "gpu:0")
    amp.autocast()
    assert scaler.calls == [section["GradScaler"]]
    assert autocast.calls == [{"level": "O1", "dtype": "float16", "custom_white_list": ["elementwise_add"],
                               "custom_black_list": ["reduce_mean"]}]


@pytest.mark.parametrize("config", ["simsiam_cifar_resnet18_cpu", "simsiam_cifar_resnet18_fmnist_lp_cpu"])
def test_amp_on_cpu_is_refused_in_one_line(tmp_path, config):
    """Paddle's CPU build runs autocast and O2 in float32: a run asking for AMP there would
    silently train in float32, so both the pretraining and the probe refuse it."""
    result = run_cli(["-c", str(shipped_config(config)), "-o", "FP16.level=O1",
                      "-o", f"Global.output_dir={tmp_path}"], timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "FP16.level O1 needs Global.device gpu" in lines[0], result.stderr
