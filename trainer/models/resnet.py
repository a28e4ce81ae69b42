"""ResNet backbones on paddle.vision's ResNet, so state-dict names equal paddle.vision.models.resnetXX()'s.

Every backbone keeps paddle.vision's `fc` (callers replace it: SimSiam puts its projector there, the
linear probe a classifier) and exposes `feature_dim`, the width of the pooled features fc receives.
"""
from __future__ import annotations

import paddle
from paddle import nn
from paddle.vision.models.resnet import BasicBlock, BottleneckBlock, ResNet

_DEPTHS = {"resnet18": (BasicBlock, 18), "resnet34": (BasicBlock, 34), "resnet50": (BottleneckBlock, 50)}


def zero_init_last_bn(model: nn.Layer) -> None:
    """Start every residual block as an identity: gamma of its last BN = 0 (Goyal et al. 2017)."""
    for layer in model.sublayers():
        last_bn = layer.bn3 if isinstance(layer, BottleneckBlock) else \
            layer.bn2 if isinstance(layer, BasicBlock) else None
        if last_bn is not None:
            last_bn.weight.set_value(paddle.zeros_like(last_bn.weight))


def resnet(name: str, zero_init_residual: bool = True) -> ResNet:
    """resnet18/34/50 exactly as paddle.vision builds them (ImageNet stem, fc to 1000 classes)."""
    block, depth = _DEPTHS[name]
    model = ResNet(block, depth)
    model.feature_dim = 512 * block.expansion
    if zero_init_residual:
        zero_init_last_bn(model)
    return model


class CifarResNet18(ResNet):
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem and no max-pool (the paper's CIFAR setup, App. D).

    `width` is the channel count of the first stage (64 in the standard network); the later stages
    double it as usual, so width=16 is a quarter-width network that trains quickly on a CPU.
    """

    def __init__(self, width: int = 64, num_classes: int = 1000):
        nn.Layer.__init__(self)    # paddle.vision's __init__ hard-codes the 64-channel ImageNet stem
        self.groups, self.base_width, self.dilation = 1, 64, 1
        self._norm_layer = nn.BatchNorm2D
        self.num_classes, self.with_pool = num_classes, True
        self.inplanes = width
        self.conv1 = nn.Conv2D(3, width, kernel_size=3, stride=1, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2D((1, 1))
        self.feature_dim = width * 8
        self.fc = nn.Linear(self.feature_dim, num_classes)


def build_backbone(name: str, zero_init_residual: bool = True, width: int = 64) -> ResNet:
    """A backbone by name: resnet18, resnet34, resnet50, cifar_resnet18 (width: first-stage channels)."""
    if name == "cifar_resnet18":
        model = CifarResNet18(width=width)
        if zero_init_residual:
            zero_init_last_bn(model)
        return model
    if name not in _DEPTHS:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")
    return resnet(name, zero_init_residual)


BACKBONES = (*_DEPTHS, "cifar_resnet18")
