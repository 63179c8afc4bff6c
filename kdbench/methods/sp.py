"""SP (Tung & Mori, ICCV 2019, similarity-preserving KD): match the batch's pairwise similarity matrices
of the last stage. ``ce_weight*CE + feat_weight * sp_loss([stages[-1]])``, mdistiller's defaults (3000)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import sp_loss
from kdbench.methods import feature_terms, register_method


@register_method("sp")
@dataclass(frozen=True)
class SP:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(3000.0, N(0))

    needs_teacher = True
    needs = Needs(student=("stages[-1]",), teacher=("stages[-1]",))

    def __call__(self, student, teacher, batch, parts) -> dict:
        return feature_terms(student.logits, batch, self.ce_weight,
                             sp=(self.feat_weight, sp_loss([student["stages[-1]"]], [teacher["stages[-1]"]])))
