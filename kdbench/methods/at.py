"""AT (Zagoruyko & Komodakis, ICLR 2017): match the students' and teachers' spatial attention maps.

``ce_weight*CE + feat_weight * at_loss(stages[1:], p)``, mdistiller's defaults (p 2, weight 1000): the
stage outputs after the stem, each pair pooled to the smaller map.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import at_loss
from kdbench.methods import feature_terms, register_method


@register_method("at")
@dataclass(frozen=True)
class AT:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(1000.0, N(0))
    at_p: float = param(2.0, N(0, lo_open=True))

    needs_teacher = True
    needs = Needs(student=("stages[1:]",), teacher=("stages[1:]",))

    def __call__(self, student, teacher, batch, parts) -> dict:
        return feature_terms(student.logits, batch, self.ce_weight,
                             at=(self.feat_weight, at_loss(student["stages[1:]"], teacher["stages[1:]"], self.at_p)))
