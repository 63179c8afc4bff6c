"""Feature-distillation losses (pure torch): the intermediate-representation terms of the benchmark's
feature methods, with the values and student gradients that mdistiller / RepDistiller compute.

Each function returns its term alone, unweighted (no CE, no method weight, no warm-up), as a 0-d
tensor in float32 (float64 inputs stay float64; bf16 / fp16 inputs are cast up first). Nothing is
detached: a gradient reaches every input that requires one (kdbench hands teacher features over
detached; CRD's teacher-side embedding is trained through its scores). Student gradients equal the
references'; where those compute teacher terms without gradient (RKD, NST's teacher-teacher kernel,
OFD's target) a teacher that requires one gets it here.

* Lists of maps (``at_loss``, ``nst_loss``, ``sp_loss``, ``hcl_loss``): one ``[N, C, H, W]`` map per
  stage on each side, the terms summed over stages. AT and NST average-pool the larger map of a pair
  to the smaller size (:func:`pool_to_smaller`), as the references do; SP compares batch Gram
  matrices (any shapes); HCL needs equal shapes (ReviewKD's fused student maps match the teacher's).
* Vectors (``rkd_loss``, ``pkt_loss``): ``[N, D]`` (anything else is flattened to ``[N, -1]``).
* One map with a trainable piece computed by the method: ``fitnet_loss`` (after the regressor),
  ``vid_loss`` (the regressor's mean, the per-channel log-scale), ``ofd_loss`` (after the
  connector, with :func:`ofd_margin` from the teacher's BN).
* CRD (Tian et al. 2020) as pure pieces around a memory bank the method owns: :func:`crd_scores`,
  :func:`crd_normalizer`, :func:`crd_momentum_update` and the NCE criterion :func:`crd_nce_loss`.

Tiny batches: AT, NST, HCL, FitNet, VID, OFD and CRD's NCE are per-sample means and work at N = 1.
SP and PKT compare samples with each other: at N = 1 both are exactly 0 (one sample has no relation
to preserve), as in the references. RKD needs three points: for N < 3 it returns an exact 0 that is
still connected to the inputs (the reference gives the same ~0 at N = 2 and NaN at N = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses.core import compute_dtype

__all__ = [
    "at_loss",
    "crd_momentum_update",
    "crd_nce_loss",
    "crd_normalizer",
    "crd_scores",
    "fitnet_loss",
    "hcl_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margin",
    "pkt_loss",
    "pool_to_smaller",
    "rkd_loss",
    "sp_loss",
    "vid_log_scale_init",
    "vid_loss",
]


# ---- shared pieces --------------------------------------------------------------------------


def _dtype(*tensors: Tensor) -> torch.dtype:
    """The compute dtype of several inputs: float64 if any is float64, else float32."""
    kinds = {compute_dtype(t) for t in tensors}
    return torch.float64 if torch.float64 in kinds else torch.float32


def _check_tensor(name: str, x: object, *, dims: int | None = None, min_dims: int = 1) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {kind}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {tuple(x.shape)}")
    if x.dim() < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dims, got shape {tuple(x.shape)}")
    return x


def _check_batch(student: Tensor, teacher: Tensor, where: str) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{where}: student batch {student.shape[0]} != teacher batch {teacher.shape[0]}")


def _pairs(
    name: str, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *, dims: int | None = 4
) -> list[tuple[Tensor, Tensor]]:
    """The (student, teacher) stage pairs in the compute dtype; ValueError on lists that do not pair."""
    for side, feats in (("student_feats", student_feats), ("teacher_feats", teacher_feats)):
        if isinstance(feats, Tensor) or not isinstance(feats, Sequence) or len(feats) == 0:
            raise ValueError(f"{name}: {side} must be a non-empty list of tensors (one per stage)")
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"{name}: {len(student_feats)} student stages but {len(teacher_feats)} teacher stages"
        )
    pairs = []
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        _check_tensor(f"{name}: student_feats[{i}]", s, dims=dims, min_dims=2)
        _check_tensor(f"{name}: teacher_feats[{i}]", t, dims=dims, min_dims=2)
        _check_batch(s, t, f"{name}: stage {i}")
        dtype = _dtype(s, t)
        pairs.append((s.to(dtype), t.to(dtype)))
    return pairs


def _vectors(name: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, ...]`` inputs as ``[N, D]`` rows in the compute dtype."""
    _check_tensor(f"{name}: student", student, min_dims=1)
    _check_tensor(f"{name}: teacher", teacher, min_dims=1)
    _check_batch(student, teacher, name)
    dtype = _dtype(student, teacher)
    return student.reshape(student.shape[0], -1).to(dtype), teacher.reshape(teacher.shape[0], -1).to(dtype)


