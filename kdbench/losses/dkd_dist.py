"""DKD (Zhao et al. 2022, as mdistiller computes it) and DIST (Huang et al. 2022, as torchdistill's
``DISTLoss``), pure torch.

Each returns the kept-position mean of its own term only (no CE, no warm-up: the method adds
them), computed in float32 (float64 inputs stay float64), with the masking of
:mod:`kdbench.losses.core`. Unlike :func:`~kdbench.losses.kd.kd_loss` they never detach the
teacher: a gradient reaches ``teacher_logits`` whenever it requires one (kdbench's teacher
signals hand over detached logits unless asked otherwise).
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
    check_same_shape,
    kl_from_log_probs,
)
from kdbench.losses.kd import standardize_logits

__all__ = ["dist_loss", "dist_terms", "dkd_loss", "dkd_terms"]


def _check_pair(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, min_classes: int
) -> None:
    """Shape / dtype checks shared by the losses that always need a teacher."""
    check_logits(student_logits, min_classes=min_classes)
    check_same_shape(teacher_logits, student_logits)
    check_labels(labels, student_logits)


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
    if labels is None:
        raise ValueError("labels must be given for DKD (the target class splits the distribution)")
    _check_pair(student_logits, teacher_logits, labels, min_classes=2)
    pos = Positions.of(student_logits, labels, ignore_index)
    s, t = pos.rows(student_logits), pos.rows(teacher_logits)
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    safe_y = pos.labels
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
    tckd = pos.mean(kl_from_log_probs(bins_t, bins_s))
    nckd = pos.mean(kl_from_log_probs(rest_t, rest_s))
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
    check_nonnegative("eps", eps)
    _check_pair(student_logits, teacher_logits, labels, min_classes=1)
    pos = Positions.of(student_logits, labels, ignore_index)
    s, t = pos.rows(student_logits), pos.rows(teacher_logits)
    p_s = F.softmax(s / tau, dim=-1)
    p_t = F.softmax(t / tau, dim=-1)
    # inter: per row, over the classes
    r_rows = _pearson_centred(
        p_s - p_s.mean(dim=-1, keepdim=True), p_t - p_t.mean(dim=-1, keepdim=True), dim=-1, eps=eps
    )
    any_kept = pos.keep.any()
    inter = torch.where(any_kept, 1.0 - pos.mean(r_rows), r_rows.new_zeros(()))
    # intra: per class, over the kept rows (masked rows contribute nothing to means or sums)
    p_s, p_t = pos.rows(p_s), pos.rows(p_t)
    c_s = pos.rows(p_s - p_s.sum(dim=0) / pos.n_kept)
    c_t = pos.rows(p_t - p_t.sum(dim=0) / pos.n_kept)
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
