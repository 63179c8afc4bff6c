"""ShuffleNet V1 for CIFAR (``ShuffleV1``: 3 groups, stage widths 240/480/960, 4-8-4 units).

A 1x1 stem (no down-sampling), then three stages that each halve the resolution in their first
unit (that unit concatenates an average-pooled shortcut). Names follow the RepDistiller /
mdistiller checkpoints: ``conv1, bn1, layerK.i.{conv1,bn1,conv2,bn2,conv3,bn3}, linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, channel_shuffle, global_pool

__all__ = ["ShuffleNetV1", "ShuffleUnit"]

CIFAR = (3, 32, 32)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, plus a shortcut.

    ``stride == 2``: the shortcut is a 3x3/2 average pool and the branch is concatenated to it
    (so the branch produces ``c_branch = c_out_total - c_in`` channels); otherwise it is added.
    The first unit after the 24-channel stem uses an ungrouped first conv. Returns the
    pre-activation map.
    """

    def __init__(self, c_in: int, c_branch: int, stride: int, groups: int):
        super().__init__()
        mid = c_branch // 4
        self.first_groups = 1 if c_in == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = channel_shuffle(y, self.first_groups)
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.stride == 2:
            return torch.cat([y, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        return y + x


class ShuffleNetV1(CifarNet):
    def __init__(self, widths: Sequence[int], units: Sequence[int], groups: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for k, (w, n) in enumerate(zip(widths, units), start=1):
            layer = []
            for i in range(n):
                layer.append(ShuffleUnit(c, w - c if i == 0 else w, 2 if i == 0 else 1, groups))
                c = w
            self.add_module(f"layer{k}", nn.Sequential(*layer))
        self.linear = nn.Linear(c, num_classes)
        self.stage_channels = [24, *widths]

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = F.relu(self.bn1(self.conv1(x)))
        stages, preact = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            for unit in layer:
                pre = unit(x)
                x = F.relu(pre)
            stages.append(x)
            preact.append(pre)
        return global_pool(x), stages, preact

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


@register_model("ShuffleV1", input_shape=CIFAR, family="shufflenet",
                description="ShuffleNet V1 (g=3, 240/480/960, 4-8-4 units), CIFAR stem")
def shufflev1(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, **kw)
