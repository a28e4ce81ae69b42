"""Weight interchange with PyTorch: outputs of the converted model equal torch's (eval mode).

Each test builds a torchvision-structured torch model with random weights *and* random BatchNorm
statistics (so a swapped mean/variance or an untransposed Linear would show), saves it the way the
official SimSiam code does, converts, and compares outputs on the same input.
"""
import numpy as np
import paddle
import pytest

from trainer import convert
from trainer.models import build_backbone, build_model

pytestmark = pytest.mark.torch


def close(ours, theirs):
    """max |diff| <= 1e-5 * max |torch output| (the issue's criterion)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def randomize_torch(torch, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if p.ndim > 1 else 0.5)
                    + (1.0 if name.endswith("bn1.weight") else 0.0))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def official_simsiam(torch, arch="resnet50", dim=2048, pred_dim=512):
    """The official SimSiam model's structure: torchvision ResNet with fc = 3-layer projector."""
    import torchvision

    nn = torch.nn
    encoder = getattr(torchvision.models, arch)(num_classes=dim, zero_init_residual=True)
    prev = encoder.fc.weight.shape[1]
    encoder.fc = nn.Sequential(
        nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
        nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
        encoder.fc, nn.BatchNorm1d(dim, affine=False))
    predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                              nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))
    return nn.ModuleDict({"encoder": encoder, "predictor": predictor})


def with_module_prefix(state):
    return {f"module.{k}": v for k, v in state.items()}  # DistributedDataParallel's names


@pytest.mark.slow  # builds real ResNet-50s (paddle and torch)
def test_official_pretrain_checkpoint_imports_exactly(torch, tmp_path):
    model = randomize_torch(torch, official_simsiam(torch))
    torch.save({"epoch": 100, "arch": "resnet50", "state_dict": with_module_prefix(model.state_dict()),
                "optimizer": {}}, tmp_path / "checkpoint_0099.pth.tar")
    paths = convert.import_torch_pretrain(tmp_path / "checkpoint_0099.pth.tar", tmp_path / "out")

    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        z_torch = model["encoder"](torch.from_numpy(x))
        p_torch = model["predictor"](z_torch)
        features_torch = torch.nn.Sequential(*list(model["encoder"].children())[:-1])(torch.from_numpy(x))

    ours = build_model({"name": "simsiam_resnet50_pretrain"})
    ours.set_state_dict(paddle.load(str(paths["model"])))
    ours.eval()
    z = ours.encoder(paddle.to_tensor(x))
    close(z.numpy(), z_torch.numpy())
    close(ours.predictor(z).numpy(), p_torch.numpy())

    encoder = build_backbone("resnet50")
    encoder.fc = paddle.nn.Identity()
    state = paddle.load(str(paths["encoder"]))
    assert set(state) == set(encoder.state_dict())  # no fc, nothing missing
    encoder.set_state_dict(state)
    encoder.eval()
    close(encoder(paddle.to_tensor(x)).numpy(), features_torch.flatten(1).numpy())


def test_official_linear_classifier_imports_exactly(torch, tmp_path):
    import torchvision

    model = randomize_torch(torch, torchvision.models.resnet18(num_classes=10), seed=1)
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": with_module_prefix(model.state_dict())},
               tmp_path / "model_best.pth.tar")
    out = convert.import_torch_lincls(tmp_path / "model_best.pth.tar", tmp_path / "probe.pdparams")

    ours = build_backbone("resnet18")
    ours.fc = paddle.nn.Linear(512, 10)
    ours.set_state_dict(paddle.load(str(out)))
    ours.eval()
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    close(ours(paddle.to_tensor(x)).numpy(), expected)


def test_encoder_exports_to_torchvision_exactly(torch, tmp_path):
    import torchvision

    paddle.seed(2)
    ours = build_backbone("resnet18")
    ours.fc = paddle.nn.Identity()
    rng = np.random.default_rng(2)
    for name, tensor in ours.state_dict().items():
        if name.endswith("_variance"):
            tensor.set_value(rng.uniform(0.5, 1.5, tensor.shape).astype("float32"))
        elif name.endswith("_mean") or name.endswith(".bias"):
            tensor.set_value(rng.normal(0, 0.1, tensor.shape).astype("float32"))
        elif name.endswith(".weight") and len(tensor.shape) == 1:
            tensor.set_value(rng.uniform(0.5, 1.5, tensor.shape).astype("float32"))
    ours.eval()
    paddle.save(ours.state_dict(), str(tmp_path / "encoder.pdparams"))
    convert.export_torchvision(tmp_path / "encoder", tmp_path / "resnet18.pth")  # PASSL-style, no suffix

    theirs = torchvision.models.resnet18()
    theirs.fc = torch.nn.Identity()
    theirs.load_state_dict(torch.load(tmp_path / "resnet18.pth", weights_only=True), strict=True)
    theirs.eval()
    x = rng.standard_normal((2, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    close(ours(paddle.to_tensor(x)).numpy(), expected)


def test_wrong_checkpoint_kind_is_a_clear_error(torch, tmp_path):
    import torchvision

    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, tmp_path / "cls.pth")
    with pytest.raises(convert.ConvertError, match="not a SimSiam pretraining checkpoint"):
        convert.import_torch_pretrain(tmp_path / "cls.pth", tmp_path / "out")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(convert.ConvertError, match="not a PyTorch checkpoint"):
        convert.import_torch_lincls(tmp_path / "junk.pth", tmp_path / "x.pdparams")
