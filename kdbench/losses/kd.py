"""KD (Hinton et al. 2015) and its soft-term divergences (pure torch).

Per kept position ``i``::

    alpha * CE(student_i, y_i) + (1 - alpha) * w * D_i,      w = tau**2 if tau_squared else 1

averaged over the positions whose label is not ``ignore_index`` (masking as in
:mod:`kdbench.losses.core`). ``D_i`` is ``KL(p_teacher^tau || p_student^tau)`` ("forward"),
``KL(p_student^tau || p_teacher^tau)`` ("reverse"), the generalized JSD (GKD / TRL, "jsd") or
the skew KL (DistiLLM, "skew_forward" / "skew_reverse"), with ``p^tau = softmax(logits / tau)``;
mixtures are formed in log space. :func:`standardize_logits` is logit standardization (Sun et
al. 2024).

Numerics: computed in float32 (float64 inputs stay float64) from ``log_softmax``; each KL is the
element-wise ``p * (log p - log q)`` with zero where ``p == 0``.

Three switches reproduce common implementation mistakes for ablations: ``kl_reduction="mean"``
(``nn.KLDivLoss()``'s default, dividing each position's KL by the number of classes),
``student_tau_one`` (student softmax at temperature 1 in the soft term) and
``detach_teacher=False`` (gradient flowing into the teacher).

Parameter values (alpha, tau, jsd_beta, ...) are checked once, when a method is built
(:mod:`kdbench.methods`); the losses check shapes and dtypes only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses.core import (
    Positions,
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive,
    check_same_shape,
    compute_dtype,
    kl_from_log_probs,
    safe_logsumexp,
    weighted_sum,
)

__all__ = [
    "KL_DIRECTIONS",
    "KL_REDUCTIONS",
    "kd_loss",
    "kd_loss_terms",
    "kl_divergence",
    "standardize_logits",
]

#: the soft-term divergences of :func:`kd_loss` (``kl=``); all at temperature ``tau``
KL_DIRECTIONS = ("forward", "reverse", "jsd", "skew_forward", "skew_reverse")
KL_REDUCTIONS = ("sum", "mean")


def _log_mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``log(w * a + (1 - w) * b)`` from ``log a`` and ``log b``, a two-term :func:`safe_logsumexp`
    (finite gradient where both are ``-inf``, a class masked in both models).

    ``w == 0`` returns ``log_b`` and ``w == 1`` returns ``log_a`` themselves (exact endpoints).
    """
    if w == 0:
        return log_b
    if w == 1:
        return log_a
    both = torch.stack([log_a + math.log(w), log_b + math.log1p(-w)], dim=-1)
    return safe_logsumexp(both).squeeze(-1)


