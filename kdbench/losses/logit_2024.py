"""The logit methods of 2023-24, pure torch: TTM and WTTM (Zheng & Yang, ICLR 2024), NormKD (Chi et al.
2023) and CTKD's pieces (Li et al., AAAI 2023: the KD term at a learned temperature, the gradient
reversal that trains the temperature adversarially and its cosine curriculum) and MLKD's (Jin et al., CVPR 2023:
multi-level alignment of the predictions at several temperatures, per instance, over the batch's Gram and over the
classes' Gram, with its confidence masks).

Each loss is the unweighted mean over the kept positions (``labels != ignore_index``; all of them
without labels) of its per-position term, masked as in :mod:`kdbench.losses.core`, computed in
float32 (float64 stays float64). Like DKD and DIST they never detach the teacher: kdbench's teacher
signals hand over detached logits unless asked otherwise.
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
    check_same_shape,
    compute_dtype,
    kl_from_log_probs,
    safe_logsumexp,
)
from kdbench.losses.kd import standardize_logits

__all__ = [
    "MLKD_MASKS",
    "MLKD_STRONG_TEMPERATURES",
    "MLKD_TEMPERATURES",
    "MLKD_WEAK_EXTRA_TEMPERATURES",
    "GradientReversal",
    "ctkd_kd_loss",
    "ctkd_lambda",
    "mlkd_batch_loss",
    "mlkd_class_loss",
    "mlkd_confidence_masks",
    "mlkd_instance_loss",
    "mlkd_loss",
    "normkd_loss",
    "reverse_gradient",
    "ttm_loss",
    "wttm_loss",
]


def _rows(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None, ignore_index: int,
          min_classes: int = 1) -> tuple[Positions, Tensor, Tensor]:
    check_logits(student_logits, min_classes=min_classes)
    check_same_shape(teacher_logits, student_logits)
    check_labels(labels, student_logits)
    pos = Positions.of(student_logits, labels, ignore_index)
    return pos, pos.rows(student_logits), pos.rows(teacher_logits)


def _ttm_rows(s: Tensor, t: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Per row: ``KL(q || softmax(s))`` with ``q ∝ softmax(t)^gamma``, and ``log sum_c softmax(t)_c^gamma``.

    ``softmax(t)^gamma / sum softmax(t)^gamma == softmax(gamma * t)``: ``q`` is taken in log space from
    ``gamma * log_softmax(t)`` (no power of a tiny probability underflows).
    """
    scaled = gamma * F.log_softmax(t, dim=-1)
    log_norm = safe_logsumexp(scaled)
    kl = kl_from_log_probs(scaled - log_norm, F.log_softmax(s, dim=-1))
    return kl, log_norm.squeeze(-1)


def ttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float, *, labels: Tensor | None = None,
             ignore_index: int = -100) -> Tensor:
    """Transformed teacher matching: mean over kept positions of ``KL(q || softmax(z_s))`` with
    ``q = softmax(z_t)^gamma / sum_c softmax(z_t)_c^gamma``; the student is not tempered.

    ``q`` is the teacher at temperature ``1 / gamma``: TTM is KD's KL with the teacher at ``tau = 1 / gamma``
    and the student at 1 (no ``tau**2``). ``[..., C]`` logits; ``labels`` (shape ``[...]``) only mask.
    Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    check_positive("gamma", gamma)
    pos, s, t = _rows(student_logits, teacher_logits, labels, ignore_index)
    return pos.mean(_ttm_rows(s, t, gamma)[0])


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float, *, labels: Tensor | None = None,
              ignore_index: int = -100) -> Tensor:
    """Weighted TTM: mean over kept positions of ``(sum_c softmax(z_t)_c^gamma) * KL(q || softmax(z_s))``,
    :func:`ttm_loss`'s term weighted per sample by the power sum (larger for a smoother teacher; 1 at
    ``gamma == 1``). Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    check_positive("gamma", gamma)
    pos, s, t = _rows(student_logits, teacher_logits, labels, ignore_index)
    kl, log_weight = _ttm_rows(s, t, gamma)
    return pos.mean(log_weight.exp() * kl)


