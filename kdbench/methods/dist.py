"""DIST (Huang et al., NeurIPS 2022): ``ce_weight*CE + tau^2 * (beta*inter + gamma*intra)``.

Relations instead of exact probabilities: one minus the Pearson correlation of the student's and
the teacher's tau-softened distributions per example (inter-class) and per class over the batch
(intra-class). Defaults as REFERENCE.md gives the paper's CIFAR setting: beta = gamma = 1, tau = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.kinds import N, param
from kdbench.losses import dist_terms
from kdbench.methods import TAU, register_method


@register_method("dist")
@dataclass(frozen=True)
class DIST:
    ce_weight: float = param(1.0, N(0))
    dist_beta: float = param(1.0, N(0))
    dist_gamma: float = param(1.0, N(0))
    tau: float = param(1.0, TAU)

    needs_teacher = True

    def __call__(self, student_logits: Tensor, teacher: Tensor | None, batch) -> dict[str, Tensor]:
        if not isinstance(teacher, Tensor):
            raise TypeError(f"DIST needs dense teacher logits, got {type(teacher).__name__}")
        t = dist_terms(student_logits, teacher, beta=self.dist_beta, gamma=self.dist_gamma, tau=self.tau)
        ce = F.cross_entropy(student_logits if student_logits.dtype == torch.float64 else student_logits.float(), batch.y)
        return {"loss": self.ce_weight * ce + t["loss"], "ce": ce, "inter": t["inter"], "intra": t["intra"],
                "dist": t["loss"]}
