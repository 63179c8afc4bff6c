"""ReviewKD (Chen et al., CVPR 2021, distilling knowledge via knowledge review): the student's levels
(its stages after the stem, then its pooled vector as a 1x1 map) are fused from the deepest up by
attention-based fusion (ABF) blocks, each level's map mixed with the deeper level's fused map by two
learned attention maps, and each fused level is brought to the teacher's level (its pre-activation
stages after the stem, then its pooled vector) and compared with the hierarchical context loss.

``ce_weight*CE + warm-up * feat_weight * hcl_loss(fused student levels, teacher levels)`` with the warm-up
``min(epoch / warmup_epochs, 1)`` over 1-based epochs (20), as the references. The shapes per pair are
the reference's, read from the probe: an ABF per level, 1x1 conv + BN to ``min(512, student pooled
width)`` channels, the deeper fused map upsampled (nearest) to the level's size, the result resized to
the teacher's level and a 3x3 conv + BN to its channels. A pair whose students and teachers have
different numbers of levels is refused. ``feat_weight`` 5 is the references' CIFAR-100 recipe for
resnet32x4 -> resnet8x4 (mdistiller's configs/cifar100/reviewkd.yaml; ReviewKD's own script: 5 for the
WRN, resnet8x4 and ShuffleV1 students, 8 for ShuffleV2, 0.6 for resnet56 -> resnet20, 1 for
resnet110 -> resnet32). The ABFs are training-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.features import Needs
from kdbench.kinds import I, N, param
from kdbench.losses import hcl_loss
from kdbench.methods import feature_terms, register_method

STUDENT, TEACHER = ("stages[1:]", "pooled"), ("preact_stages[1:]", "pooled")


def levels(out, maps: str) -> list[torch.Tensor]:
    """A side's levels, shallow to deep: its ``maps`` then its pooled vector as an ``[N, D, 1, 1]`` map."""
    return [*out[maps], out.pooled.flatten(1)[:, :, None, None]]


class ABF(nn.Module):
    """One level's attention-based fusion: reduce to ``mid`` channels, mix with the deeper fused map (when
    ``fuse``), resize to the teacher's size and map to its channels."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.expand[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, size) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output at the teacher's size and channels, the fused map passed up to the next level)``."""
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, deeper], dim=1))
            x = x * a[:, :1] + deeper * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.expand(x), x


@register_method("reviewkd")
@dataclass
class ReviewKD:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(5.0, N(0))
    warmup_epochs: int = param(20, I(0))
    _epoch: int = field(default=0, init=False, repr=False)

    needs_teacher = True
    needs = Needs(student=STUDENT, teacher=TEACHER)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (0-based)."""
        self._epoch = int(epoch)

    @property
    def warmup(self) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((self._epoch + 1) / self.warmup_epochs, 1.0)

    def build(self, student, teacher, n_train: int) -> nn.Module:
        s, t = levels(student, STUDENT[0]), levels(teacher, TEACHER[0])
        if len(s) != len(t):
            raise ValueError(f"ReviewKD pairs the student's levels with the teacher's (the stages after the stem "
                             f"and the pooled vector): the student gives {len(s)}, the teacher {len(t)}")
        if any(f.dim() != 4 for f in (*s, *t)):
            raise ValueError("ReviewKD needs [N, C, H, W] stage maps")
        mid = min(512, s[-1].shape[1])
        return nn.ModuleList(ABF(a.shape[1], mid, b.shape[1], fuse=i < len(s) - 1) for i, (a, b) in enumerate(zip(s, t)))

    def fused(self, parts: nn.ModuleList, student, sizes) -> list[torch.Tensor]:
        """The student's fused levels, shallow to deep, at the teacher's channels and ``sizes``."""
        s = levels(student, STUDENT[0])
        out, deeper = [None] * len(s), None
        for i in reversed(range(len(s))):
            out[i], deeper = parts[i](s[i], deeper, sizes[i])
        return out

    def __call__(self, student, teacher, batch, parts) -> dict:
        t = levels(teacher, TEACHER[0])
        term = hcl_loss(self.fused(parts, student, [f.shape[-2:] for f in t]), t)
        return feature_terms(student.logits, batch, self.ce_weight, reviewkd=(self.warmup * self.feat_weight, term))
