"""SimSiam (Chen & He 2020, Sec. 3): two views, one encoder, a predictor, and a stop-gradient.

    z1, z2 = f(x1), f(x2)            # encoder f = backbone + projector (the backbone's fc)
    p1, p2 = h(z1), h(z2)            # predictor h
    L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D(p, z) = -cos(p, z)
"""
from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """3-layer MLP with BN on every layer, the last BN without affine parameters (Appendix)."""
    last = nn.Linear(dim, dim)
    # BN follows, so this bias cannot change the output: frozen, as in the official model.
    last.bias.stop_gradient = True
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias_attr=False), nn.BatchNorm1D(dim), nn.ReLU(),
        nn.Linear(dim, dim, bias_attr=False), nn.BatchNorm1D(dim), nn.ReLU(),
        last, nn.BatchNorm1D(dim, weight_attr=False, bias_attr=False),
    )


def predictor(dim: int, pred_dim: int) -> nn.Sequential:
    """2-layer bottleneck MLP; no BN on its output."""
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias_attr=False), nn.BatchNorm1D(pred_dim), nn.ReLU(),
        nn.Linear(pred_dim, dim),
    )


def negative_cosine(p: paddle.Tensor, z: paddle.Tensor) -> paddle.Tensor:
    """D(p, z) with the stop-gradient on z: the target branch gets no gradient.

    In float32 whatever the AMP level: in float16 the product of the sums of squares overflows
    (2048 entries of size 1 give 4e6 > 65504), the cosine becomes 0 and the gradient vanishes unnoticed."""
    with paddle.amp.auto_cast(enable=False):
        p, z = p.astype("float32"), z.detach().astype("float32")
        return -F.cosine_similarity(p, z, axis=-1).mean()


def init_like_official(model: nn.Layer) -> None:
    """The official SimSiam code's initialisation (PyTorch's defaults as torchvision's ResNet uses
    them), where paddle's defaults differ: convs He-normal over fan-out, Linear weights and biases
    uniform in +-1/sqrt(fan_in). BN layers keep gamma=1/beta=0 (and the zero-initialised last ones)."""
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            out_channels, _, kh, kw = layer.weight.shape
            nn.initializer.Normal(0.0, math.sqrt(2.0 / (out_channels * kh * kw)))(layer.weight)
        elif isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.weight.shape[0])          # paddle's Linear weight is [in, out]
            nn.initializer.Uniform(-bound, bound)(layer.weight)
            if layer.bias is not None:
                nn.initializer.Uniform(-bound, bound)(layer.bias)


class SimSiam(nn.Layer):
    """Parameter names follow PASSL: encoder.* (backbone, with the projector as encoder.fc.*), predictor.*."""

    def __init__(self, backbone: nn.Layer, dim: int = 2048, pred_dim: int = 512):
        super().__init__()
        backbone.fc = projector(backbone.feature_dim, dim)
        self.encoder = backbone
        self.predictor = predictor(dim, pred_dim)
        self.dim = dim
        init_like_official(self)

    def forward(self, x1: paddle.Tensor, x2: paddle.Tensor):
        """Returns (loss, z1, z2); z is returned for the collapse monitor."""
        z1, z2 = self.encoder(x1), self.encoder(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        return loss, z1.detach(), z2.detach()


def z_std(z: paddle.Tensor) -> float:
    """Std over the batch of l2-normalised z, averaged over channels (the paper's Fig. 2 collapse
    indicator: about 1/sqrt(dim) when healthy, 0 when every image maps to the same vector)."""
    return float(F.normalize(z.astype("float32"), axis=1).std(axis=0).mean())
