"""What every loss shares: argument shape checks, flattening to rows, the ignore_index mask, the
masked mean and CE, the stable log-space helpers, and the CE / soft-term weighting.

Masking is done without a host sync: masked rows are replaced by zeros *before* any softmax (so
garbage or NaN logits there cannot leak into the value or the gradient), their per-position terms
are zeroed, and the sum is divided by ``max(n_kept, 1)``. With no kept position a mean is an exact
zero that is still connected to the inputs in the autograd graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Positions",
    "check_labels",
    "check_logits",
    "check_nonnegative",
    "check_positive",
    "check_same_shape",
    "compute_dtype",
    "kl_from_log_probs",
    "safe_logsumexp",
    "weighted_sum",
]


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, float32) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---- checks (cheap: shapes, dtypes, and the few scalars no method validates) ----------------


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: float) -> None:
    """``value`` is a finite number > 0, or ValueError naming ``name``."""
    if not _is_number(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    """``value`` is a finite number >= 0, or ValueError naming ``name``."""
    if not _is_number(value) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_logits(logits: Tensor, *, min_classes: int = 1, name: str = "student_logits") -> None:
    """A floating-point ``[..., C]`` tensor with ``C >= min_classes``."""
    if not isinstance(logits, Tensor) or logits.dim() < 1:
        raise ValueError(f"{name} must be a tensor of shape [..., C]")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")
    if logits.shape[-1] < min_classes:
        classes = "one class" if min_classes == 1 else f"{min_classes} classes"
        raise ValueError(f"{name} must have at least {classes} (last dim), got {logits.shape[-1]}")


def check_same_shape(other: Tensor, student_logits: Tensor, *, name: str = "teacher_logits") -> None:
    """``other`` is a floating-point tensor of ``student_logits``'s shape."""
    if not isinstance(other, Tensor) or other.shape != student_logits.shape:
        shape = tuple(other.shape) if isinstance(other, Tensor) else None
        raise ValueError(
            f"{name} shape {shape} does not match student_logits shape {tuple(student_logits.shape)}"
        )
    if not other.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {other.dtype}")


def check_labels(labels: Tensor | None, student_logits: Tensor, *, alpha: float | None = None) -> None:
    """Integer labels of shape ``student_logits.shape[:-1]``; None only where ``alpha == 0`` (no CE
    term) when the loss has an ``alpha``, always allowed otherwise."""
    if labels is None:
        if alpha is not None and alpha != 0:
            raise ValueError(
                f"labels=None is only allowed with alpha == 0 (pure distillation), got alpha={alpha!r}"
            )
        return
    if not isinstance(labels, Tensor) or labels.shape != student_logits.shape[:-1]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else None
        raise ValueError(
            f"labels shape {shape} must equal student_logits.shape[:-1] = {tuple(student_logits.shape[:-1])}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


# ---- positions: [..., C] -> [N, C] rows and the ignore_index mask ---------------------------


@dataclass(frozen=True)
class Positions:
    """The ``N`` positions of a ``[..., C]`` batch as rows, and which of them count.

    ``keep`` is ``label != ignore_index`` (all True without labels), ``labels`` the flat labels
    with the dropped positions set to class 0 (safe to gather or index), ``n_kept`` the number
    kept, at least 1, in the compute dtype.
    """

    keep: Tensor
    labels: Tensor | None
    n_kept: Tensor
    dtype: torch.dtype

    @classmethod
    def of(cls, student_logits: Tensor, labels: Tensor | None, ignore_index: int) -> Positions:
        dtype = compute_dtype(student_logits)
        if labels is not None:
            y = labels.reshape(-1).long()
            keep = y != ignore_index
            y = torch.where(keep, y, torch.zeros_like(y))
        else:
            y = None
            keep = torch.ones(
                math.prod(student_logits.shape[:-1]), dtype=torch.bool, device=student_logits.device
            )
        return cls(keep, y, keep.sum().clamp(min=1).to(dtype), dtype)

    def rows(self, x: Tensor) -> Tensor:
        """``x`` (``[..., D]``) as ``[N, D]`` rows, floats in the compute dtype, dropped rows zeroed."""
        flat = x.to(self.dtype) if x.is_floating_point() else x.long()
        flat = flat.reshape(-1, x.shape[-1])
        return torch.where(
            self.keep.unsqueeze(-1), flat, torch.zeros((), dtype=flat.dtype, device=flat.device)
        )

    def mean(self, per_position: Tensor) -> Tensor:
        """Mean of ``[N]`` values over the kept positions (no host sync)."""
        return torch.where(self.keep, per_position, torch.zeros_like(per_position)).sum() / self.n_kept

    def cross_entropy(self, student_rows: Tensor) -> Tensor:
        """Mean CE of the (masked) student rows over the kept positions; 0 without labels."""
        if self.labels is None:
            return student_rows.new_zeros(())
        return self.mean(F.cross_entropy(student_rows, self.labels, reduction="none"))


# ---- stable log-space pieces ----------------------------------------------------------------


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-position ``sum_c p (log p - log q)`` over the last dim, with the term 0 where ``p == 0``.

    The difference is zeroed *before* multiplying so that neither the value nor the gradient
    sees ``0 * inf`` (a ``-inf`` logit gives ``log p = -inf``). For nearly equal peaked
    distributions float32 rounding in ``log_softmax`` (``log(1 + 1e-10) == 0``) can make the sum
    slightly negative (~1e-10); the value is clamped at 0 with a straight-through gradient, so
    ``KL >= 0`` always holds and the gradient stays the exact one of the element-wise sum.
    Never cross-entropy minus entropy, which cancels catastrophically for peaked distributions.
    """
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))
    kl = (p * diff).sum(dim=-1)
    return kl + (kl.clamp_min(0) - kl).detach()


def safe_logsumexp(x: Tensor) -> Tensor:
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


# ---- weighting ------------------------------------------------------------------------------


def weighted_sum(
    ce: Tensor,
    soft: Tensor,
    *,
    alpha: float,
    tau: float,
    tau_squared: bool,
    ce_weight: float | None = None,
    kd_weight: float | None = None,
) -> Tensor:
    """``alpha * ce + (1 - alpha) * w * soft`` with ``w = tau**2 if tau_squared else 1``.

    A term whose convex weight is zero is left out (so alpha=1 never propagates a NaN teacher).
    ``ce_weight`` / ``kd_weight``, when given, replace ``alpha`` / ``1 - alpha`` (both terms kept).
    """
    w = tau**2 if tau_squared else 1.0
    if ce_weight is None and kd_weight is None:
        if alpha == 1:
            return ce
        if alpha == 0:
            return w * soft
        return alpha * ce + (1.0 - alpha) * w * soft
    ce_w = alpha if ce_weight is None else ce_weight
    kd_w = (1.0 - alpha) if kd_weight is None else kd_weight
    return ce_w * ce + kd_w * w * soft
