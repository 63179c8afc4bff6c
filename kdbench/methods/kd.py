"""KD (Hinton et al. 2015): ``alpha*CE + (1-alpha)*w*KL(p_t^tau || p_s^tau)`` and its ablation switches."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.losses import kd_loss_terms
from kdbench.methods import register_method


@dataclass(frozen=True)
class KD:
    alpha: float = 0.5
    tau: float = 4.0
    kl: str = "forward"
    tau_squared: bool = True
    kl_reduction: str = "sum"
    student_tau_one: bool = False

    needs_teacher = True

    def __call__(self, student_logits: Tensor, teacher: Tensor | None, batch) -> dict[str, Tensor]:
        if teacher is not None and not isinstance(teacher, Tensor):
            raise TypeError(f"KD needs dense teacher logits, got {type(teacher).__name__}")
        # the signal decides whether the teacher's output carries a gradient (the teacher_grad ablation)
        return kd_loss_terms(student_logits, teacher, batch.y, alpha=self.alpha, tau=self.tau, kl=self.kl,
                             tau_squared=self.tau_squared, kl_reduction=self.kl_reduction,
                             student_tau_one=self.student_tau_one, detach_teacher=False)


register_method("kd")(KD)