def _soft_divergence(log_pt: Tensor, log_ps: Tensor, kl: str, jsd_beta: float, skew_lambda: float) -> Tensor:
    """Per-position soft term between teacher and student log-probabilities (see :func:`kd_loss`)."""
    if kl == "forward" or (kl == "jsd" and jsd_beta == 0):
        return kl_from_log_probs(log_pt, log_ps)
    if kl == "reverse" or (kl == "jsd" and jsd_beta == 1):
        return kl_from_log_probs(log_ps, log_pt)
    if kl == "jsd":
        log_m = _log_mix(log_pt, log_ps, jsd_beta)
        return jsd_beta * kl_from_log_probs(log_pt, log_m) + (1.0 - jsd_beta) * kl_from_log_probs(
            log_ps, log_m
        )
    if kl == "skew_forward":
        return kl_from_log_probs(log_pt, _log_mix(log_pt, log_ps, skew_lambda))
    if kl == "skew_reverse":
        return kl_from_log_probs(log_ps, _log_mix(log_ps, log_pt, skew_lambda))
    raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-row z-score of logits over the last dim: ``(z - mean(z)) / (eps + std(z))``.

    ``std`` is torch's default, the *unbiased* (Bessel-corrected, divisor ``C - 1``) standard
    deviation ``z.std(dim=-1)``, as the logit-standardization code (Sun et al., CVPR 2024) calls
    it; the biased one (divisor ``C``) would give rows ``sqrt(C / (C - 1))`` times larger, i.e. a
    different effective temperature. ``eps`` is added to the std (not to the variance). A constant
    row (std 0) maps to zeros with a finite (zero) gradient; ``C == 1`` gives zeros.

    Computed in float32 (float64 stays float64), like the losses; returns that dtype.
    """
    check_nonnegative("eps", eps)
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape [..., C]")
    z = logits.to(compute_dtype(logits))
    centred = z - z.mean(dim=-1, keepdim=True)
    if z.shape[-1] < 2:
        return centred
    return centred / (eps + z.std(dim=-1, keepdim=True))


def kl_divergence(p_logits: Tensor, q_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Per-position ``KL(softmax(p_logits / tau) || softmax(q_logits / tau))``.

    Returns a tensor of shape ``logits.shape[:-1]`` (float32, or float64 for float64 inputs).
    Gradients flow into both arguments.
    """
    check_positive("tau", tau)
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p_logits and q_logits must have the same shape, got {tuple(p_logits.shape)} "
            f"and {tuple(q_logits.shape)}"
        )
    if p_logits.dim() < 1:
        raise ValueError("p_logits must have at least one dimension (the classes)")
    dtype = compute_dtype(p_logits)
    log_p = F.log_softmax(p_logits.to(dtype) / tau, dim=-1)
    log_q = F.log_softmax(q_logits.to(dtype) / tau, dim=-1)
    return kl_from_log_probs(log_p, log_q)