def _safe_divisor(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


def _row_std(x: Tensor) -> Tensor:
    """Unbiased std over the last dim (kept), with a zero (not NaN) gradient on a constant row."""
    var = x.var(dim=-1, keepdim=True)
    some = var > 0
    return torch.where(some, torch.where(some, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))


def normkd_loss(student_logits: Tensor, teacher_logits: Tensor, t_norm: float, *, labels: Tensor | None = None,
                ignore_index: int = -100) -> Tensor:
    """NormKD: mean over kept positions of ``T_t**2 * KL(softmax(z_t / T_t) || softmax(z_s / T_s))`` with the
    per-row temperatures ``T_t = t_norm * std(z_t)`` and ``T_s = t_norm * std(z_s)``.

    ``std`` is the unbiased one (divisor ``C - 1``), as NormKD's code calls ``Tensor.std``; its gradient
    flows through ``T_s`` (and ``T_t`` for a teacher that carries one), as there. A constant row (std 0)
    is taken as uniform, with a finite gradient; a constant teacher row weighs 0. ``C >= 2``.
    Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    check_positive("t_norm", t_norm)
    pos, s, t = _rows(student_logits, teacher_logits, labels, ignore_index, min_classes=2)
    temp_t, temp_s = t_norm * _row_std(t), t_norm * _row_std(s)
    kl = kl_from_log_probs(F.log_softmax(t / _safe_divisor(temp_t), dim=-1),
                           F.log_softmax(s / _safe_divisor(temp_s), dim=-1))
    return pos.mean(temp_t.squeeze(-1) ** 2 * kl)


def ctkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor, *,
                 labels: Tensor | None = None, ignore_index: int = -100, standardize: bool = False) -> Tensor:
    """KD's soft term at a temperature that is a tensor (CTKD's learned one): mean over kept positions of
    ``T_i**2 * KL(softmax(z_t / T_i) || softmax(z_s / T_i))``.

    ``temperature``: one value (shape ``[]`` or ``[1]``, CTKD's global temperature) or one per position
    (shape ``student_logits.shape[:-1]``, its instance-wise one), > 0; the gradient reaches it, through the
    division and the ``T**2``. ``standardize`` z-scores both sides first (CTKD+LS). Returns a 0-dim float32
    tensor (float64 for float64 inputs).
    """
    pos, s, t = _rows(student_logits, teacher_logits, labels, ignore_index)
    if not isinstance(temperature, Tensor) or temperature.numel() not in (1, pos.keep.numel()):
        shape = tuple(temperature.shape) if isinstance(temperature, Tensor) else None
        raise ValueError(f"temperature must be a tensor of one value or of shape {tuple(student_logits.shape[:-1])}, "
                         f"got {shape}")
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    temp = temperature.to(pos.dtype).reshape(-1, 1).expand(pos.keep.numel(), 1)
    temp = torch.where(pos.keep.unsqueeze(-1), temp, torch.ones_like(temp))  # a dropped row: a finite stand-in
    kl = kl_from_log_probs(F.log_softmax(t / temp, dim=-1), F.log_softmax(s / temp, dim=-1))
    return pos.mean(temp.squeeze(-1) ** 2 * kl)


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength`` (Ganin & Lempitsky 2015).

    CTKD puts it between the temperature module and the loss, so that the step the optimizer takes to
    lower the loss raises it with respect to the temperature (an adversarial temperature).
    """

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = float(strength)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    """``x`` itself, with its gradient multiplied by ``-strength`` on the way back (:class:`GradientReversal`)."""
    return GradientReversal.apply(x, strength)


def ctkd_lambda(epoch: float, *, epochs: int = 10, lambda_min: float = 0.0, lambda_max: float = 1.0) -> float:
    """CTKD's cosine curriculum on the reversal strength at (1-based) ``epoch``:
    ``lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * e / epochs)) / 2`` with ``e`` clipped to
    ``[0, epochs]``, i.e. the paper's ``lambda_min + (lambda_max - lambda_min)/2 * (1 + cos((1 + e/epochs) pi))``:
    from ``lambda_min`` at 0 to ``lambda_max`` from ``epochs`` on (its code: 10 epochs, 0 -> 1).
    """
    check_positive("epochs", epochs)
    e = min(max(float(epoch), 0.0), float(epochs))
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * e / epochs)) / 2.0


# ---- MLKD (Jin et al., CVPR 2023) -------------------------------------------------------------------------

