"""PKT (Passalis & Tefas, ECCV 2018, probabilistic knowledge transfer): match the conditional probability
distributions of cosine similarities between the batch's penultimate vectors.
``ce_weight*CE + feat_weight * pkt_loss(pooled)``, mdistiller's defaults (30000)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import pkt_loss
from kdbench.methods import feature_terms, register_method


@register_method("pkt")
@dataclass(frozen=True)
class PKT:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(30000.0, N(0))

    needs_teacher = True
    needs = Needs(student=("pooled",), teacher=("pooled",))

    def __call__(self, student, teacher, batch, parts) -> dict:
        return feature_terms(student.logits, batch, self.ce_weight,
                             pkt=(self.feat_weight, pkt_loss(student.pooled, teacher.pooled)))