def kd_loss_terms(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    *,
    alpha: float = 0.5,
    tau: float = 2.0,
    kl: str = "forward",
    tau_squared: bool = True,
    ignore_index: int = -100,
    kl_reduction: str = "sum",
    student_tau_one: bool = False,
    detach_teacher: bool = True,
    standardize: bool = False,
    jsd_beta: float = 0.5,
    skew_lambda: float = 0.1,
) -> dict[str, Tensor]:
    """The distillation loss and its two parts, for logging.

    Returns ``{"loss", "ce", "kl"}`` where ``ce`` and ``kl`` are the masked means over kept
    positions *before* weighting (``kl`` already includes the ``kl_reduction`` scaling), so that
    ``loss == alpha * ce + (1 - alpha) * w * kl`` with ``w = tau**2 if tau_squared else 1``.
    ``ce`` is 0 when ``labels`` is None and ``kl`` is 0 when ``teacher_logits`` is None. A term whose
    weight is zero is left out of ``loss`` (so e.g. alpha=1 never propagates a NaN teacher).
    See :func:`kd_loss` for the arguments.
    """
    check_logits(student_logits)
    if teacher_logits is None:
        if alpha != 1:
            raise ValueError(
                f"teacher_logits=None is only allowed with alpha == 1 (pure CE), got alpha={alpha!r}"
            )
    else:
        check_same_shape(teacher_logits, student_logits)
    check_labels(labels, student_logits, alpha=alpha)
    pos = Positions.of(student_logits, labels, ignore_index)
    s = pos.rows(student_logits)
    ce = pos.cross_entropy(s)
    if teacher_logits is not None:
        t = pos.rows(teacher_logits.detach() if detach_teacher else teacher_logits)
        # standardization acts on the soft term only; CE above used the raw student logits
        s_soft = standardize_logits(s) if standardize else s
        if standardize:
            t = standardize_logits(t)
        log_pt = F.log_softmax(t / tau, dim=-1)
        log_ps = F.log_softmax(s_soft if student_tau_one else s_soft / tau, dim=-1)
        kl_pos = _soft_divergence(log_pt, log_ps, kl, jsd_beta, skew_lambda)
        if kl_reduction == "mean":
            kl_pos = kl_pos / s.shape[-1]
        elif kl_reduction != "sum":
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        kl_term = pos.mean(kl_pos)
    else:
        kl_term = s.new_zeros(())
    loss = weighted_sum(ce, kl_term, alpha=alpha, tau=tau, tau_squared=tau_squared)
    return {"loss": loss, "ce": ce, "kl": kl_term}


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    *,
    alpha: float = 0.5,
    tau: float = 2.0,
    kl: str = "forward",
    tau_squared: bool = True,
    ignore_index: int = -100,
    kl_reduction: str = "sum",
    student_tau_one: bool = False,
    detach_teacher: bool = True,
    standardize: bool = False,
    jsd_beta: float = 0.5,
    skew_lambda: float = 0.1,
) -> Tensor:
    """Scalar KD loss: mean over kept positions of ``alpha*CE + (1-alpha)*w*KL``.

    Args:
        student_logits: ``[..., C]`` logits (any leading dims, e.g. ``[N, C]`` or ``[B, T, C]``).
        teacher_logits: same shape, or None when ``alpha == 1`` (training from scratch).
        labels: integer class ids of shape ``student_logits.shape[:-1]``, or None when ``alpha == 0``.
        alpha: weight of the hard-label cross entropy (at temperature 1), in [0, 1].
        tau: softmax temperature of the soft term, > 0.
        kl: the soft term, with ``p_t, p_s`` the teacher / student softmax at temperature ``tau``:
            "forward" = KL(p_t || p_s), "reverse" = KL(p_s || p_t);
            "jsd" = generalized JSD as TRL's ``generalized_jsd_loss`` computes it,
            ``b * KL(p_t || m) + (1 - b) * KL(p_s || m)`` with ``m = b * p_t + (1 - b) * p_s`` and
            ``b = jsd_beta``, except ``b == 0`` is exactly "forward" and ``b == 1`` exactly
            "reverse" (TRL's special cases; the value jumps there, it scales like ``b * KL``);
            "skew_forward" = KL(p_t || l * p_t + (1 - l) * p_s) and
            "skew_reverse" = KL(p_s || (1 - l) * p_t + l * p_s) with ``l = skew_lambda``
            (DistiLLM; ``l == 0`` is exactly "forward" / "reverse").
        tau_squared: multiply the soft term by ``tau**2`` so its gradient scale does not shrink
            as ``1/tau**2`` (Hinton et al.). kdbench applies it to every ``kl`` choice; TRL's
            generalized JSD applies no ``tau**2``, so set ``tau_squared=False`` for TRL's number.
        ignore_index: positions with this label are dropped from both terms.
        kl_reduction: "sum" (the true KL per position) or "mean" (divided by C, the
            ``nn.KLDivLoss()`` default-reduction mistake).
        student_tau_one: ablation: student softmax at temperature 1 in the soft term.
        detach_teacher: when False, gradient also flows into ``teacher_logits`` (ablation).
        standardize: apply :func:`standardize_logits` to student and teacher logits before the
            division by ``tau`` in the soft term (logit standardization); CE stays on the raw
            student logits.
        jsd_beta: the ``beta`` of ``kl="jsd"``, in [0, 1] (ignored otherwise).
        skew_lambda: the ``lambda`` of ``kl="skew_forward"`` / ``"skew_reverse"``, in [0, 1].

    Returns a 0-dim tensor, float32 (float64 for float64 student logits).
    """
    return kd_loss_terms(
        student_logits,
        teacher_logits,
        labels,
        alpha=alpha,
        tau=tau,
        kl=kl,
        tau_squared=tau_squared,
        ignore_index=ignore_index,
        kl_reduction=kl_reduction,
        student_tau_one=student_tau_one,
        detach_teacher=detach_teacher,
        standardize=standardize,
        jsd_beta=jsd_beta,
        skew_lambda=skew_lambda,
    )["loss"]
