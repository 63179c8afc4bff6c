"""Knowledge-distillation losses (pure torch).

The distillation loss of Hinton et al. (2015), per kept position ``i``::

    alpha * CE(student_i, y_i) + (1 - alpha) * w * KL_i,      w = tau**2 if tau_squared else 1

averaged over the positions whose label is not ``ignore_index``. ``KL_i`` is
``KL(p_teacher^tau || p_student^tau)`` ("forward") or ``KL(p_student^tau || p_teacher^tau)``
("reverse"), where ``p^tau = softmax(logits / tau)``.

Numerics: everything is computed in float32 (float64 inputs stay float64) from ``log_softmax``;
the KL is summed element-wise as ``p * (log p - log q)`` with zero where ``p == 0``, never as
cross-entropy minus entropy (which cancels catastrophically for peaked distributions).

Masking is done without a host sync: masked rows are replaced by zeros *before* any softmax
(so garbage or NaN logits there cannot leak into the value or the gradient), their per-position
terms are zeroed, and the sum is divided by ``max(n_kept, 1)``. With no kept position the loss is
an exact zero that is still connected to ``student_logits`` in the autograd graph.

Three switches reproduce common implementation mistakes for ablations: ``kl_reduction="mean"``
(``nn.KLDivLoss()``'s default, dividing each position's KL by the number of classes),
``student_tau_one`` (student softmax at temperature 1 in the soft term) and
``detach_teacher=False`` (gradient flowing into the teacher).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KL_DIRECTIONS", "KL_REDUCTIONS", "kd_loss", "kd_loss_terms", "kl_divergence"]

KL_DIRECTIONS = ("forward", "reverse")
KL_REDUCTIONS = ("sum", "mean")


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, float32) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_tau(tau: float) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-position ``sum_c p (log p - log q)`` over the last dim, with the term 0 where ``p == 0``.

    The difference is zeroed *before* multiplying so that neither the value nor the gradient
    sees ``0 * inf`` (a ``-inf`` logit gives ``log p = -inf``). For nearly equal peaked
    distributions float32 rounding in ``log_softmax`` (``log(1 + 1e-10) == 0``) can make the sum
    slightly negative (~1e-10); the value is clamped at 0 with a straight-through gradient, so
    ``KL >= 0`` always holds and the gradient stays the exact one of the element-wise sum.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    kl = (p * diff).sum(dim=-1)
    return kl + (kl.clamp_min(0) - kl).detach()


def kl_divergence(p_logits: Tensor, q_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Per-position ``KL(softmax(p_logits / tau) || softmax(q_logits / tau))``.

    Returns a tensor of shape ``logits.shape[:-1]`` (float32, or float64 for float64 inputs).
    Gradients flow into both arguments.
    """
    _check_tau(tau)
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p_logits and q_logits must have the same shape, got {tuple(p_logits.shape)} "
            f"and {tuple(q_logits.shape)}"
        )
    if p_logits.dim() < 1:
        raise ValueError("p_logits must have at least one dimension (the classes)")
    dtype = _compute_dtype(p_logits)
    log_p = F.log_softmax(p_logits.to(dtype) / tau, dim=-1)
    log_q = F.log_softmax(q_logits.to(dtype) / tau, dim=-1)
    return _kl_from_log_probs(log_p, log_q)


