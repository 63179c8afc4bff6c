"""RKD (Park et al., CVPR 2019, relational KD): match the distances and angles between the batch's
penultimate vectors. ``ce_weight*CE + feat_weight * rkd_loss(pooled, ...)``, mdistiller's defaults
(distance 25, angle 50, feature weight 1). Fewer than three examples in a batch give no angle (0)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import B, N, param
from kdbench.losses import rkd_loss
from kdbench.methods import feature_terms, register_method


@register_method("rkd")
@dataclass(frozen=True)
class RKD:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(1.0, N(0))
    rkd_distance_weight: float = param(25.0, N(0))
    rkd_angle_weight: float = param(50.0, N(0))
    rkd_squared: bool = param(False, B)
    rkd_eps: float = param(1e-12, N(0, lo_open=True))

    needs_teacher = True
    needs = Needs(student=("pooled",), teacher=("pooled",))

    def __call__(self, student, teacher, batch, parts) -> dict:
        term = rkd_loss(student.pooled, teacher.pooled, self.rkd_squared, self.rkd_eps, self.rkd_distance_weight,
                        self.rkd_angle_weight)
        return feature_terms(student.logits, batch, self.ce_weight, rkd=(self.feat_weight, term))
