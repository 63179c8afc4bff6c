"""ShuffleNet V2 (1x: 116/232/464 channels, 3-7-3 units, 1024-d head) for CIFAR (``ShuffleV2``).

A 1x1 stem (no down-sampling); each stage starts with a two-branch down-sampling unit followed by
channel-split units; a final 1x1 conv to 1024 channels. Names follow the RepDistiller / mdistiller
checkpoints: ``conv1, bn1, layerK.0.{conv1..5,bn1..5}, layerK.i.{conv1..3,bn1..3}, conv2, bn2, linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, channel_shuffle, global_pool

__all__ = ["DownUnit", "ShuffleNetV2", "SplitUnit"]

CIFAR = (3, 32, 32)


def _dw(c: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False)


def _pw(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=False)


class SplitUnit(nn.Module):
    """Keep half the channels, transform the other half (1x1, dw 3x3, 1x1), concat, shuffle.

    ``forward`` returns ``(out, preact)`` where ``preact`` is the concatenation before the last ReLU.
    """

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = int(channels * split_ratio)
        c = self.split
        self.conv1, self.bn1 = _pw(c, c), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = _dw(c, 1), nn.BatchNorm2d(c)
        self.conv3, self.bn3 = _pw(c, c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, y = x[:, : self.split], x[:, self.split:]
        y = F.relu(self.bn1(self.conv1(y)))
        y = self.bn2(self.conv2(y))
        y = self.bn3(self.conv3(y))
        out = channel_shuffle(torch.cat([kept, F.relu(y)], dim=1), 2)
        return out, torch.cat([kept, y], dim=1)


class DownUnit(nn.Module):
    """Two stride-2 branches (dw->pw; pw->dw->pw), each giving half of ``c_out``; concat, shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.conv1, self.bn1 = _dw(c_in, 2), nn.BatchNorm2d(c_in)
        self.conv2, self.bn2 = _pw(c_in, half), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = _pw(c_in, half), nn.BatchNorm2d(half)
        self.conv4, self.bn4 = _dw(half, 2), nn.BatchNorm2d(half)
        self.conv5, self.bn5 = _pw(half, half), nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(CifarNet):
    def __init__(self, widths: Sequence[int], units: Sequence[int], head: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for k, (w, n) in enumerate(zip(widths, units), start=1):
            self.add_module(f"layer{k}", nn.Sequential(DownUnit(c, w), *[SplitUnit(w) for _ in range(n)]))
            c = w
        self.conv2 = nn.Conv2d(c, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)
        self.stage_channels = [24, *widths]

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer[0](x)
            pre = x
            for unit in layer[1:]:
                x, pre = unit(x)
            stages.append(x)
            preact.append(pre)
        x = F.relu(self.bn2(self.conv2(x)))
        return global_pool(x), stages, preact

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


@register_model("ShuffleV2", input_shape=CIFAR, family="shufflenet",
                description="ShuffleNet V2 1x (116/232/464, 3-7-3 units, 1024-d head), CIFAR stem")
def shufflev2(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), 1024, num_classes, **kw)