#: MLKD's temperatures (its code: the base temperature 4, then 3, 5, 2, 6), and those of the strong view's
#: instance term and of the weak view's unmasked instance term (its code's second block takes the weak view at
#: temperatures 2 and 6: the released arithmetic, kept as it produced the published numbers)
MLKD_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)
MLKD_STRONG_TEMPERATURES = (4.0, 3.0, 5.0)
MLKD_WEAK_EXTRA_TEMPERATURES = (2.0, 6.0)
#: how the confidence masks enter: ``released`` (the released code: each masked term is its full batch mean
#: times the fraction the mask keeps), ``rows`` (only the kept rows / classes count), ``none``
MLKD_MASKS = ("released", "rows", "none")


def _mlkd_pair(student_logits: Tensor, teacher_logits: Tensor, name: str = "student_logits") -> tuple[Tensor, Tensor]:
    check_logits(student_logits, name=name)
    check_same_shape(teacher_logits, student_logits)
    if student_logits.dim() != 2:
        raise ValueError(f"MLKD aligns a batch of images: {name} must be [B, C], got {tuple(student_logits.shape)}")
    dtype = compute_dtype(student_logits)
    return student_logits.to(dtype), teacher_logits.to(dtype)


def _temperatures(temperatures) -> tuple[float, ...]:
    temps = tuple(float(t) for t in temperatures)
    for t in temps:
        check_positive("temperature", t)
    return temps


def _weights(weight: Tensor | None, n: int, like: Tensor, what: str) -> Tensor:
    if weight is None:
        return torch.ones(n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weight, device=like.device).to(like.dtype)
    if w.numel() not in (1, n) or w.dim() > 1:
        raise ValueError(f"weight must be one value or one per {what} ({n}), got shape {tuple(w.shape)}")
    return w.reshape(-1).expand(n)


def mlkd_instance_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures, *, weight: Tensor | None = None,
                       standardize: bool = False) -> Tensor:
    """MLKD's instance level: ``sum_T (1/B) sum_i w_i T**2 KL(softmax(z_t,i / T) || softmax(z_s,i / T))``.

    ``[B, C]`` logits; ``weight``: one value or one per row (default 1: KD's batch mean at each ``T``);
    ``standardize`` z-scores both sides first (MLKD+LS). Returns a 0-dim float32 tensor (float64 for float64).
    """
    s, t = _mlkd_pair(student_logits, teacher_logits)
    if standardize:
        s, t = standardize_logits(s), standardize_logits(t)
    w = _weights(weight, s.shape[0], s, "row")
    total = s.new_zeros(())
    for temp in _temperatures(temperatures):
        kl = kl_from_log_probs(F.log_softmax(t / temp, dim=-1), F.log_softmax(s / temp, dim=-1))
        total = total + temp**2 * (w * kl).mean()
    return total


def _gram_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures, weight, classes: bool) -> Tensor:
    s, t = _mlkd_pair(student_logits, teacher_logits)
    n = s.shape[-1] if classes else s.shape[0]
    w = _weights(weight, n, s, "class" if classes else "row")
    total = s.new_zeros(())
    with torch.autocast(s.device.type, enabled=False):  # the Gram products in float32 under bf16 autocast too
        for temp in _temperatures(temperatures):
            ps, pt = F.softmax(s / temp, dim=-1), F.softmax(t / temp, dim=-1)
            if classes:
                gs, gt = ps.transpose(0, 1) @ ps, pt.transpose(0, 1) @ pt
            else:
                gs, gt = ps @ ps.transpose(0, 1), pt @ pt.transpose(0, 1)
            total = total + (w * ((gt - gs) ** 2).sum(-1)).sum() / n
    return total


def mlkd_batch_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures, *,
                    weight: Tensor | None = None) -> Tensor:
    """MLKD's batch level: ``sum_T (1/B) sum_i w_i sum_j (G_t - G_s)_ij**2`` with the batch's Gram matrix
    ``G = P P^T`` (``[B, B]``) of the predictions ``P = softmax(z / T)``. ``weight``: one value or one per row
    (default 1). Returns a 0-dim float32 tensor (float64 for float64)."""
    return _gram_loss(student_logits, teacher_logits, temperatures, weight, classes=False)