def _connected_zero(*tensors: Tensor) -> Tensor:
    """An exact 0 in the graph of ``tensors`` (zero gradient; NaN or inf inputs cannot leak in)."""
    total = tensors[0].new_zeros(())
    for t in tensors:
        total = total + torch.where(torch.zeros_like(t, dtype=torch.bool), t, 0.0).sum()
    return total


def pool_to_smaller(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both ``[N, C, H, W]`` maps at their common smaller size ``(min H, min W)``, by adaptive average
    pooling of whichever side is larger (a side already at that size is returned as it is).

    On square maps this is the references' rule (AT, NST, VID pool the larger map to the smaller).
    """
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def _stack_sum(terms: list[Tensor]) -> Tensor:
    return torch.stack(terms).sum()


# ---- lists of maps --------------------------------------------------------------------------


def _attention(feat: Tensor, p: float) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: ``mean_c |A_c|^p`` per position, as an L2-unit row."""
    return F.normalize(feat.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): per stage, the mean over samples and positions
    of the squared difference of the L2-normalised attention maps ``mean_c |A_c|^p``; summed over
    stages. The larger map of a pair is pooled to the smaller. ``|A|^p`` is the paper's (the references
    use ``A^p``: the same for even ``p`` or post-ReLU maps, where those give NaN for fractional ``p``).
    """
    terms = []
    for s, t in _pairs("at_loss", student_feats, teacher_feats):
        s, t = pool_to_smaller(s, t)
        terms.append((_attention(s, p) - _attention(t, p)).pow(2).mean())
    return _stack_sum(terms)


def _mean_poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """Mean over samples and channel pairs of ``(a_i . b_j)^2``, rows of ``[N, C, HW]``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017): per stage, the squared MMD between the
    channels of each sample, each channel's spatial response L2-normalised, with the polynomial
    kernel ``k(x, y) = (x . y)^2`` (degree 2, c = 0, as mdistiller); mean over samples, summed over
    stages. The larger map of a pair is pooled to the smaller; channel counts may differ.
    """
    terms = []
    for s, t in _pairs("nst_loss", student_feats, teacher_feats):
        s, t = pool_to_smaller(s, t)
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)
        terms.append(_mean_poly_kernel(s, s) + _mean_poly_kernel(t, t) - 2.0 * _mean_poly_kernel(s, t))
    return _stack_sum(terms)


def _row_normalised_gram(feat: Tensor) -> Tensor:
    flat = feat.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


def sp_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): per stage, ``||G_t - G_s||_F^2 / N^2`` where ``G``
    is the ``N x N`` Gram matrix of the flattened samples with each row L2-normalised; summed over
    stages. Maps of any shape ``[N, ...]`` (student and teacher need not match). At N = 1 it is 0.
    """
    terms = []
    for s, t in _pairs("sp_loss", student_feats, teacher_feats, dims=None):
        n = s.shape[0]
        terms.append((_row_normalised_gram(t) - _row_normalised_gram(s)).pow(2).sum() / (n * n))
    return _stack_sum(terms)


#: ReviewKD's pyramid: the pooled sizes tried, largest first
_HCL_LEVELS = (4, 2, 1)


