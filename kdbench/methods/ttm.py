"""TTM (Zheng & Yang, ICLR 2024, transformed teacher matching): ``ce_weight*CE + kd_weight*ttm_loss(gamma)``,
KD with the teacher at temperature ``1 / gamma`` and the student untempered (no ``tau**2``).

Defaults: the recipe of the TTM repository's README example (CE 1, TTM weight 45, gamma 0.1, i.e. the
teacher at T 10; its vgg13 -> vgg8 run). The paper's appendix A.4 lists T and the weight per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.kinds import N, param
from kdbench.losses import kd_loss_terms, ttm_loss
from kdbench.methods import register_method


def dense_teacher(name: str, teacher) -> Tensor:
    """The teacher's logits, or TypeError for a signal that gives none (a top-k capture)."""
    if not isinstance(teacher, Tensor):
        raise TypeError(f"{name} needs dense teacher logits, got {type(teacher).__name__}")
    return teacher


def label_ce(student_logits: Tensor, batch) -> Tensor:
    """CE of the student with the labels (masked as the losses: ``-100`` dropped), float32."""
    return kd_loss_terms(student_logits, None, batch.y, alpha=1.0)["ce"]


@register_method("ttm")
@dataclass(frozen=True)
class TTM:
    ce_weight: float = param(1.0, N(0))
    kd_weight: float = param(45.0, N(0))
    gamma: float = param(0.1, N(0, lo_open=True))

    needs_teacher = True

    def __call__(self, student_logits: Tensor, teacher, batch) -> dict[str, Tensor]:
        term = ttm_loss(student_logits, dense_teacher("TTM", teacher), self.gamma, labels=batch.y)
        ce = label_ce(student_logits, batch)
        return {"loss": self.ce_weight * ce + self.kd_weight * term, "ce": ce, "ttm": term}
