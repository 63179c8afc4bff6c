"""VGG with BatchNorm for CIFAR (the CRD benchmark's variant).

Five conv groups ``block0..block4`` (3x3 conv with bias, BN, ReLU; the ReLU after each group's
last BN is applied in ``forward`` so the pre-activation map is available), max-pooling after the
first three groups, a global average pool and a single linear classifier on 512 features.
For 32x32 inputs the 4th pool is skipped, as in the reference (it is only used at 64x64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut

__all__ = ["VGG", "VGG_CONFIGS"]

CIFAR = (3, 32, 32)

#: conv widths per group (8 = 1-1-1-1-1 convs, 11 = "A", 13 = "B", 16 = "D", 19 = "E")
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _group(c_in: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        c_in = w
    return nn.Sequential(*layers[:-1])  # the group's last ReLU is applied by the caller


class VGG(CifarNet):
    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int):
        super().__init__()
        c = 3
        for k, widths in enumerate(cfg):
            self.add_module(f"block{k}", _group(c, widths))
            c = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.stage_channels = [w[-1] for w in cfg]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def extract(self, x: torch.Tensor) -> FeatureOut:
        large = x.shape[-2] >= 64
        pools = (self.pool0, self.pool1, self.pool2, self.pool3 if large else None, None)
        groups = (self.block0, self.block1, self.block2, self.block3, self.block4)
        stages, preact = [], []
        for k, (group, pool) in enumerate(zip(groups, pools)):
            pre = group(x)
            x = F.relu(pre)
            stages.append(x)
            preact.append(pre if k else x)  # the stem (group 0) is exposed after its ReLU, as in the reference
            if pool is not None:
                x = pool(x)
        return self.pool4(x).flatten(1), stages, preact

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last BatchNorm of groups 1-4, whose outputs are ``preact_stages[1:]`` (OFD's margin)."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


def _register(depth: int) -> None:
    name = f"vgg{depth}"

    @register_model(name, input_shape=CIFAR, family="vgg", description=f"VGG-{depth} with BatchNorm (CIFAR)")
    def build(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
        return VGG(VGG_CONFIGS[depth], num_classes, **kw)

    build.__name__ = name


for _depth in VGG_CONFIGS:
    _register(_depth)