def _validate(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    alpha: float,
    tau: float,
    kl: str,
    kl_reduction: str,
) -> None:
    """Raise ValueError naming the offending argument and what is allowed."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    _check_tau(tau)
    if kl not in KL_DIRECTIONS:
        raise ValueError(f"kl must be one of {KL_DIRECTIONS}, got {kl!r}")
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 1:
        raise ValueError("student_logits must be a tensor of shape [..., C]")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got dtype {student_logits.dtype}")
    if student_logits.shape[-1] < 1:
        raise ValueError("student_logits must have at least one class (last dim C >= 1)")
    if teacher_logits is None:
        if alpha != 1:
            raise ValueError(
                f"teacher_logits=None is only allowed with alpha == 1 (pure CE), got alpha={alpha!r}"
            )
    else:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher_logits shape {tuple(teacher_logits.shape)} does not match "
                f"student_logits shape {tuple(student_logits.shape)}"
            )
        if not teacher_logits.is_floating_point():
            raise ValueError(f"teacher_logits must be floating point, got dtype {teacher_logits.dtype}")
    if labels is None:
        if alpha != 0:
            raise ValueError(
                f"labels=None is only allowed with alpha == 0 (pure distillation), got alpha={alpha!r}"
            )
    else:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} must equal student_logits.shape[:-1] = "
                f"{tuple(student_logits.shape[:-1])}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


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
) -> dict[str, Tensor]:
    """The distillation loss and its two parts, for logging.

    Returns ``{"loss", "ce", "kl"}`` where ``ce`` and ``kl`` are the masked means over kept
    positions *before* weighting (``kl`` already includes the ``kl_reduction`` scaling), so that
    ``loss == alpha * ce + (1 - alpha) * w * kl`` with ``w = tau**2 if tau_squared else 1``.
    ``ce`` is 0 when ``labels`` is None and ``kl`` is 0 when ``teacher_logits`` is None. A term whose
    weight is zero is left out of ``loss`` (so e.g. alpha=1 never propagates a NaN teacher).
    See :func:`kd_loss` for the arguments.
    """
    _validate(student_logits, teacher_logits, labels, alpha, tau, kl, kl_reduction)
    dtype = _compute_dtype(student_logits)
    n_classes = student_logits.shape[-1]
    s = student_logits.to(dtype).reshape(-1, n_classes)

    if labels is not None:
        y = labels.reshape(-1).long()
        keep = y != ignore_index
    else:
        y = None
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    # Zero the masked rows before any softmax: garbage/NaN there must not reach value or gradient.
    keep_rows = keep.unsqueeze(-1)
    s = torch.where(keep_rows, s, torch.zeros((), dtype=dtype, device=s.device))
    n_kept = keep.sum().clamp(min=1).to(dtype)
    zero_pos = torch.zeros(s.shape[0], dtype=dtype, device=s.device)

    def masked_mean(per_position: Tensor) -> Tensor:
        return torch.where(keep, per_position, zero_pos).sum() / n_kept

    if y is not None:
        safe_y = torch.where(keep, y, torch.zeros_like(y))
        ce = masked_mean(F.cross_entropy(s, safe_y, reduction="none"))
    else:
        ce = s.new_zeros(())

    if teacher_logits is not None:
        t = teacher_logits.detach() if detach_teacher else teacher_logits
        t = t.to(dtype).reshape(-1, n_classes)
        t = torch.where(keep_rows, t, torch.zeros((), dtype=dtype, device=t.device))
        log_pt = F.log_softmax(t / tau, dim=-1)
        log_ps = F.log_softmax(s if student_tau_one else s / tau, dim=-1)
        if kl == "forward":
            kl_pos = _kl_from_log_probs(log_pt, log_ps)
        else:
            kl_pos = _kl_from_log_probs(log_ps, log_pt)
        if kl_reduction == "mean":
            kl_pos = kl_pos / n_classes
        kl_term = masked_mean(kl_pos)
    else:
        kl_term = s.new_zeros(())

    w = tau**2 if tau_squared else 1.0
    if alpha == 1:
        loss = ce
    elif alpha == 0:
        loss = w * kl_term
    else:
        loss = alpha * ce + (1.0 - alpha) * w * kl_term
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
) -> Tensor:
    """Scalar KD loss: mean over kept positions of ``alpha*CE + (1-alpha)*w*KL``.

    Args:
        student_logits: ``[..., C]`` logits (any leading dims, e.g. ``[N, C]`` or ``[B, T, C]``).
        teacher_logits: same shape, or None when ``alpha == 1`` (training from scratch).
        labels: integer class ids of shape ``student_logits.shape[:-1]``, or None when ``alpha == 0``.
        alpha: weight of the hard-label cross entropy (at temperature 1), in [0, 1].
        tau: softmax temperature of the soft term, > 0.
        kl: "forward" = KL(teacher || student), "reverse" = KL(student || teacher).
        tau_squared: multiply the soft term by ``tau**2`` so its gradient scale does not shrink
            as ``1/tau**2`` (Hinton et al.).
        ignore_index: positions with this label are dropped from both terms.
        kl_reduction: "sum" (the true KL per position) or "mean" (divided by C, the
            ``nn.KLDivLoss()`` default-reduction mistake).
        student_tau_one: ablation: student softmax at temperature 1 in the soft term.
        detach_teacher: when False, gradient also flows into ``teacher_logits`` (ablation).

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
    )["loss"]
