"""FitNet (Romero et al., ICLR 2015): a regressor maps the student's hint stage onto the teacher's, and
their mean squared difference is the hint loss. ``ce_weight*CE + feat_weight * fitnet_loss(reg(s), t)``,
mdistiller's defaults (hint layer 2, weight 100); the regressor is trained with the student and is not
part of the deployed student."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from kdbench.features import Needs
from kdbench.kinds import I, N, param
from kdbench.losses import fitnet_loss
from kdbench.methods import feature_terms, register_method


def conv_regressor(student_shape, teacher_shape) -> nn.Module:
    """A conv (strided, transposed, or of the size difference) + BatchNorm + ReLU from a student map
    ``[N, C, H, W]`` onto the teacher's channels and spatial size (the references' hint regressor)."""
    (_, sc, sh, sw), (_, tc, th, tw) = tuple(student_shape), tuple(teacher_shape)
    if sh == 2 * th:
        conv = nn.Conv2d(sc, tc, 3, stride=2, padding=1)
    elif 2 * sh == th:
        conv = nn.ConvTranspose2d(sc, tc, 4, stride=2, padding=1)
    elif sh >= th and sw >= tw:
        conv = nn.Conv2d(sc, tc, (1 + sh - th, 1 + sw - tw))
    else:
        raise ValueError(f"no hint regressor from a {sh}x{sw} student map to a {th}x{tw} teacher map")
    return nn.Sequential(conv, nn.BatchNorm2d(tc), nn.ReLU(inplace=True))


@register_method("fitnet")
@dataclass(frozen=True)
class FitNet:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(100.0, N(0))
    hint_layer: int = param(2, I())

    needs_teacher = True

    @property
    def needs(self) -> Needs:
        hint = f"stages[{self.hint_layer}]"
        return Needs(student=(hint,), teacher=(hint,))

    def build(self, student, teacher, n_train: int) -> nn.Module:
        hint = self.needs.student[0]
        s, t = student[hint], teacher[hint]
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(f"FitNet's hint ({hint}) must be [N, C, H, W] maps, got {list(s.shape)} and {list(t.shape)}")
        return nn.ModuleDict({"regressor": conv_regressor(s.shape, t.shape)})

    def __call__(self, student, teacher, batch, parts) -> dict:
        hint = self.needs.student[0]
        term = fitnet_loss(parts["regressor"](student[hint]), teacher[hint])
        return feature_terms(student.logits, batch, self.ce_weight, fitnet=(self.feat_weight, term))
