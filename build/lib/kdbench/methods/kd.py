"""KD (Hinton et al. 2015): ``alpha*CE + (1-alpha)*w*D(p_t^tau, p_s^tau)``, its divergences and switches.

``kl`` picks the divergence (forward / reverse KL, generalized JSD, skew KL), ``standardize``
z-scores both sides' logits before ``/ tau`` (logit standardization, Sun et al. 2024: KD+LS), and
the ablation switches reproduce common mistakes. ``ce_weight`` / ``kd_weight``, when set, replace
the convex ``alpha`` / ``1 - alpha`` weights (recipes such as KD+LS use CE 0.1 and KD 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.losses import KL_DIRECTIONS, KL_REDUCTIONS, TOPK_MODES, kd_loss_terms, topk_kd_loss_terms
from kdbench.methods import check, flag, number, register_method


@register_method("kd")
@dataclass(frozen=True)
class KD:
    alpha: float = 0.5
    tau: float = 4.0
    kl: str = "forward"
    tau_squared: bool = True
    kl_reduction: str = "sum"
    student_tau_one: bool = False
    standardize: bool = False
    jsd_beta: float = 0.5
    skew_lambda: float = 0.1
    ce_weight: float | None = None
    kd_weight: float | None = None
    topk_mode: str = "renorm"

    needs_teacher = True

    def __post_init__(self) -> None:
        number(self.alpha, "alpha", lo=0.0, hi=1.0)
        number(self.tau, "tau", lo=0.0, lo_open=True)
        check(self.kl in KL_DIRECTIONS, "kl", f"unknown value {self.kl!r}; allowed: {', '.join(KL_DIRECTIONS)}")
        check(self.kl_reduction in KL_REDUCTIONS, "kl_reduction",
              f"unknown value {self.kl_reduction!r}; allowed: {', '.join(KL_REDUCTIONS)}")
        for key in ("tau_squared", "student_tau_one", "standardize"):
            flag(getattr(self, key), key)
        number(self.jsd_beta, "jsd_beta", lo=0.0, hi=1.0)
        number(self.skew_lambda, "skew_lambda", lo=0.0, hi=1.0)
        for key in ("ce_weight", "kd_weight"):
            if getattr(self, key) is not None:
                number(getattr(self, key), key, lo=0.0)
        check(self.topk_mode in TOPK_MODES, "topk_mode",
              f"unknown value {self.topk_mode!r}; allowed: {', '.join(TOPK_MODES)}")

    def __call__(self, student_logits: Tensor, teacher, batch) -> dict[str, Tensor]:
        if hasattr(teacher, "log_probs"):  # a sparse (top-k) teacher signal (signals.TopK): captured log-probs
            if self.kl not in ("forward", "reverse") or self.standardize or self.student_tau_one \
                    or self.kl_reduction != "sum":
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