def mlkd_class_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures, *,
                    weight: Tensor | None = None) -> Tensor:
    """MLKD's class level: ``sum_T (1/C) sum_k w_k sum_l (M_t - M_s)_kl**2`` with the classes' Gram matrix
    ``M = P^T P`` (``[C, C]``) over the batch. ``weight``: one value or one per class (default 1).
    Returns a 0-dim float32 tensor (float64 for float64)."""
    return _gram_loss(student_logits, teacher_logits, temperatures, weight, classes=True)


def mlkd_confidence_masks(teacher_logits: Tensor, percentile: float = 50.0) -> tuple[Tensor, Tensor]:
    """MLKD's masks from the teacher's (weak-view) predictions ``p = softmax(z_t)``: rows whose confidence
    ``max_c p`` is at most the batch's ``percentile``-th percentile, and classes whose summed probability
    ``sum_i p_ic`` is at most theirs (its code's ``le``; percentiles interpolated linearly, as numpy's).
    Returns two bool tensors, ``[B]`` and ``[C]``."""
    check_logits(teacher_logits, name="teacher_logits")
    if teacher_logits.dim() != 2:
        raise ValueError(f"teacher_logits must be [B, C], got {tuple(teacher_logits.shape)}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    p = F.softmax(teacher_logits.detach().to(compute_dtype(teacher_logits)), dim=-1)
    q = float(percentile) / 100.0
    conf, by_class = p.max(dim=-1).values, p.sum(dim=0)
    return conf <= torch.quantile(conf, q), by_class <= torch.quantile(by_class, q)


def mlkd_loss(student_weak: Tensor, teacher_weak: Tensor, student_strong: Tensor, teacher_strong: Tensor,
              temperatures=MLKD_TEMPERATURES, *, strong_temperatures=MLKD_STRONG_TEMPERATURES,
              weak_extra_temperatures=MLKD_WEAK_EXTRA_TEMPERATURES, percentile: float = 50.0,
              mask: str = "released", standardize: bool = False) -> dict[str, Tensor]:
    """MLKD's unweighted terms on a weak and a strong view of the same ``[B, C]`` batch (as its released code):

    * ``instance``: the weak view at ``temperatures``, row-masked, plus the strong view at
      ``strong_temperatures`` and the weak view at ``weak_extra_temperatures``, both unmasked;
    * ``batch``: the weak view's batch Gram at ``temperatures``, row-masked;
    * ``class``: the weak view's class Gram at ``temperatures``, class-masked.

    The masks are :func:`mlkd_confidence_masks` of ``teacher_weak``, applied as ``mask`` says
    (:data:`MLKD_MASKS`); ``standardize`` z-scores the instance terms' logits (MLKD+LS; the Gram terms
    use the raw logits, as there). Returns ``{"instance", "batch", "class", "kept"}`` (``kept``: the
    fraction of rows the row mask keeps), 0-dim float32 tensors (float64 for float64 inputs).
    """
    if mask not in MLKD_MASKS:
        raise ValueError(f"mask must be one of {', '.join(MLKD_MASKS)}, got {mask!r}")
    _mlkd_pair(student_weak, teacher_weak, "student_weak")
    _mlkd_pair(student_strong, teacher_strong, "student_strong")
    if student_strong.shape != student_weak.shape:
        raise ValueError(f"the two views' logits differ in shape: {tuple(student_weak.shape)} and "
                         f"{tuple(student_strong.shape)}")
    rows, classes = mlkd_confidence_masks(teacher_weak, percentile)
    dtype = compute_dtype(student_weak)
    rows, classes = rows.to(dtype), classes.to(dtype)
    w_rows, w_classes = {"released": (rows.mean(), classes.mean()), "rows": (rows, classes),
                         "none": (None, None)}[mask]
    instance = (mlkd_instance_loss(student_weak, teacher_weak, temperatures, weight=w_rows, standardize=standardize)
                + mlkd_instance_loss(student_strong, teacher_strong, strong_temperatures, standardize=standardize)
                + mlkd_instance_loss(student_weak, teacher_weak, weak_extra_temperatures, standardize=standardize))
    return {"instance": instance,
            "batch": mlkd_batch_loss(student_weak, teacher_weak, temperatures, weight=w_rows),
            "class": mlkd_class_loss(student_weak, teacher_weak, temperatures, weight=w_classes),
            "kept": rows.mean()}
