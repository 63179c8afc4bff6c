"""MobileNetV2 for CIFAR as used by the CRD / DKD benchmarks (``MobileNetV2`` = width 0.5).

Differences from the ImageNet network, kept for checkpoint compatibility: the stem has stride 2
(16x16 after it) and two stages that are stride 2 on ImageNet run at stride 1; every inverted
residual, including the expansion-1 ones, has the 1x1 expansion conv; the last 1x1 conv keeps 1280
channels for width multipliers <= 1. Names: ``conv1.{0,1}, blocks.S.i.conv.{0,1,3,4,6,7},
conv2.{0,1}, classifier.0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, global_pool

__all__ = ["InvertedResidual", "MobileNetV2"]

CIFAR = (3, 32, 32)

# (expansion, channels, repeats, stride) per stage; expansion None = the network's ``expansion``
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
           (None, 160, 3, 2), (None, 320, 1, 1))
#: indices into ``blocks`` after which a feature map is exposed
_TAPS = (1, 2, 4, 6)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (strided), 1x1 linear projection; residual when shapes agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(CifarNet):
    def __init__(self, num_classes: int, width: float = 0.5, expansion: int = 6):
        super().__init__()
        c = int(32 * width)
        self.conv1 = _conv_bn_relu(3, c, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, channels, repeats, stride in _STAGES:
            out = int(channels * width)
            layers = []
            for i in range(repeats):
                layers.append(InvertedResidual(c, out, stride if i == 0 else 1, expansion if t is None else t))
                c = out
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c, last, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.stage_channels = [int(32 * width)] + [int(_STAGES[i][1] * width) for i in _TAPS]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = self.conv1(x)
        stages = [x]
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _TAPS:
                stages.append(x)  # the projection has no ReLU: these maps are already pre-activation
        return global_pool(self.conv2(x)), stages, None

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


@register_model("MobileNetV2", input_shape=CIFAR, family="mobilenet",
                description="MobileNetV2 (CIFAR layout), width multiplier 0.5, expansion 6")
def mobilenetv2_half(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
    return MobileNetV2(num_classes, **kw)
