"""DKD (Zhao et al., CVPR 2022): ``ce_weight*CE + warm-up * (alpha*TCKD + beta*NCKD) * tau^2``.

The published recipe: CE weight 1, alpha 1, beta 8, tau 4, and a linear warm-up of the DKD term
over the first 20 epochs, ``min(epoch / 20, 1)`` with mdistiller's 1-based epochs (so the first
epoch trains with 1/20 of it). ``standardize`` applies logit standardization (DKD+LS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.kinds import B, I, N, param
from kdbench.losses import dkd_terms
from kdbench.methods import TAU, register_method


@register_method("dkd")
@dataclass
class DKD:
    ce_weight: float = param(1.0, N(0))
    dkd_alpha: float = param(1.0, N(0))
    dkd_beta: float = param(8.0, N(0))
    tau: float = param(4.0, TAU)
    warmup_epochs: int = param(20, I(0))
    standardize: bool = param(False, B)
    _epoch: int = field(default=0, init=False, repr=False)

    needs_teacher = True

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (0-based)."""
        self._epoch = int(epoch)

    @property
    def warmup(self) -> float:
        return 1.0 if self.warmup_epochs == 0 else min((self._epoch + 1) / self.warmup_epochs, 1.0)

    def __call__(self, student_logits: Tensor, teacher: Tensor | None, batch) -> dict[str, Tensor]:
        if not isinstance(teacher, Tensor):
            raise TypeError(f"DKD needs dense teacher logits, got {type(teacher).__name__}")
        t = dkd_terms(student_logits, teacher, batch.y, alpha=self.dkd_alpha, beta=self.dkd_beta, tau=self.tau,
                      standardize=self.standardize)
        ce = F.cross_entropy(student_logits if student_logits.dtype == torch.float64 else student_logits.float(), batch.y)
        return {"loss": self.ce_weight * ce + self.warmup * t["loss"], "ce": ce, "tckd": t["tckd"],
                "nckd": t["nckd"], "dkd": t["loss"]}
