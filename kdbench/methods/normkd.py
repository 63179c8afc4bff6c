"""NormKD (Chi et al. 2023, normalized logits): ``ce_weight*CE + kd_weight*normkd_loss(t_norm)``, KD with a
per-sample temperature ``t_norm * std(logits)`` on each side.

Defaults: NormKD's code (its mdistiller config for every CIFAR-100 pair): t_norm 2, CE 0.1, KD 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.kinds import N, param
from kdbench.losses import normkd_loss
from kdbench.methods import register_method
from kdbench.methods.ttm import dense_teacher, label_ce


@register_method("normkd")
@dataclass(frozen=True)
class NormKD:
    ce_weight: float = param(0.1, N(0))
    kd_weight: float = param(0.9, N(0))
    t_norm: float = param(2.0, N(0, lo_open=True))

    needs_teacher = True

    def __call__(self, student_logits: Tensor, teacher, batch) -> dict[str, Tensor]:
        term = normkd_loss(student_logits, dense_teacher("NormKD", teacher), self.t_norm, labels=batch.y)
        ce = label_ce(student_logits, batch)
        return {"loss": self.ce_weight * ce + self.kd_weight * term, "ce": ce, "normkd": term}
