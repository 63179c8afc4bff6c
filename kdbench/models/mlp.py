"""Small models for MNIST-like and tabular data: linear, MLPs (Hinton's presets) and a small CNN."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from kdbench.models import register_model


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs, with optional input/hidden dropout.

    ``max_norm`` (Hinton et al. 2012/2015's weight constraint) caps the L2 norm of each hidden
    unit's incoming weight vector; it is applied by :meth:`apply_max_norm` after every optimiser step.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0, max_norm: float | None = None):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, int(width)), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = int(width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.classifier(f)
        return (logits, f) if return_features else logits

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        if not self.max_norm:
            return
        for m in self.features:
            if isinstance(m, nn.Linear):
                norms = m.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
                m.weight.mul_(norms.clamp(max=self.max_norm) / norms)


def _flat(in_shape: tuple[int, ...]) -> int:
    return int(math.prod(in_shape))


@register_model("linear", family="mlp", description="multinomial logistic regression")
def linear(num_classes: int, in_shape: tuple[int, ...], **kw) -> nn.Module:
    return MLP(_flat(in_shape), [], num_classes, **kw)


@register_model("mlp", family="mlp", description="MLP, widths from `hidden` (default 256-256)")
def mlp(num_classes: int, in_shape: tuple[int, ...], hidden: Sequence[int] = (256, 256), **kw) -> nn.Module:
    return MLP(_flat(in_shape), list(hidden), num_classes, **kw)


@register_model("hinton_teacher", family="mlp",
                description="784-1200-1200-10 with dropout 0.5 (input 0.2) and max-norm 15.0 (Hinton 2015)")
def hinton_teacher(num_classes: int, in_shape: tuple[int, ...], hidden: Sequence[int] = (1200, 1200),
                   dropout: float = 0.5, input_dropout: float = 0.2, max_norm: float | None = 15.0) -> nn.Module:
    return MLP(_flat(in_shape), list(hidden), num_classes, dropout=dropout, input_dropout=input_dropout,
               max_norm=max_norm)


@register_model("hinton_student", family="mlp", description="784-800-800-10 without regularisation (Hinton 2015)")
def hinton_student(num_classes: int, in_shape: tuple[int, ...], hidden: Sequence[int] = (800, 800),
                   dropout: float = 0.0, **kw) -> nn.Module:
    return MLP(_flat(in_shape), list(hidden), num_classes, dropout=dropout, **kw)


class SmallCNN(nn.Module):
    """Two conv blocks + a linear head; for 1x28x28 (MNIST) or any small single-image input."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if not return_features:
            return self.classifier(self.dropout(self.features(x)))
        # the zoo's feature contract: each block's map after its ReLU (and before it, after BatchNorm)
        stages, preact = [], []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 5):
                preact.append(x.clone())  # the ReLU that follows works in place
            elif i in (2, 6):
                stages.append(x)
        logits = self.classifier(self.dropout(x))
        return logits, {"pooled": x, "stages": stages, "preact_stages": preact}

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """Each block's BatchNorm (``features.1``, ``features.5``), whose outputs are ``preact_stages``
        (OFD's margin; this CNN has no stem)."""
        return [self.features[1], self.features[5]]


@register_model("mnist_cnn", family="cnn", description="small 2-block CNN with BatchNorm")
def mnist_cnn(num_classes: int, in_shape: tuple[int, ...], width: int = 32, dropout: float = 0.0) -> nn.Module:
    if len(in_shape) != 3:
        raise ValueError(f"mnist_cnn needs image inputs (C, H, W), got shape {in_shape}")
    return SmallCNN(in_shape[0], num_classes, width=width, dropout=dropout)
