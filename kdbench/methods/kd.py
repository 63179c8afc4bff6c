"""KD (Hinton et al. 2015): ``alpha*CE + (1-alpha)*w*D(p_t^tau, p_s^tau)``, its divergences and switches.

``kl`` picks the divergence (forward / reverse KL, generalized JSD, skew KL), ``standardize``
z-scores both sides' logits before ``/ tau`` (logit standardization, Sun et al. 2024: KD+LS), and
the ablation switches reproduce common mistakes. ``ce_weight`` / ``kd_weight``, when set, replace
the convex ``alpha`` / ``1 - alpha`` weights (recipes such as KD+LS use CE 0.1 and KD 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.kinds import B, C, N, param
from kdbench.losses import KL_DIRECTIONS, KL_REDUCTIONS, TOPK_MODES, kd_loss_terms, topk_kd_loss_terms
from kdbench.methods import TAU, register_method


@register_method("kd")
@dataclass(frozen=True)
class KD:
    alpha: float = param(0.5, N(0, 1))
    tau: float = param(4.0, TAU)
    kl: str = param("forward", C(*KL_DIRECTIONS))
    tau_squared: bool = param(True, B)
    kl_reduction: str = param("sum", C(*KL_REDUCTIONS))
    student_tau_one: bool = param(False, B)
    standardize: bool = param(False, B)
    jsd_beta: float = param(0.5, N(0, 1))
    skew_lambda: float = param(0.1, N(0, 1))
    ce_weight: float | None = param(None, N(0, optional=True))
    kd_weight: float | None = param(None, N(0, optional=True))
    topk_mode: str = param("renorm", C(*TOPK_MODES))

    needs_teacher = True

    @property
    def reads(self) -> tuple[str, ...]:
        """Dense logits; top-k log-probs too where the loss has a top-k form (forward/reverse KL, summed,
        without standardisation or the untempered-student ablation)."""
        if self.kl in ("forward", "reverse") and not (self.standardize or self.student_tau_one) \
                and self.kl_reduction == "sum":
            return ("dense", "topk")
        return ("dense",)

    def __call__(self, student_logits: Tensor, teacher, batch) -> dict[str, Tensor]:
        if hasattr(teacher, "log_probs"):  # a sparse (top-k) teacher signal (signals.TopK): captured log-probs
            if "topk" not in self.reads:  # refused before any work (runner.preflight_needs); a direct caller here
                raise ValueError("a top-k teacher supports kl=forward|reverse without standardize, "
                                 "student_tau_one or kl_reduction=mean")
            terms = topk_kd_loss_terms(student_logits, teacher.indices, teacher.log_probs, batch.y, alpha=self.alpha,
                                       tau=self.tau, kl=self.kl, mode=self.topk_mode, capture_tau=teacher.tau,
                                       tau_squared=self.tau_squared)
            return self._weighted(terms)
        if teacher is not None and not isinstance(teacher, Tensor):
            raise TypeError(f"KD needs teacher logits or a top-k signal, got {type(teacher).__name__}")
        # the signal decides whether the teacher's output carries a gradient (the teacher_grad ablation)
        terms = kd_loss_terms(student_logits, teacher, batch.y, alpha=self.alpha, tau=self.tau, kl=self.kl,
                              tau_squared=self.tau_squared, kl_reduction=self.kl_reduction,
                              student_tau_one=self.student_tau_one, detach_teacher=False,
                              standardize=self.standardize, jsd_beta=self.jsd_beta, skew_lambda=self.skew_lambda)
        return self._weighted(terms)

    def _weighted(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.ce_weight is None and self.kd_weight is None:
            return terms
        w = self.tau**2 if self.tau_squared else 1.0
        ce_w = self.alpha if self.ce_weight is None else self.ce_weight
        kd_w = (1.0 - self.alpha) if self.kd_weight is None else self.kd_weight
        return {**terms, "loss": ce_w * terms["ce"] + kd_w * w * terms["kl"]}