def hcl_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al. 2021): per stage, the MSE of the maps plus the
    MSEs of both maps average-pooled to 4x4, 2x2, 1x1 (only the sizes below the map's smaller side),
    the k-th pooled size used weighted 2^-k, divided by the sum of the weights; summed over stages
    (on square maps the reference's rule: an 8x8 map uses 4, 2, 1 at 1/2, 1/4, 1/8, a 4x4 map 2, 1
    at 1/2, 1/4, a 1x1 map the MSE alone). Each pair
    must have equal shapes (the fused student maps are built at the teacher's).
    """
    terms = []
    for i, (s, t) in enumerate(_pairs("hcl_loss", student_feats, teacher_feats)):
        if s.shape != t.shape:
            raise ValueError(
                f"hcl_loss: stage {i} student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}"
            )
        side = min(s.shape[-2:])
        total, weights, w = F.mse_loss(s, t), 1.0, 1.0
        for size in _HCL_LEVELS:
            if size < side:
                w /= 2.0
                total = total + w * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
                weights += w
        terms.append(total / weights)
    return _stack_sum(terms)


# ---- vectors --------------------------------------------------------------------------------


def _normalised_distances(diff: Tensor, squared: bool, eps: float) -> Tensor:
    """Pairwise distances from ``diff[i, j] = e_j - e_i`` (squared clamped at ``eps``, root unless
    ``squared``), 0 on the diagonal, divided by their mean over the pairs with a positive distance."""
    dist = diff.pow(2).sum(dim=-1).clamp_min(eps)
    if not squared:
        dist = dist.sqrt()
    n = diff.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=diff.device)
    dist = torch.where(off_diagonal, dist, 0.0)
    positive = dist > 0
    mean = torch.where(positive, dist, 0.0).sum() / positive.sum().clamp_min(1)
    return dist / mean


def _angles(diff: Tensor) -> Tensor:
    """``[N, N, N]`` cosines of the angle at anchor ``i`` between ``e_j - e_i`` and ``e_k - e_i``
    (0 where one of them is the zero vector, i.e. ``j == i`` or ``k == i``)."""
    unit = F.normalize(diff, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_loss(
    student: Tensor,
    teacher: Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25,
    angle_weight: float = 50,
) -> Tensor:
    """Relational KD (Park et al. 2019): ``distance_weight * huber(d_s, d_t) + angle_weight *
    huber(a_s, a_t)``, where ``d`` are the ``N x N`` pairwise distances over their mean (0 on the
    diagonal) and ``a`` the ``N^3`` angle cosines at every anchor; Huber (smooth L1, beta 1) means over
    all entries, as the references. A term whose weight is 0 is not computed.

    N < 3 returns an exact 0 connected to the inputs: two points have a single distance (normalised
    to 1 on both sides) and no angle; one point has neither (the reference returns NaN there).
    """
    s, t = _vectors("rkd_loss", student, teacher)
    if s.shape[0] < 3:
        return _connected_zero(s, t)
    diff_s = s.unsqueeze(0) - s.unsqueeze(1)
    diff_t = t.unsqueeze(0) - t.unsqueeze(1)
    total = _connected_zero(s, t)
    if distance_weight != 0:
        loss_d = F.smooth_l1_loss(
            _normalised_distances(diff_s, squared, eps), _normalised_distances(diff_t, squared, eps)
        )
        total = total + distance_weight * loss_d
    if angle_weight != 0:
        total = total + angle_weight * F.smooth_l1_loss(_angles(diff_s), _angles(diff_t))
    return total


def _similarity_distribution(rows: Tensor, eps: float) -> Tensor:
    """PKT's conditional probabilities: cosine similarities mapped to [0, 1], each row summing to 1."""
    unit = rows / (rows.norm(dim=1, keepdim=True) + eps)
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): the mean over the ``N x N`` entries of
    ``P_t log((P_t + eps) / (P_s + eps))``, ``P`` the row-normalised cosine-similarity kernel
    ``(cos + 1) / 2`` of each side (vectors divided by ``norm + eps``). At N = 1 it is 0.
    Non-finite inputs are not zeroed (the references zero NaNs after normalising): they surface.
    """
    s, t = _vectors("pkt_loss", student, teacher)
    p_s = _similarity_distribution(s, eps)
    p_t = _similarity_distribution(t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ---- one map with a trainable piece ---------------------------------------------------------


def fitnet_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets' hint loss (Romero et al. 2015): the mean squared error between the regressed student
    map (the method applies its regressor first) and the teacher's hint map, of equal shapes."""
    _check_tensor("fitnet_loss: student_feat", student_feat)
    _check_tensor("fitnet_loss: teacher_feat", teacher_feat)
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet_loss: student_feat shape {tuple(student_feat.shape)} != teacher_feat shape "
            f"{tuple(teacher_feat.shape)} (apply the regressor first)"
        )
    dtype = _dtype(student_feat, teacher_feat)
    return F.mse_loss(student_feat.to(dtype), teacher_feat.to(dtype))


def vid_log_scale_init(init_pred_var: float = 5.0, eps: float = 1e-5) -> float:
    """The log-scale value whose variance ``softplus(log_scale) + eps`` is ``init_pred_var``."""
    if not init_pred_var > eps:
        raise ValueError(f"init_pred_var must be > eps = {eps!r}, got {init_pred_var!r}")
    return math.log(math.expm1(init_pred_var - eps))


