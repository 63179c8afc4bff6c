"""Wide residual networks (Zagoruyko & Komodakis 2016), pre-activation blocks, CIFAR layout.

``wrn_D_K``: depth ``D = 6n + 4`` (``n`` blocks per stage), widen factor ``K`` (stage widths
16K/32K/64K). Names follow the RepDistiller / mdistiller checkpoints: ``conv1,
blockS.layer.i.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.models import register_model
from kdbench.models.cifar._base import CifarNet, FeatureOut, global_pool

__all__ = ["WideBlock", "WideResNet"]

CIFAR = (3, 32, 32)


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut.

    When the width or stride changes, the shortcut is a 1x1 conv applied to the *activated* input
    (as in the reference); otherwise it is the raw input.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.drop = drop
        self.identity = c_in == c_out
        if not self.identity:
            self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        """``normed`` is ``bn1(x)`` when the caller has already computed it (to expose it)."""
        a = F.relu(self.bn1(x) if normed is None else normed)
        y = F.relu(self.bn2(self.conv1(a)))
        if self.drop > 0:
            y = F.dropout(y, p=self.drop, training=self.training)
        y = self.conv2(y)
        return y + (x if self.identity else self.convShortcut(a))


class WideStage(nn.Module):
    """A stage of wide blocks, kept under ``.layer`` to match the reference names."""

    def __init__(self, n: int, c_in: int, c_out: int, stride: int, drop: float):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, drop)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    def __init__(self, depth: int, widen: int, num_classes: int, drop: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1, drop)
        self.block2 = WideStage(n, widths[1], widths[2], 2, drop)
        self.block3 = WideStage(n, widths[2], widths[3], 2, drop)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.stage_channels = widths
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def extract(self, x: torch.Tensor) -> FeatureOut:
        x = self.conv1(x)
        stages, preact = [x], [x]
        for s, stage in enumerate((self.block1, self.block2, self.block3)):
            for i, block in enumerate(stage.layer):
                normed = block.bn1(x)
                if i == 0 and s > 0:
                    # the BN output of the next stage's first block is this stage's pre-ReLU map
                    preact.append(normed)
                x = block(x, normed)
            stages.append(x)
        normed = self.bn1(x)
        preact.append(normed)
        return global_pool(F.relu(normed)), stages, preact

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The BatchNorms whose outputs are ``preact_stages[1:]``: the next stage's first ``bn1``, then the
        final ``bn1`` (OFD's margin)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    @register_model(name, input_shape=CIFAR, family="wrn",
                    description=f"wide ResNet, depth {depth}, widen factor {widen}")
    def build(num_classes: int, in_shape: tuple[int, ...] = CIFAR, **kw) -> nn.Module:
        return WideResNet(depth, widen, num_classes, **kw)

    build.__name__ = name


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
