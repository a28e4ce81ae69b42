"""The linear probe: a frozen backbone and one trainable Linear layer on its pooled features.

Parameter names are the backbone's own (paddle.vision's: conv1.weight, ..., fc.weight, fc.bias), as in
PASSL's probe, so encoder-only weights load with no renaming and a trained probe is a plain ResNet.
Registered names: simsiam_<backbone>_linearprobe and <backbone>_linearprobe for every backbone,
plus pixels_linearprobe (a raw-pixel baseline: the same probe on the flattened image).
"""
from __future__ import annotations

import paddle
from paddle import nn

from trainer.models import BACKBONES, build_backbone, register

PIXELS_SIZE = 32


class Pixels(nn.Layer):
    """A "backbone" without parameters: the image itself, resized to 32x32 and flattened.

    For 32x32 inputs the pooling is the identity, so the probe on top is multinomial logistic
    regression on raw (normalized) pixels, trained by the very same loop and recipe as the others.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(PIXELS_SIZE)
        self.feature_dim = 3 * PIXELS_SIZE * PIXELS_SIZE
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x):
        return self.fc(paddle.flatten(self.pool(x), 1))


def linear_probe(backbone: nn.Layer, class_num: int) -> nn.Layer:
    """Freeze `backbone`, keep its BatchNorms on their running statistics, put a fresh fc on top."""
    backbone.fc = nn.Linear(
        backbone.feature_dim, class_num,
        weight_attr=nn.initializer.Normal(mean=0.0, std=0.01),
        bias_attr=nn.initializer.Constant(0.0))
    for name, param in backbone.named_parameters():
        param.stop_gradient = not name.startswith("fc.")
    for layer in backbone.sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            # Normalize with the running statistics and never update them, in train() mode too:
            # the probe must see exactly the features the frozen encoder produces at test time.
            layer._use_global_stats = True
    return backbone


def _factory(backbone_name: str):
    def build(class_num: int = 1000, width: int = 64):
        if backbone_name == "pixels":
            return linear_probe(Pixels(), class_num)
        return linear_probe(build_backbone(backbone_name, zero_init_residual=False, width=width), class_num)
    return build


for _name in BACKBONES:
    register(f"simsiam_{_name}_linearprobe")(_factory(_name))
    register(f"{_name}_linearprobe")(_factory(_name))
register("pixels_linearprobe")(_factory("pixels"))