def vid_loss(
    student_feat: Tensor, teacher_feat: Tensor, pred_mean: Tensor, log_scale_param: Tensor, eps: float = 1e-5
) -> Tensor:
    """Variational information distillation (Ahn et al. 2019): the Gaussian negative log-likelihood
    (without the constant) of the teacher's map under the mean ``pred_mean`` and the per-channel
    variance ``softplus(log_scale_param) + eps``, ``0.5 * ((mu - t)^2 / var + log var)``, averaged
    over samples, channels and positions.

    As in the references the pair is brought to the smaller spatial size: the teacher's map is pooled
    here, the student's (when it is the larger) must be pooled by the method before its regressor
    (:func:`pool_to_smaller`), so ``pred_mean`` is ``[N, C_t, h, w]`` at that size.
    """
    for name, x in (("student_feat", student_feat), ("teacher_feat", teacher_feat), ("pred_mean", pred_mean)):
        _check_tensor(f"vid_loss: {name}", x, dims=4)
    _check_tensor("vid_loss: log_scale_param", log_scale_param, dims=1)
    _check_batch(pred_mean, teacher_feat, "vid_loss: pred_mean")
    _check_batch(student_feat, teacher_feat, "vid_loss: student_feat")
    channels = teacher_feat.shape[1]
    if pred_mean.shape[1] != channels or log_scale_param.shape[0] != channels:
        raise ValueError(
            f"vid_loss: pred_mean channels {pred_mean.shape[1]} and log_scale_param size "
            f"{log_scale_param.shape[0]} must equal the teacher's channels {channels}"
        )
    size = (
        min(student_feat.shape[-2], teacher_feat.shape[-2]),
        min(student_feat.shape[-1], teacher_feat.shape[-1]),
    )
    if tuple(pred_mean.shape[-2:]) != size:
        raise ValueError(
            f"vid_loss: pred_mean spatial size {tuple(pred_mean.shape[-2:])} must be the pair's smaller size "
            f"{size} (pool the student map to it before the regressor: pool_to_smaller)"
        )
    dtype = _dtype(pred_mean, teacher_feat, log_scale_param)
    mean = pred_mean.to(dtype)
    target = teacher_feat.to(dtype)
    if tuple(target.shape[-2:]) != size:
        target = F.adaptive_avg_pool2d(target, size)
    var = (F.softplus(log_scale_param.to(dtype)) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """OFD's per-channel margin (Heo et al. 2019) from the BN before the teacher's ReLU: with the
    pre-activation taken as ``N(beta, |gamma|^2)``, the mean of its negative part
    ``E[x | x < 0] = beta - |gamma| phi(beta / |gamma|) / Phi(-beta / |gamma|)``, or ``-3 |gamma|`` where
    ``Phi(-beta / |gamma|) <= 0.001`` (as the reference). A dead channel (``gamma = 0``) gives ``beta``
    if ``beta < 0`` else 0. A ``[C]`` tensor without gradient, float32 (float64 stays float64).
    """
    _check_tensor("ofd_margin: bn_weight", bn_weight, dims=1)
    _check_tensor("ofd_margin: bn_bias", bn_bias, dims=1)
    if bn_weight.shape != bn_bias.shape:
        raise ValueError(
            f"ofd_margin: bn_weight {tuple(bn_weight.shape)} and bn_bias {tuple(bn_bias.shape)} differ"
        )
    with torch.no_grad():
        std = bn_weight.detach().double().abs()
        mean = bn_bias.detach().double()
        z = mean / std
        below_zero = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z)
        density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # phi(z)
        truncated_mean = mean - std * density / below_zero
        margin = torch.where(below_zero > 1e-3, truncated_mean, -3.0 * std)
    return margin.to(_dtype(bn_weight, bn_bias))


