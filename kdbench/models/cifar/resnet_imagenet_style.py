"""ResNet-50 with ImageNet-style bottleneck stages and a CIFAR stem (3x3 conv, no max-pool).

This is the ``ResNet50`` teacher of the CRD / DKD CIFAR-100 tables (about 23.7M parameters).
Parameter names follow the checkpoints of RepDistiller / mdistiller: ``conv1, bn1,
layerK.i.{conv1..3, bn1..3, shortcut.0, shortcut.1}, linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, global_pool

__all__ = ["BottleneckBlock", "BottleneckResNet"]

CIFAR = (3, 32, 32)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; returns the pre-activation sum."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        # an empty Sequential holds no state: identity shortcut
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return y + self.shortcut(x)


class BottleneckResNet(CifarNet):
    def __init__(self, blocks: Sequence[int], num_classes: int, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        for k, (n, width, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layer = []
            for i in range(n):
                layer.append(BottleneckBlock(c, width, stride if i == 0 else 1))
                c = width * BottleneckBlock.expansion
            self.add_module(f"layer{k}", nn.Sequential(*layer))
        self.linear = nn.Linear(c, num_classes)
        self.stage_channels = [64, 256, 512, 1024, 2048]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BottleneckBlock):
                    nn.init.zeros_(m.bn3.weight)

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                pre = block(x)
                x = F.relu(pre)
            stages.append(x)
            preact.append(pre)
        return global_pool(x), stages, preact

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm of each stage's last block before its closing ReLU, one per ``preact_stages[1:]``
        (OFD's margin)."""
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


@register_model("ResNet50", input_shape=CIFAR, family="resnet",
                description="ResNet-50 (bottleneck 3-4-6-3) with a 3x3 CIFAR stem")
def resnet50(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
    return BottleneckResNet((3, 4, 6, 3), num_classes, **kw)
