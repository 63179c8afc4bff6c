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

Beyond KD (issue 10; formulas as the public implementations compute them):

* ``kl`` of :func:`kd_loss` also takes ``"jsd"`` (generalized JSD, GKD / TRL) and
  ``"skew_forward"`` / ``"skew_reverse"`` (skew KL, DistiLLM); mixtures are formed in log space.
* :func:`standardize_logits` and ``standardize=True`` (logit standardization, Sun et al. 2024).
* :func:`dkd_loss` / :func:`dkd_terms` (decoupled KD, Zhao et al. 2022, as mdistiller computes it).
* :func:`dist_loss` / :func:`dist_terms` (DIST, Huang et al. 2022, as torchdistill's ``DISTLoss``).

Each new loss returns the kept-position mean of its own term only (no CE, no warm-up), computed in
float32 (float64 inputs stay float64), with the same masking rules as :func:`kd_loss`. Unlike
:func:`kd_loss` they never detach the teacher: a gradient reaches ``teacher_logits`` whenever it
requires one (kdbench's teacher signals hand over detached logits unless asked otherwise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KL_DIRECTIONS",
    "KL_REDUCTIONS",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "kd_loss_terms",
    "kl_divergence",
    "standardize_logits",
    "topk_kd_loss",
    "topk_kd_loss_terms",
]

#: how a top-k teacher becomes a distribution (see :func:`topk_kd_loss_terms`)
TOPK_MODES = ("renorm", "tail")

#: the soft-term divergences of :func:`kd_loss` (``kl=``); all at temperature ``tau``
KL_DIRECTIONS = ("forward", "reverse", "jsd", "skew_forward", "skew_reverse")
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


def _log_mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``log(w * a + (1 - w) * b)`` from ``log a`` and ``log b``, a two-term log-sum-exp.

    ``w == 0`` returns ``log_b`` and ``w == 1`` returns ``log_a`` themselves (exact endpoints).
    Unlike ``torch.logsumexp`` the gradient stays finite where both inputs are ``-inf`` (a class
    masked in both models): the shift is detached and the log is taken of a safe argument.
    """
    if w == 0:
        return log_b
    if w == 1:
        return log_a
    xa = log_a + math.log(w)
    xb = log_b + math.log1p(-w)
    hi = torch.maximum(xa, xb).detach()
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    total = (xa - hi).exp() + (xb - hi).exp()
    pos = total > 0
    out = hi + torch.where(pos, total, torch.ones_like(total)).log()
    return torch.where(pos, out, torch.full_like(out, -math.inf))


def _soft_divergence(log_pt: Tensor, log_ps: Tensor, kl: str, jsd_beta: float, skew_lambda: float) -> Tensor:
    """Per-position soft term between teacher and student log-probabilities (see :func:`kd_loss`)."""
    if kl == "forward" or (kl == "jsd" and jsd_beta == 0):
        return _kl_from_log_probs(log_pt, log_ps)
    if kl == "reverse" or (kl == "jsd" and jsd_beta == 1):
        return _kl_from_log_probs(log_ps, log_pt)
    if kl == "jsd":
        log_m = _log_mix(log_pt, log_ps, jsd_beta)
        return jsd_beta * _kl_from_log_probs(log_pt, log_m) + (1.0 - jsd_beta) * _kl_from_log_probs(
            log_ps, log_m
        )
    if kl == "skew_forward":
        return _kl_from_log_probs(log_pt, _log_mix(log_pt, log_ps, skew_lambda))
    if kl == "skew_reverse":
        return _kl_from_log_probs(log_ps, _log_mix(log_ps, log_pt, skew_lambda))
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
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape [..., C]")
    z = logits.to(_compute_dtype(logits))
    centred = z - z.mean(dim=-1, keepdim=True)
    if z.shape[-1] < 2:
        return centred
    return centred / (eps + z.std(dim=-1, keepdim=True))


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _check_weight(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


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
    _validate(student_logits, teacher_logits, labels, alpha, tau, kl, kl_reduction)
    _check_unit("jsd_beta", jsd_beta)
    _check_unit("skew_lambda", skew_lambda)
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be true or false, got {standardize!r}")
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
        # standardization acts on the soft term only; CE above used the raw student logits
        s_soft = standardize_logits(s) if standardize else s
        if standardize:
            t = standardize_logits(t)
        log_pt = F.log_softmax(t / tau, dim=-1)
        log_ps = F.log_softmax(s_soft if student_tau_one else s_soft / tau, dim=-1)
        kl_pos = _soft_divergence(log_pt, log_ps, kl, jsd_beta, skew_lambda)
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


# --------------------------------------------------------------------------------------------
# DKD and DIST
# --------------------------------------------------------------------------------------------


def _validate_pair(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, min_classes: int
) -> None:
    """Shape / dtype checks shared by the losses that always need a teacher."""
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 1:
        raise ValueError("student_logits must be a tensor of shape [..., C]")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got dtype {student_logits.dtype}")
    if student_logits.shape[-1] < min_classes:
        raise ValueError(
            f"student_logits must have at least {min_classes} classes (last dim), "
            f"got {student_logits.shape[-1]}"
        )
    if not isinstance(teacher_logits, Tensor) or teacher_logits.shape != student_logits.shape:
        shape = tuple(teacher_logits.shape) if isinstance(teacher_logits, Tensor) else None
        raise ValueError(
            f"teacher_logits shape {shape} does not match student_logits shape {tuple(student_logits.shape)}"
        )
    if not teacher_logits.is_floating_point():
        raise ValueError(f"teacher_logits must be floating point, got dtype {teacher_logits.dtype}")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != student_logits.shape[:-1]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else None
            raise ValueError(
                f"labels shape {shape} must equal student_logits.shape[:-1] = {tuple(student_logits.shape[:-1])}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def _flat_masked(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``[M, C]`` student / teacher rows in the compute dtype, the flat labels and the keep mask.

    Masked rows are zeroed before any softmax (garbage or NaN there reaches neither the value nor
    the gradient); with ``labels=None`` every row is kept.
    """
    dtype = _compute_dtype(student_logits)
    n_classes = student_logits.shape[-1]
    s = student_logits.to(dtype).reshape(-1, n_classes)
    t = teacher_logits.to(dtype).reshape(-1, n_classes)
    if labels is not None:
        y = labels.reshape(-1).long()
        keep = y != ignore_index
    else:
        y = None
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    rows = keep.unsqueeze(-1)
    zero = torch.zeros((), dtype=dtype, device=s.device)
    return torch.where(rows, s, zero), torch.where(rows, t, zero), y, keep


def _masked_mean(per_position: Tensor, keep: Tensor) -> Tensor:
    """Mean over kept positions, no host sync; an exact (graph-connected) 0 when none is kept."""
    n_kept = keep.sum().clamp(min=1).to(per_position.dtype)
    return torch.where(keep, per_position, torch.zeros_like(per_position)).sum() / n_kept


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    tau: float = 4.0,
    standardize: bool = False,
    ignore_index: int = -100,
) -> dict[str, Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022) and its two parts: ``{"tckd", "nckd", "loss"}``.

    With ``p_t, p_s`` the teacher / student softmax at temperature ``tau`` and ``y`` the label:

    * ``tckd``: KL(b_t || b_s) over the two bins ``b = (p[y], 1 - p[y])``;
    * ``nckd``: KL over the non-target classes, each side renormalised over them;
    * ``loss = (alpha * tckd + beta * nckd) * tau**2`` (mdistiller's DKD term, without its CE and
      its warm-up factor ``min(epoch / 20, 1)``, which the caller applies).

    ``tckd`` and ``nckd`` are the kept-position means of the unweighted KLs (no ``tau**2``). Per
    position ``KL(p_t || p_s) == tckd + (1 - p_t[y]) * nckd`` (the paper's decomposition).

    Numerics: mdistiller subtracts 1000 from the target's ``z / tau`` before the non-target
    softmax; here the target is masked with ``-inf`` in a log-softmax, the exact renormalised
    distribution (the two agree unless the target exceeds the other scaled logits by ~900+, where
    mdistiller's mask leaks). ``1 - p[y]`` is a log-sum-exp of the non-target log-probabilities,
    so peaked distributions and logits of ~1e3 give finite values and gradients.

    Args:
        student_logits, teacher_logits: ``[..., C]`` logits, ``C >= 2`` (``[N, C]``, ``[B, T, C]``).
        labels: integer targets of shape ``student_logits.shape[:-1]``; ``ignore_index`` drops a
            position.
        alpha, beta: weights of TCKD and NCKD (>= 0); tau: temperature (> 0).
        standardize: apply :func:`standardize_logits` to both models' logits before ``/ tau``.

    Float32 internals (float64 stays float64). The teacher is not detached.
    """
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    _check_tau(tau)
    if not isinstance(standardize, bool):
        raise ValueError(f"standardize must be true or false, got {standardize!r}")
    if labels is None:
        raise ValueError("labels must be given for DKD (the target class splits the distribution)")
    _validate_pair(student_logits, teacher_logits, labels, min_classes=2)
    s, t, y, keep = _flat_masked(student_logits, teacher_logits, labels, ignore_index)
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    safe_y = torch.where(keep, y, torch.zeros_like(y))
    is_target = F.one_hot(safe_y, s.shape[-1]).bool()
    neg_inf = torch.full((), -math.inf, dtype=s.dtype, device=s.device)

    def parts(z: Tensor) -> tuple[Tensor, Tensor]:
        """(log of the two bins [M, 2], log of the renormalised non-target distribution [M, C])."""
        z = z / tau
        log_p = F.log_softmax(z, dim=-1)
        log_target = log_p.gather(-1, safe_y.unsqueeze(-1))
        log_rest = torch.logsumexp(torch.where(is_target, neg_inf, log_p), dim=-1, keepdim=True)
        log_non_target = F.log_softmax(torch.where(is_target, neg_inf, z), dim=-1)
        return torch.cat([log_target, log_rest], dim=-1), log_non_target

    bins_s, rest_s = parts(s)
    bins_t, rest_t = parts(t)
    tckd = _masked_mean(_kl_from_log_probs(bins_t, bins_s), keep)
    nckd = _masked_mean(_kl_from_log_probs(rest_t, rest_s), keep)
    loss = (alpha * tckd + beta * nckd) * tau**2
    return {"tckd": tckd, "nckd": nckd, "loss": loss}


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    tau: float = 4.0,
    standardize: bool = False,
    ignore_index: int = -100,
) -> Tensor:
    """Scalar DKD term ``(alpha * TCKD + beta * NCKD) * tau**2``, mean over kept positions.

    See :func:`dkd_terms`. Returns a 0-dim float32 tensor (float64 for float64 student logits).
    """
    return dkd_terms(
        student_logits,
        teacher_logits,
        labels,
        alpha=alpha,
        beta=beta,
        tau=tau,
        standardize=standardize,
        ignore_index=ignore_index,
    )["loss"]


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero (not infinite) gradient at 0."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _pearson_centred(a: Tensor, b: Tensor, dim: int, eps: float) -> Tensor:
    """``<a, b> / (|a| |b| + eps)`` along ``dim`` for already-centred ``a, b`` (DIST's Pearson)."""
    num = (a * b).sum(dim)
    return num / (_safe_sqrt((a * a).sum(dim)) * _safe_sqrt((b * b).sum(dim)) + eps)


def dist_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    eps: float = 1e-8,
    labels: Tensor | None = None,
    ignore_index: int = -100,
) -> dict[str, Tensor]:
    """DIST (Huang et al., NeurIPS 2022) and its two parts: ``{"inter", "intra", "loss"}``.

    As torchdistill's ``DISTLoss`` computes it, on ``p_s, p_t`` = softmax at temperature ``tau``:

    * ``inter = 1 - mean_i Pearson(p_s[i, :], p_t[i, :])`` (per row, over classes);
    * ``intra = 1 - mean_c Pearson(p_s[:, c], p_t[:, c])`` (per class, over the rows);
    * ``loss = tau**2 * (beta * inter + gamma * intra)``.

    Pearson is ``<a - mean a, b - mean b> / (|a - mean a| * |b - mean b| + eps)`` (``eps`` added
    to the product of the norms, as torchdistill does): identical inputs give ``1 - O(eps)``, not
    exactly 1, and a constant vector (a uniform row, or a column over a single row) has Pearson 0.
    Each part lies in [0, 2].

    ``[B, T, C]`` (or any ``[..., C]``) inputs are flattened to rows; with ``labels`` (shape
    ``[...]``) the positions labelled ``ignore_index`` are dropped, i.e. the statistics run over
    the kept rows only (no host sync). With no kept row every term is an exact 0.

    Float32 internals (float64 stays float64). The teacher is not detached.
    """
    _check_weight("beta", beta)
    _check_weight("gamma", gamma)
    _check_tau(tau)
    _check_weight("eps", eps)
    _validate_pair(student_logits, teacher_logits, labels, min_classes=1)
    s, t, _, keep = _flat_masked(student_logits, teacher_logits, labels, ignore_index)
    p_s = F.softmax(s / tau, dim=-1)
    p_t = F.softmax(t / tau, dim=-1)
    # inter: per row, over the classes
    r_rows = _pearson_centred(
        p_s - p_s.mean(dim=-1, keepdim=True), p_t - p_t.mean(dim=-1, keepdim=True), dim=-1, eps=eps
    )
    any_kept = keep.any()
    inter = torch.where(any_kept, 1.0 - _masked_mean(r_rows, keep), r_rows.new_zeros(()))
    # intra: per class, over the kept rows (masked rows contribute nothing to means or sums)
    rows = keep.unsqueeze(-1)
    n_kept = keep.sum().clamp(min=1).to(s.dtype)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    p_s = torch.where(rows, p_s, zero)
    p_t = torch.where(rows, p_t, zero)
    c_s = torch.where(rows, p_s - p_s.sum(dim=0) / n_kept, zero)
    c_t = torch.where(rows, p_t - p_t.sum(dim=0) / n_kept, zero)
    r_cols = _pearson_centred(c_s, c_t, dim=0, eps=eps)
    intra = torch.where(any_kept, 1.0 - r_cols.mean(), r_cols.new_zeros(()))
    loss = tau**2 * (beta * inter + gamma * intra)
    return {"inter": inter, "intra": intra, "loss": loss}


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    eps: float = 1e-8,
    labels: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Scalar DIST loss ``tau**2 * (beta * inter + gamma * intra)``; see :func:`dist_terms`."""
    return dist_terms(
        student_logits,
        teacher_logits,
        beta=beta,
        gamma=gamma,
        tau=tau,
        eps=eps,
        labels=labels,
        ignore_index=ignore_index,
    )["loss"]


# --------------------------------------------------------------------------------------------
# Sparse (top-k) teacher signals
# --------------------------------------------------------------------------------------------


def _safe_logsumexp(x: Tensor) -> Tensor:
    """``logsumexp`` over the last dim (kept), ``-inf`` where every entry is ``-inf``.

    Unlike ``torch.logsumexp`` the gradient stays finite (zero) on such rows: the shift is detached
    and the log is taken of a safe argument.
    """
    hi = x.amax(dim=-1, keepdim=True).detach()
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    total = (x - hi).exp().sum(dim=-1, keepdim=True)
    pos = total > 0
    out = hi + torch.where(pos, total, torch.ones_like(total)).log()
    return torch.where(pos, out, torch.full_like(out, -math.inf))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))``, accurate on both sides of ``x = -log 2``; ``-inf`` for ``x >= 0``.

    ``x >= 0`` (a probability that rounded to ``>= 1``) is read as ``1 - exp(x) = 0``. Each branch
    sees a safe argument, so no ``0 * inf`` reaches the gradient.
    """
    neg = x < 0
    near = x > -math.log(2.0)
    a = torch.where(neg & near, x, torch.full_like(x, -1.0))  # log(-expm1(x)) near 0
    b = torch.where(near, torch.full_like(x, -1.0), x)  # log1p(-exp(x)) far from 0
    out = torch.where(near, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))
    return torch.where(neg, out, torch.full_like(out, -math.inf))


def _check_topk_args(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None,
    alpha: float,
    tau: float,
    kl: str,
    mode: str,
    capture_tau: float,
    tau_squared: bool,
) -> None:
    """Raise ValueError whose message starts with the offending argument's name."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    _check_tau(tau)
    if (
        isinstance(capture_tau, bool)
        or not isinstance(capture_tau, (int, float))
        or not (math.isfinite(capture_tau) and capture_tau > 0)
    ):
        raise ValueError(f"capture_tau must be a finite number > 0, got {capture_tau!r}")
    if kl not in ("forward", "reverse"):
        raise ValueError(f"kl must be 'forward' or 'reverse' for a top-k teacher, got {kl!r}")
    if mode not in TOPK_MODES:
        raise ValueError(f"mode must be one of {TOPK_MODES}, got {mode!r}")
    if not isinstance(tau_squared, bool):
        raise ValueError(f"tau_squared must be true or false, got {tau_squared!r}")
    if not isinstance(student_logits, Tensor) or student_logits.dim() < 1:
        raise ValueError("student_logits must be a tensor of shape [..., C]")
    if not student_logits.is_floating_point():
        raise ValueError(f"student_logits must be floating point, got dtype {student_logits.dtype}")
    n_classes = student_logits.shape[-1]
    if n_classes < 1:
        raise ValueError("student_logits must have at least one class (last dim C >= 1)")
    if not isinstance(topk_indices, Tensor) or topk_indices.dim() < 1:
        raise ValueError("topk_indices must be an integer tensor of shape [..., k]")
    if topk_indices.is_floating_point() or topk_indices.is_complex() or topk_indices.dtype == torch.bool:
        raise ValueError(f"topk_indices must be an integer (int64) tensor, got dtype {topk_indices.dtype}")
    if topk_indices.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"topk_indices shape {tuple(topk_indices.shape)} must be student_logits.shape[:-1] + (k,) = "
            f"{tuple(student_logits.shape[:-1])} + (k,)"
        )
    k = topk_indices.shape[-1]
    if not 1 <= k <= n_classes:
        raise ValueError(f"topk_indices must hold 1 <= k <= C = {n_classes} classes per position, got k = {k}")
    if not isinstance(topk_logprobs, Tensor) or topk_logprobs.shape != topk_indices.shape:
        shape = tuple(topk_logprobs.shape) if isinstance(topk_logprobs, Tensor) else None
        raise ValueError(
            f"topk_logprobs shape {shape} must equal topk_indices shape {tuple(topk_indices.shape)}"
        )
    if not topk_logprobs.is_floating_point():
        raise ValueError(f"topk_logprobs must be floating point, got dtype {topk_logprobs.dtype}")
    if labels is None:
        if alpha != 0:
            raise ValueError(
                f"labels=None is only allowed with alpha == 0 (pure distillation), got alpha={alpha!r}"
            )
    else:
        if not isinstance(labels, Tensor) or labels.shape != student_logits.shape[:-1]:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else None
            raise ValueError(
                f"labels shape {shape} must equal student_logits.shape[:-1] = "
                f"{tuple(student_logits.shape[:-1])}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def topk_kd_loss_terms(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None,
    *,
    alpha: float = 0.5,
    tau: float = 2.0,
    kl: str = "forward",
    mode: str = "renorm",
    capture_tau: float = 1.0,
    tau_squared: bool = True,
    ignore_index: int = -100,
) -> dict[str, Tensor]:
    """KD from a sparse (top-k) teacher, and its two parts: ``{"loss", "ce", "kl"}``.

    The teacher is known only on a set ``S`` of ``k`` classes per position: ``topk_indices``
    (``[..., k]``, integer) and ``topk_logprobs`` (``[..., k]``), its *full-softmax*
    log-probabilities at the capture temperature ``T0 = capture_tau`` (so ``sum_S p <= 1``).
    They are re-tempered to ``tau`` as ``p_i^(T0 / tau)`` and renormalised, which is exact over the
    stored support. The student's ``log q = log_softmax(s / tau)`` is the *full* log-softmax over
    all ``C`` classes, gathered at ``S``.

    ``mode="renorm"`` (DistillKit's "zero"): the teacher renormalised over ``S``,
    ``p~_i = p_i^(T0/tau) / sum_{j in S} p_j^(T0/tau)``.

    * forward: ``sum_{i in S} p~_i (log p~_i - log q_i)``. Since ``q`` is not renormalised this is
      ``KL(p~ || q|S) - log Q_S`` with ``Q_S = sum_{i in S} q_i`` and ``q|S = q / Q_S`` on ``S``:
      a KL plus a non-negative penalty, so it is ``>= 0`` and it also pushes student mass into ``S``
      (it is 0 only when ``q|S = p~`` *and* ``Q_S = 1``).
    * reverse: ``KL(q|S || p~)``, the student renormalised over ``S`` (no ``-log Q_S`` term).

    ``mode="tail"`` (TRL's ``loss_add_tail``, DistillKit's ``symmetric_uniform``): both sides become
    ``k + 1`` buckets, the classes of ``S`` plus one bucket for the residual mass, and the loss is the
    exact KL of that coarser partition (so ``0 <= KL_tail <= KL_dense`` by the data-processing
    inequality, for a teacher at ``T0 = tau``). The teacher's buckets are ``p_i^(T0/tau)`` on ``S`` and
    ``(1 - sum_S p)^(T0/tau)`` for the tail (re-tempered as one bucket), normalised; the student's are
    ``q_i`` on ``S`` and ``1 - Q_S``, computed exactly as the log-sum-exp of ``log q`` over the classes
    outside ``S`` (no cancellation). forward is ``KL(teacher buckets || student buckets)``, reverse the
    opposite.

    Never the unnormalised truncated sum ``sum_S p_i (log p_i - log q_i)``: it is not a KL and goes
    negative. Both modes equal :func:`kd_loss` (same ``kl``) when ``k = C``, for any ``capture_tau``.

    Tail mass ~0: the teacher's tail is ``log1p(-sum_S p)`` computed as ``log(1 - exp(lse))`` with
    ``lse = logsumexp(topk_logprobs)`` clamped at 0 (a stored sum that rounded to ``>= 1``); when it is
    ``-inf`` (and always when ``k = C``, where the tail is empty on both sides) the bucket has
    probability 0 and contributes exactly 0 as the first argument of a KL. In ``kl="reverse"`` the
    teacher's tail bucket is the *second* argument, where 0 would make the KL infinite whenever the
    student keeps mass outside ``S``; there the teacher's tail bucket (at ``tau``, normalised) is
    floored at ``eps = finfo(dtype).eps``, the resolution of a stored sum near 1: a finite penalty
    ``~ (1 - Q_S) * log((1 - Q_S) / eps)`` that still pushes the student's mass into ``S`` (a tail
    bucket above ``eps`` is unchanged). Values and gradients stay finite.

    Weighting, masking and dtypes are those of :func:`kd_loss_terms`: ``loss = alpha * ce + (1 -
    alpha) * w * kl`` with ``w = tau**2 if tau_squared else 1``, ``ce`` the cross entropy of the raw
    student logits over all ``C`` classes; positions whose label is ``ignore_index`` are dropped from
    both terms (their logits, indices and log-probs are replaced *before* any softmax or gather, so
    NaN or out-of-range garbage there cannot leak), and the means run over the kept positions
    without a host sync. Computed in float32 (float64 student logits stay float64).
    ``topk_logprobs`` is treated as data (detached). On CPU, indices of kept positions outside
    ``[0, C)`` raise ValueError; on an accelerator that check would need a host sync and is left to
    ``gather``.

    Args:
        student_logits: ``[..., C]`` logits (e.g. ``[N, C]`` or ``[B, T, C]``).
        topk_indices: ``[..., k]`` integer (int64) class ids of the teacher's top-k, ``1 <= k <= C``.
        topk_logprobs: ``[..., k]`` the teacher's log-probabilities at ``capture_tau`` at those ids.
        labels: integer class ids of shape ``student_logits.shape[:-1]``, or None when ``alpha == 0``.
        alpha: weight of the hard-label cross entropy, in [0, 1].
        tau: distillation temperature, > 0.
        kl: "forward" (teacher || student) or "reverse" (student || teacher), over the mode's support.
        mode: "renorm" or "tail" (see above).
        capture_tau: temperature at which ``topk_logprobs`` were captured, > 0.
        tau_squared: multiply the soft term by ``tau**2``.
        ignore_index: positions with this label are dropped from both terms.
    """
    _check_topk_args(
        student_logits, topk_indices, topk_logprobs, labels, alpha, tau, kl, mode, capture_tau, tau_squared
    )
    dtype = _compute_dtype(student_logits)
    n_classes = student_logits.shape[-1]
    k = topk_indices.shape[-1]
    s = student_logits.to(dtype).reshape(-1, n_classes)
    idx = topk_indices.reshape(-1, k).long()
    lp = topk_logprobs.detach().to(dtype).reshape(-1, k)

    if labels is not None:
        y = labels.reshape(-1).long()
        keep = y != ignore_index
    else:
        y = None
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    # the range check needs a host sync, so it runs on CPU tensors only (an accelerator's gather asserts)
    bad_idx = ((idx < 0) | (idx >= n_classes)) & keep.unsqueeze(-1)
    if idx.device.type == "cpu" and bool(bad_idx.any()):
        raise ValueError(f"topk_indices must lie in [0, {n_classes}) at the kept positions")
    # Replace the masked rows before any softmax / gather: garbage or NaN there must not leak.
    rows = keep.unsqueeze(-1)
    zero = torch.zeros((), dtype=dtype, device=s.device)
    s = torch.where(rows, s, zero)
    idx = torch.where(rows, idx, torch.zeros_like(idx))
    lp = torch.where(rows, lp, zero)
    n_kept = keep.sum().clamp(min=1).to(dtype)
    zero_pos = torch.zeros(s.shape[0], dtype=dtype, device=s.device)

    def masked_mean(per_position: Tensor) -> Tensor:
        return torch.where(keep, per_position, zero_pos).sum() / n_kept

    if y is not None:
        safe_y = torch.where(keep, y, torch.zeros_like(y))
        ce = masked_mean(F.cross_entropy(s, safe_y, reduction="none"))
    else:
        ce = s.new_zeros(())

    log_q_all = F.log_softmax(s / tau, dim=-1)
    log_q = log_q_all.gather(-1, idx)  # the student's full log-softmax at S (not renormalised)
    r = lp * (capture_tau / tau)  # re-tempered teacher log-weights on S (unnormalised)
    if mode == "renorm":
        log_pt = r - torch.logsumexp(r, dim=-1, keepdim=True)
        if kl == "forward":
            kl_pos = _kl_from_log_probs(log_pt, log_q)
        else:
            log_qs = log_q - _safe_logsumexp(log_q)
            kl_pos = _kl_from_log_probs(log_qs, log_pt)
    else:
        if k == n_classes:  # S is every class: both tails are empty
            t_tail = torch.full_like(lp[:, :1], -math.inf)
            s_tail = torch.full_like(log_q[:, :1], -math.inf)
        else:
            lse_t = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=0.0)
            t_tail = _log1mexp(lse_t) * (capture_tau / tau)
            in_s = torch.zeros_like(log_q_all, dtype=torch.bool).scatter(-1, idx, True)
            s_tail = _safe_logsumexp(log_q_all.masked_fill(in_s, -math.inf))
        t_buckets = torch.cat([r, t_tail], dim=-1)
        log_pt = t_buckets - torch.logsumexp(t_buckets, dim=-1, keepdim=True)
        log_ps = torch.cat([log_q, s_tail], dim=-1)
        if kl == "forward":
            kl_pos = _kl_from_log_probs(log_pt, log_ps)
        else:
            floor = math.log(torch.finfo(dtype).eps)
            log_pt = torch.cat([log_pt[:, :k], log_pt[:, k:].clamp(min=floor)], dim=-1)
            kl_pos = _kl_from_log_probs(log_ps, log_pt)
    kl_term = masked_mean(kl_pos)

    w = tau**2 if tau_squared else 1.0
    if alpha == 1:
        loss = ce
    elif alpha == 0:
        loss = w * kl_term
    else:
        loss = alpha * ce + (1.0 - alpha) * w * kl_term
    return {"loss": loss, "ce": ce, "kl": kl_term}


def topk_kd_loss(
    student_logits: Tensor,
    topk_indices: Tensor,
    topk_logprobs: Tensor,
    labels: Tensor | None,
    *,
    alpha: float = 0.5,
    tau: float = 2.0,
    kl: str = "forward",
    mode: str = "renorm",
    capture_tau: float = 1.0,
    tau_squared: bool = True,
    ignore_index: int = -100,
) -> Tensor:
    """Scalar sparse-teacher KD loss (mean over kept positions); see :func:`topk_kd_loss_terms`.

    Returns a 0-dim tensor, float32 (float64 for float64 student logits).
    """
    return topk_kd_loss_terms(
        student_logits,
        topk_indices,
        topk_logprobs,
        labels,
        alpha=alpha,
        tau=tau,
        kl=kl,
        mode=mode,
        capture_tau=capture_tau,
        tau_squared=tau_squared,
        ignore_index=ignore_index,
    )["loss"]
