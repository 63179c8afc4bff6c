"""NST (Huang & Wang, 2017, neuron selectivity transfer): match the distributions of the stages' neuron
activations by MMD with a polynomial kernel. ``ce_weight*CE + feat_weight * nst_loss(stages[1:])``,
mdistiller's defaults (weight 50)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import nst_loss
from kdbench.methods import feature_terms, register_method


@register_method("nst")
@dataclass(frozen=True)
class NST:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(50.0, N(0))

    needs_teacher = True
    needs = Needs(student=("stages[1:]",), teacher=("stages[1:]",))

    def __call__(self, student, teacher, batch, parts) -> dict:
        return feature_terms(student.logits, batch, self.ce_weight,
                             nst=(self.feat_weight, nst_loss(student["stages[1:]"], teacher["stages[1:]"])))