def ofd_loss(student_preact: Tensor, teacher_preact: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 (Heo et al. 2019) between the connector's student map ``s`` and the teacher's
    pre-ReLU map with the margin applied, ``T = max(t, margin)``: ``(s - T)^2`` except where
    ``s <= T <= 0`` (the student is already as negative as the teacher needs), summed over channels
    and positions, averaged over samples. The teacher's map is pooled to the student's size when
    they differ, as the reference. ``margin`` is ``[C]`` (:func:`ofd_margin`) or broadcastable to the
    maps, and ``<= 0`` (a positive margin is outside the method). The reference's per-stage weights
    ``2^-(stages - 1 - i)`` belong to the method.
    """
    _check_tensor("ofd_loss: student_preact", student_preact, dims=4)
    _check_tensor("ofd_loss: teacher_preact", teacher_preact, dims=4)
    _check_tensor("ofd_loss: margin", margin)
    _check_batch(student_preact, teacher_preact, "ofd_loss")
    if student_preact.shape[1] != teacher_preact.shape[1]:
        raise ValueError(
            f"ofd_loss: student channels {student_preact.shape[1]} != teacher channels "
            f"{teacher_preact.shape[1]} (apply the connector first)"
        )
    dtype = _dtype(student_preact, teacher_preact)
    s = student_preact.to(dtype)
    t = teacher_preact.to(dtype)
    if t.shape[-2:] != s.shape[-2:]:
        t = F.adaptive_avg_pool2d(t, s.shape[-2:])
    m = margin.to(dtype)
    if m.dim() == 1:
        if m.shape[0] != s.shape[1]:
            raise ValueError(f"ofd_loss: margin has {m.shape[0]} channels, the maps {s.shape[1]}")
        m = m.view(1, -1, 1, 1)
    target = torch.maximum(t, m)
    penalised = (s > target) | (target > 0)
    return torch.where(penalised, (s - target).pow(2), 0.0).sum() / s.shape[0]


# ---- CRD ------------------------------------------------------------------------------------


def crd_scores(embedding: Tensor, bank_rows: Tensor, temperature: float) -> Tensor:
    """CRD's unnormalised scores ``exp(<m_k, v> / T)`` of one side's embeddings ``v`` (``[N, D]``)
    against the other side's memory rows ``m`` (``[N, K + 1, D]``, row 0 the positive's), ``[N, K + 1]``.
    Divide by :func:`crd_normalizer`'s constant to get the scores :func:`crd_nce_loss` takes."""
    _check_tensor("crd_scores: embedding", embedding, dims=2)
    _check_tensor("crd_scores: bank_rows", bank_rows, dims=3)
    if bank_rows.shape[0] != embedding.shape[0] or bank_rows.shape[2] != embedding.shape[1]:
        raise ValueError(
            f"crd_scores: bank_rows {tuple(bank_rows.shape)} must be [N, K + 1, D] for embedding "
            f"{tuple(embedding.shape)}"
        )
    dtype = _dtype(embedding, bank_rows)
    return torch.exp(torch.einsum("nkd,nd->nk", bank_rows.to(dtype), embedding.to(dtype)) / temperature)


def crd_normalizer(scores: Tensor, n_data: int) -> Tensor:
    """CRD's estimate of the partition function, ``mean(scores) * n_data`` (detached): the reference
    computes it once, from the first batch's unnormalised scores, and keeps it for the whole run."""
    _check_tensor("crd_normalizer: scores", scores, dims=2)
    return scores.detach().to(compute_dtype(scores)).mean() * n_data


def crd_momentum_update(rows: Tensor, embedding: Tensor, momentum: float) -> Tensor:
    """The new memory rows of the batch's samples: ``momentum * rows + (1 - momentum) * v``, each
    L2-normalised (detached; the bank writes them back at the samples' indices)."""
    _check_tensor("crd_momentum_update: rows", rows, dims=2)
    _check_tensor("crd_momentum_update: embedding", embedding, dims=2)
    if rows.shape != embedding.shape:
        raise ValueError(
            f"crd_momentum_update: rows {tuple(rows.shape)} != embedding {tuple(embedding.shape)}"
        )
    with torch.no_grad():
        dtype = _dtype(rows, embedding)
        mixed = momentum * rows.detach().to(dtype) + (1.0 - momentum) * embedding.detach().to(dtype)
        return F.normalize(mixed, dim=1)


def crd_nce_loss(x: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE criterion (Tian et al. 2020, eq. 18 of the code) on normalised scores ``x``
    (``[N, K + 1]``, column 0 the positive, the rest ``K`` negatives drawn uniformly from ``n_data``
    samples): with the noise mass ``c = K / n_data``, ``-(sum_n log(x_n0 / (x_n0 + c + eps)) +
    sum_{n, k >= 1} log(c / (x_nk + c + eps))) / N``.
    """
    _check_tensor("crd_nce_loss: x", x, dims=2)
    if x.shape[1] < 1:
        raise ValueError("crd_nce_loss: x must have a positive column (shape [N, K + 1])")
    x = x.to(compute_dtype(x))
    noise = (x.shape[1] - 1) / float(n_data)
    positive, negatives = x[:, 0], x[:, 1:]
    log_d1 = torch.log(positive / (positive + (noise + eps)))
    log_d0 = torch.log(noise / (negatives + (noise + eps)))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]
