"""KD from a sparse (top-k) teacher: only the teacher's ``k`` largest log-probabilities per
position are known (a capture store, or a language model's logits top-k'd). Pure torch.

Two ways to make that a distribution (``mode``, :data:`TOPK_MODES`): ``renorm`` over the stored
classes, or ``tail`` with one bucket for the rest; see :func:`topk_kd_loss_terms`. Masking, CE and
the weighting are those of :func:`~kdbench.losses.kd.kd_loss_terms` (:mod:`kdbench.losses.core`).
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
    check_positive,
    kl_from_log_probs,
    safe_logsumexp,
    weighted_sum,
)

__all__ = ["TOPK_MODES", "topk_kd_loss", "topk_kd_loss_terms"]

#: how a top-k teacher becomes a distribution (see :func:`topk_kd_loss_terms`)
TOPK_MODES = ("renorm", "tail")


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
    capture_tau: float,
) -> None:
    """Raise ValueError whose message starts with the offending argument's name."""
    check_positive("capture_tau", capture_tau)  # the captured signal's, checked by no method
    check_logits(student_logits)
    n_classes = student_logits.shape[-1]
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
        raise ValueError(
            f"topk_indices must hold 1 <= k <= C = {n_classes} classes per position, got k = {k}"
        )
    if not isinstance(topk_logprobs, Tensor) or topk_logprobs.shape != topk_indices.shape:
        shape = tuple(topk_logprobs.shape) if isinstance(topk_logprobs, Tensor) else None
        raise ValueError(
            f"topk_logprobs shape {shape} must equal topk_indices shape {tuple(topk_indices.shape)}"
        )
    if not topk_logprobs.is_floating_point():
        raise ValueError(f"topk_logprobs must be floating point, got dtype {topk_logprobs.dtype}")
    check_labels(labels, student_logits, alpha=alpha)


def _kl_one_way(kl: str, log_t: Tensor, log_s: Tensor) -> Tensor:
    """``KL(t || s)`` for "forward", ``KL(s || t)`` for "reverse"."""
    if kl == "forward":
        return kl_from_log_probs(log_t, log_s)
    if kl == "reverse":
        return kl_from_log_probs(log_s, log_t)
    raise ValueError(f"kl must be 'forward' or 'reverse' for a top-k teacher, got {kl!r}")


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
    _check_topk_args(student_logits, topk_indices, topk_logprobs, labels, alpha, capture_tau)
    n_classes = student_logits.shape[-1]
    k = topk_indices.shape[-1]
    pos = Positions.of(student_logits, labels, ignore_index)
    # the range check needs a host sync, so it runs on CPU tensors only (an accelerator's gather asserts)
    if topk_indices.device.type == "cpu":
        flat = topk_indices.reshape(-1, k).long()
        if bool((((flat < 0) | (flat >= n_classes)) & pos.keep.unsqueeze(-1)).any()):
            raise ValueError(f"topk_indices must lie in [0, {n_classes}) at the kept positions")
    # dropped rows are replaced before any softmax / gather: garbage or NaN there must not leak
    s = pos.rows(student_logits)
    idx = pos.rows(topk_indices)
    lp = pos.rows(topk_logprobs.detach())
    ce = pos.cross_entropy(s)

    log_q_all = F.log_softmax(s / tau, dim=-1)
    log_q = log_q_all.gather(-1, idx)  # the student's full log-softmax at S (not renormalised)
    r = lp * (capture_tau / tau)  # re-tempered teacher log-weights on S (unnormalised)
    if mode == "renorm":
        log_pt = r - torch.logsumexp(r, dim=-1, keepdim=True)
        # reverse: the student renormalised over S
        log_qs = log_q if kl == "forward" else log_q - safe_logsumexp(log_q)
        kl_pos = _kl_one_way(kl, log_pt, log_qs)
    elif mode == "tail":
        if k == n_classes:  # S is every class: both tails are empty
            t_tail = torch.full_like(lp[:, :1], -math.inf)
            s_tail = torch.full_like(log_q[:, :1], -math.inf)
        else:
            lse_t = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=0.0)
            t_tail = _log1mexp(lse_t) * (capture_tau / tau)
            in_s = torch.zeros_like(log_q_all, dtype=torch.bool).scatter(-1, idx, True)
            s_tail = safe_logsumexp(log_q_all.masked_fill(in_s, -math.inf))
        t_buckets = torch.cat([r, t_tail], dim=-1)
        log_pt = t_buckets - torch.logsumexp(t_buckets, dim=-1, keepdim=True)
        log_ps = torch.cat([log_q, s_tail], dim=-1)
        if kl == "reverse":  # the teacher's tail bucket, the second argument, is floored at eps
            floor = math.log(torch.finfo(pos.dtype).eps)
            log_pt = torch.cat([log_pt[:, :k], log_pt[:, k:].clamp(min=floor)], dim=-1)
        kl_pos = _kl_one_way(kl, log_pt, log_ps)
    else:
        raise ValueError(f"mode must be one of {TOPK_MODES}, got {mode!r}")
    kl_term = pos.mean(kl_pos)
    loss = weighted_sum(ce, kl_term, alpha=alpha, tau=tau, tau_squared=tau_squared)
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
