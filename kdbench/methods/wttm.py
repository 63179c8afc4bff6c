"""WTTM (Zheng & Yang, ICLR 2024, weighted transformed teacher matching):
``ce_weight*CE + kd_weight*wttm_loss(gamma)``, TTM's term weighted per sample by ``sum_c p_t^gamma``.

Defaults: the WTTM term of the TTM repository's README example (gamma 0.2, weight 4, CE 1; there beside
CRD). The paper's appendix A.4 lists T and the weight per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.kinds import N, param
from kdbench.losses import wttm_loss
from kdbench.methods import register_method
from kdbench.methods.ttm import dense_teacher, label_ce


@register_method("wttm")
@dataclass(frozen=True)
class WTTM:
    ce_weight: float = param(1.0, N(0))
    kd_weight: float = param(4.0, N(0))
    gamma: float = param(0.2, N(0, lo_open=True))

    needs_teacher = True

    def __call__(self, student_logits: Tensor, teacher, batch) -> dict[str, Tensor]:
        term = wttm_loss(student_logits, dense_teacher("WTTM", teacher), self.gamma, labels=batch.y)
        ce = label_ce(student_logits, batch)
        return {"loss": self.ce_weight * ce + self.kd_weight * term, "ce": ce, "wttm": term}
