"""CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stem and three stages of basic blocks.

Depth ``6n + 2`` gives ``n`` blocks per stage. ``resnetNxW4`` are the 4x-wide variants of the CRD
benchmark (stage widths 64/128/256 after a 32-channel stem). Parameter names follow the layout of
the RepDistiller / mdistiller checkpoints (``conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2,downsample},
fc``), so their published teachers load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, global_pool

__all__ = ["CifarResNet", "ResidualBlock"]

CIFAR = (3, 32, 32)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN pairs plus a shortcut (a strided 1x1 conv-BN when the shape changes).

    ``forward`` returns the *pre-activation* sum; the caller applies the ReLU, so the stage loop can
    expose pre-ReLU features without running anything twice.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return y + (x if self.downsample is None else self.downsample(x))


class CifarResNet(CifarNet):
    """``widths = (stem, stage1, stage2, stage3)``; ``blocks`` basic blocks per stage."""

    def __init__(self, blocks: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        stem, *stage_widths = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        c = stem
        for k, (w, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            layer = [ResidualBlock(c, w, stride)] + [ResidualBlock(w, w) for _ in range(blocks - 1)]
            self.add_module(f"layer{k}", nn.Sequential(*layer))
            c = w
        self.fc = nn.Linear(c, num_classes)
        self.stage_channels = [stem, *stage_widths]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                pre = block(x)
                x = F.relu(pre)
            stages.append(x)
            preact.append(pre)
        return global_pool(x), stages, preact

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm of each stage's last block before its closing ReLU, one per ``preact_stages[1:]``
        (the teacher statistics of OFD's margin; the shortcut added after it is not counted, as the reference)."""
        return [layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3)]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


def _depth_to_blocks(depth: int) -> int:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return (depth - 2) // 6


def _register(depth: int, widths: tuple[int, int, int, int], suffix: str = "") -> None:
    name = f"resnet{depth}{suffix}"
    blocks = _depth_to_blocks(depth)
    desc = f"CIFAR ResNet-{depth} ({blocks} basic blocks/stage, widths {'/'.join(map(str, widths))})"

    @register_model(name, input_shape=CIFAR, family="resnet", description=desc)
    def build(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
        return CifarResNet(blocks, widths, num_classes, **kw)

    build.__name__ = name


for _d in (8, 14, 20, 32, 44, 56, 110):
    _register(_d, (16, 16, 32, 64))
for _d in (8, 32):
    _register(_d, (32, 64, 128, 256), suffix="x4")
