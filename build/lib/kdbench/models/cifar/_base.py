"""Shared pieces of the CIFAR zoo: the ``forward(x, return_features=False)`` contract."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CifarNet", "FeatureOut", "channel_shuffle", "global_pool"]

FeatureOut = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Average over the spatial grid and flatten to ``[N, C]``.

    The reference networks use fixed-size pools (8, 4, 2 ...) that cover the whole final map of a
    32x32 input; a global mean is the same computation and also works for other sizes.
    """
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel permutation: view channels as (groups, C/groups), transpose, flatten."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class CifarNet(nn.Module):
    """Base class: subclasses implement :meth:`extract` (the trunk) and :meth:`classify` (the head).

    ``forward(x)`` returns the logits. ``forward(x, return_features=True)`` returns
    ``(logits, feats)`` with

    * ``feats["pooled"]``: the penultimate vector (the classifier's input), ``[N, D]``;
    * ``feats["stages"]``: the stem output followed by each stage's output, the same maps (and
      count) that the reference implementations expose as ``feats`` (after the stage's ReLU; for
      the pre-activation WRN blocks, the raw residual sum);
    * ``feats["preact_stages"]``: the same maps taken before the stage's last ReLU (the stem is
      given after its ReLU), as the references' ``preact_feats``; ``None`` for MobileNetV2, whose
      stage outputs are linear already. Used by pre-activation distillers (OFD, ReviewKD).
    """

    #: channels of the maps in ``feats["stages"]``, in order
    stage_channels: list[int]

    def extract(self, x: torch.Tensor) -> FeatureOut:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False):
        pooled, stages, preact = self.extract(x)
        logits = self.classify(pooled)
        if not return_features:
            return logits
        return logits, {"pooled": pooled, "stages": stages, "preact_stages": preact}
