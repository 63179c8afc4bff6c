"""Tests for the issue-10 losses (DKD, DIST, logit standardization, generalized JSD, skew KL).

Every reference below is written from the papers' formulas over probabilities, in float64, and
never calls kdbench.losses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import (
    KL_DIRECTIONS,
    dist_loss,
    dist_terms,
    dkd_loss,
    dkd_terms,
    kd_loss,
    kd_loss_terms,
    standardize_logits,
)

NEW_KLS = ("jsd", "skew_forward", "skew_reverse")

# --------------------------------------------------------------------------------------------
# float64 references from the formulas
# --------------------------------------------------------------------------------------------


def ref_probs(z: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """softmax(z / tau) over the last dim, in float64, written out."""
    z = z.detach().double() / tau
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_c p log(p / q) over the last dim, 0 where p == 0."""
    safe_q = torch.where(p > 0, q, torch.ones_like(q))
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    return torch.where(p > 0, p * torch.log(safe_p / safe_q), torch.zeros_like(p)).sum(dim=-1)


def ref_dkd_parts(s_row, t_row, y: int, tau: float) -> tuple[float, float]:
    """(TCKD, NCKD) of one position, by the paper's definitions."""
    ps, pt = ref_probs(s_row, tau), ref_probs(t_row, tau)
    bs = torch.stack([ps[y], 1 - ps[y]])
    bt = torch.stack([pt[y], 1 - pt[y]])
    others = [c for c in range(ps.shape[0]) if c != y]
    qs = ps[others] / ps[others].sum()
    qt = pt[others] / pt[others].sum()
    return ref_kl(bt, bs).item(), ref_kl(qt, qs).item()


def ref_dkd_parts_log(s_row, t_row, y: int, tau: float) -> tuple[float, float]:
    """(TCKD, NCKD) of one position in log space, for logits too large for ``ref_dkd_parts``.

    log p_c = z_c - LSE(z), log(1 - p_y) = LSE(z_others) - LSE(z), and the non-target
    distribution renormalised over the others is the softmax of the others' logits.
    """

    def lse(v):
        m = v.max()
        return m + torch.log(torch.exp(v - m).sum())

    def kl_log(lp, lq):
        return sum(math.exp(a) * (a - b) for a, b in zip(lp.tolist(), lq.tolist()) if math.exp(a) > 0)

    def parts(z):
        z = z.detach().double() / tau
        others = torch.cat([z[:y], z[y + 1 :]])
        bins = torch.stack([z[y] - lse(z), lse(others) - lse(z)])
        return bins, others - lse(others)

    (bs, qs), (bt, qt) = parts(s_row), parts(t_row)
    return kl_log(bt, bs), kl_log(qt, qs)


def ref_dkd(s, t, y, *, alpha, beta, tau, ignore_index=-100) -> float:
    c = s.shape[-1]
    s, t, y = s.reshape(-1, c), t.reshape(-1, c), y.reshape(-1)
    vals = []
    for i in range(s.shape[0]):
        if y[i] == ignore_index:
            continue
        tckd, nckd = ref_dkd_parts(s[i], t[i], int(y[i]), tau)
        vals.append((alpha * tckd + beta * nckd) * tau**2)
    return sum(vals) / max(len(vals), 1)


def ref_pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Textbook Pearson correlation of two 1-D samples."""
    x, y = x.double(), y.double()
    dx, dy = x - x.mean(), y - y.mean()
    return ((dx * dy).sum() / torch.sqrt((dx * dx).sum() * (dy * dy).sum())).item()


def ref_dist(s, t, *, beta=1.0, gamma=1.0, tau=1.0) -> tuple[float, float, float]:
    """(inter, intra, loss) of DIST on [N, C] logits."""
    ps, pt = ref_probs(s, tau), ref_probs(t, tau)
    n, c = ps.shape
    inter = 1 - sum(ref_pearson(ps[i], pt[i]) for i in range(n)) / n
    intra = 1 - sum(ref_pearson(ps[:, j], pt[:, j]) for j in range(c)) / c
    return inter, intra, tau**2 * (beta * inter + gamma * intra)


def ref_soft(pt, ps, kl: str, *, jsd_beta=0.5, skew_lambda=0.1) -> torch.Tensor:
    """Per-position soft divergence from the probabilities."""
    if kl == "forward":
        return ref_kl(pt, ps)
    if kl == "reverse":
        return ref_kl(ps, pt)
    if kl == "jsd":
        m = jsd_beta * pt + (1 - jsd_beta) * ps
        return jsd_beta * ref_kl(pt, m) + (1 - jsd_beta) * ref_kl(ps, m)
    if kl == "skew_forward":
        return ref_kl(pt, skew_lambda * pt + (1 - skew_lambda) * ps)
    if kl == "skew_reverse":
        return ref_kl(ps, (1 - skew_lambda) * pt + skew_lambda * ps)
    raise AssertionError(kl)


def ref_standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(z - mean) / (eps + unbiased std), per row."""
    z = z.detach().double()
    c = z.shape[-1]
    d = z - z.sum(dim=-1, keepdim=True) / c
    std = torch.sqrt((d * d).sum(dim=-1, keepdim=True) / (c - 1))
    return d / (eps + std)


def ref_soft_loss(
    s,
    t,
    y,
    kl,
    *,
    tau,
    tau_squared=True,
    kl_reduction="sum",
    student_tau_one=False,
    standardize=False,
    ignore_index=-100,
    **kw,
) -> torch.Tensor:
    """Mean over kept positions of w * divergence (alpha = 0)."""
    c = s.shape[-1]
    s, t, y = s.detach().double().reshape(-1, c), t.detach().double().reshape(-1, c), y.reshape(-1)
    keep = y != ignore_index
    s, t = s[keep], t[keep]
    if standardize:
        s, t = ref_standardize(s), ref_standardize(t)
    d = ref_soft(ref_probs(t, tau), ref_probs(s, 1.0 if student_tau_one else tau), kl, **kw)
    if kl_reduction == "mean":
        d = d / c
    return (tau**2 if tau_squared else 1.0) * d.mean()


def case(shape, seed, scale=2.0, dtype=torch.float64, mask_frac=0.0):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    if mask_frac:
        y = torch.where(torch.rand(shape[:-1], generator=gen) < mask_frac, torch.full_like(y, -100), y)
    return s, t, y


def test_kl_directions_hold_all_five():
    assert set(KL_DIRECTIONS) == {"forward", "reverse", "jsd", "skew_forward", "skew_reverse"}


# --------------------------------------------------------------------------------------------
# DKD
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0, 10.0])
def test_dkd_decomposition_identity(tau):
    """KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD, per position, at any tau."""
    s, t, y = case((6, 7), seed=1, scale=3.0)
    for i in range(6):
        terms = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], tau=tau)
        pt = ref_probs(t[i], tau)
        kl = ref_kl(pt, ref_probs(s[i], tau)).item()
        got = terms["tckd"].item() + (1 - pt[y[i]].item()) * terms["nckd"].item()
        assert got == pytest.approx(kl, rel=1e-10, abs=1e-13)
        tckd, nckd = ref_dkd_parts(s[i], t[i], int(y[i]), tau)
        assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-10, abs=1e-13)
        assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "alpha,beta,tau", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (0.0, 1.0, 2.0), (2.0, 0.0, 0.7)]
)
def test_dkd_matches_reference(dtype, alpha, beta, tau):
    s, t, y = case((9, 6), seed=2, dtype=dtype)
    terms = dkd_terms(s, t, y, alpha=alpha, beta=beta, tau=tau)
    want = ref_dkd(s, t, y, alpha=alpha, beta=beta, tau=tau)
    tol = dict(rel=1e-10, abs=1e-12) if dtype == torch.float64 else dict(rel=1e-5, abs=1e-5 * tau**2)
    assert terms["loss"].item() == pytest.approx(want, **tol)
    assert dkd_loss(s, t, y, alpha=alpha, beta=beta, tau=tau).item() == terms["loss"].item()
    torch.testing.assert_close(terms["loss"], (alpha * terms["tckd"] + beta * terms["nckd"]) * tau**2)


def test_dkd_closed_forms():
    s, t, y = case((8, 5), seed=3)
    tau = 3.0
    kd_soft = kd_loss(s, t, y, alpha=0.0, tau=tau)  # tau^2 * mean KL(p_t || p_s)
    # alpha = beta = 1 exceeds KD exactly by tau^2 * mean_i p_t[y_i] * NCKD_i.
    pt = ref_probs(t, tau)
    extra = sum(pt[i, y[i]].item() * ref_dkd_parts(s[i], t[i], int(y[i]), tau)[1] for i in range(8)) / 8
    got = dkd_loss(s, t, y, alpha=1.0, beta=1.0, tau=tau)
    assert got.item() == pytest.approx(kd_soft.item() + tau**2 * extra, rel=1e-10)
    assert got.item() >= kd_soft.item()
    # One position with beta = 1 - p_t[y]: DKD is exactly the KD soft term.
    b = 1 - pt[0, y[0]].item()
    one = dkd_loss(s[:1], t[:1], y[:1], alpha=1.0, beta=b, tau=tau)
    assert one.item() == pytest.approx(kd_loss(s[:1], t[:1], y[:1], alpha=0.0, tau=tau).item(), rel=1e-10)
    # Two classes: there is one non-target class, NCKD = 0 and TCKD is the whole KL.
    s2, t2, y2 = case((6, 2), seed=4)
    terms = dkd_terms(s2, t2, y2, alpha=1.0, beta=8.0, tau=tau)
    assert terms["nckd"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(kd_loss(s2, t2, y2, alpha=0.0, tau=tau).item(), rel=1e-10)
    # Student == teacher: exactly zero.
    same = dkd_terms(s, s.clone(), y)
    assert same["loss"].item() == 0.0 and same["tckd"].item() == 0.0 and same["nckd"].item() == 0.0


def test_dkd_gradcheck():
    s, t, y = case((3, 5), seed=5)
    y[1] = -100
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dkd_loss(a, b, y, alpha=0.7, beta=3.0, tau=2.0), (s, t))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_large_logits_finite(tau):
    s, t, y = case((8, 10), seed=6, scale=1e3, dtype=torch.float32)
    rows = torch.arange(8)
    s[rows[:3], y[:3]] = -1000.0  # target pushed down as mdistiller's mask does
    t[rows[2:5], y[2:5]] = -1000.0
    t[rows[5:], y[5:]] = 3000.0  # teacher certain of the target
    s[rows[6:], y[6:]] = 3000.0  # ... and so is the student: p[y] == 1 in float32
    s.requires_grad_(True)
    t.requires_grad_(True)
    terms = dkd_terms(s, t, y)
    assert all(torch.isfinite(v) and v.item() >= 0 for v in terms.values())
    terms["loss"].backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    # vs the log-space reference of the formulas (mdistiller's "-1000 on z / tau" target mask
    # would leak here: the targets at 3000 stay the largest logit after it)
    for i in range(8):
        tckd, nckd = ref_dkd_parts_log(s[i], t[i], int(y[i]), tau)
        row = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], tau=tau)
        assert row["tckd"].item() == pytest.approx(tckd, rel=1e-5, abs=1e-5)
        assert row["nckd"].item() == pytest.approx(nckd, rel=1e-5, abs=1e-5)
    # float32 agrees with the same computation in float64
    s64 = s.detach().double().requires_grad_(True)
    want = dkd_loss(s64, t.detach().double(), y)
    want.backward()
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-3)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-3, atol=1e-4 * s64.grad.abs().max().item())


# --------------------------------------------------------------------------------------------
# DIST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 0.5)])
def test_dist_matches_reference(dtype, beta, gamma, tau):
    s, t, _ = case((12, 10), seed=7, dtype=dtype)
    terms = dist_terms(s, t, beta=beta, gamma=gamma, tau=tau)
    inter, intra, loss = ref_dist(s, t, beta=beta, gamma=gamma, tau=tau)
    tol = dict(rel=1e-6, abs=1e-6) if dtype == torch.float64 else dict(rel=1e-5, abs=1e-5)
    assert terms["inter"].item() == pytest.approx(inter, **tol)
    assert terms["intra"].item() == pytest.approx(intra, **tol)
    assert terms["loss"].item() == pytest.approx(loss, **tol)
    assert dist_loss(s, t, beta=beta, gamma=gamma, tau=tau).item() == terms["loss"].item()


def test_dist_identical_symmetric_and_range():
    s, t, _ = case((16, 10), seed=8)
    same = dist_terms(s, s.clone(), tau=2.0)
    # Pearson(a, a) = |a|^2 / (|a|^2 + eps): zero up to O(eps / |a|^2)
    assert abs(same["loss"].item()) < 1e-5 and abs(same["inter"].item()) < 1e-5
    # Pearson is symmetric, so DIST is too.
    torch.testing.assert_close(dist_loss(s, t, tau=2.0), dist_loss(t, s, tau=2.0))
    # Each part in [0, 2]; reversed logits give anti-correlated rows (inter > 1).
    for tt in (t, -s, s.flip(-1)):
        terms = dist_terms(s, tt, beta=1.5, gamma=0.5, tau=3.0)
        assert 0 <= terms["inter"].item() <= 2 and 0 <= terms["intra"].item() <= 2
        assert 0 <= terms["loss"].item() <= 2 * 9.0 * (1.5 + 0.5)
    assert dist_terms(s, -s)["inter"].item() > 1


def test_dist_invariances():
    s, t, _ = case((10, 7), seed=9)
    base = dist_loss(s, t, tau=1.5)
    gen = torch.Generator().manual_seed(10)
    # p is unchanged by a per-row logit shift
    shift = torch.randn(10, 1, generator=gen, dtype=torch.float64) * 5
    torch.testing.assert_close(dist_loss(s + shift, t - shift, tau=1.5), base)
    # rows are samples and classes are variables: joint permutations change nothing
    rp, cp = torch.randperm(10, generator=gen), torch.randperm(7, generator=gen)
    torch.testing.assert_close(dist_loss(s[rp], t[rp], tau=1.5), base)
    torch.testing.assert_close(dist_loss(s[:, cp], t[:, cp], tau=1.5), base)
    # a single row: every class column is constant, Pearson 0, intra = 1 (torchdistill's value)
    assert dist_terms(s[:1], t[:1])["intra"].item() == 1.0


def test_dist_gradcheck():
    s, t, _ = case((4, 5), seed=11)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: dist_loss(a, b, beta=1.0, gamma=2.0, tau=2.0), (s, t))


# --------------------------------------------------------------------------------------------
# Generalized JSD and skew KL
# --------------------------------------------------------------------------------------------


def _loss_and_grad(s, t, y, **kw):
    s = s.detach().clone().requires_grad_(True)
    out = kd_loss(s, t, y, **kw)
    out.backward()
    return out, s.grad


@pytest.mark.parametrize("alpha,tau", [(0.0, 1.0), (0.3, 2.0), (0.5, 0.5)])
def test_jsd_and_skew_endpoints_are_exactly_kl(alpha, tau):
    s, t, y = case((3, 4, 6), seed=12, dtype=torch.float32, mask_frac=0.2)
    fwd = _loss_and_grad(s, t, y, alpha=alpha, tau=tau, kl="forward")
    rev = _loss_and_grad(s, t, y, alpha=alpha, tau=tau, kl="reverse")
    for kl, kw, want in [
        ("jsd", dict(jsd_beta=0.0), fwd),
        ("jsd", dict(jsd_beta=1.0), rev),
        ("skew_forward", dict(skew_lambda=0.0), fwd),
        ("skew_reverse", dict(skew_lambda=0.0), rev),
    ]:
        got = _loss_and_grad(s, t, y, alpha=alpha, tau=tau, kl=kl, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (kl, kw)
    # skew at lambda = 1 compares a distribution with itself
    for kl in ("skew_forward", "skew_reverse"):
        assert kd_loss(s, t, y, alpha=0.0, kl=kl, skew_lambda=1.0).item() == 0.0


@pytest.mark.parametrize(
    "kl,kw",
    [
        ("jsd", dict(jsd_beta=0.1)),
        ("jsd", dict(jsd_beta=0.5)),
        ("jsd", dict(jsd_beta=0.9)),
        ("skew_forward", dict(skew_lambda=0.1)),
        ("skew_reverse", dict(skew_lambda=0.1)),
        ("skew_forward", dict(skew_lambda=0.7)),
        ("skew_reverse", dict(skew_lambda=0.7)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jsd_skew_match_reference(kl, kw, dtype):
    s, t, y = case((2, 5, 8), seed=13, dtype=dtype, mask_frac=0.2)
    for tau in (1.0, 2.5):
        for tau_squared in (True, False):
            got = kd_loss(s, t, y, alpha=0.0, tau=tau, kl=kl, tau_squared=tau_squared, **kw)
            want = ref_soft_loss(s, t, y, kl, tau=tau, tau_squared=tau_squared, **kw)
            assert got.dtype == dtype
            w = tau**2 if tau_squared else 1.0
            tol = 1e-12 if dtype == torch.float64 else 1e-6
            torch.testing.assert_close(got.double(), want, rtol=tol * 10, atol=tol * w)
    # the combination with CE: alpha * CE + (1 - alpha) * tau^2 * soft
    terms = kd_loss_terms(s, t, y, alpha=0.4, tau=2.0, kl=kl, **kw)
    keep = y != -100
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s[keep], y[keep]))
    torch.testing.assert_close(terms["loss"], 0.4 * terms["ce"] + 0.6 * 4.0 * terms["kl"])


@pytest.mark.parametrize("kl", NEW_KLS)
def test_new_kls_with_reduction_mean_and_student_tau_one(kl):
    s, t, y = case((6, 5), seed=14)
    for kw in (
        dict(kl_reduction="mean"),
        dict(student_tau_one=True),
        dict(kl_reduction="mean", student_tau_one=True),
    ):
        got = kd_loss(s, t, y, alpha=0.0, tau=3.0, kl=kl, **kw)
        torch.testing.assert_close(got, ref_soft_loss(s, t, y, kl, tau=3.0, **kw), rtol=1e-11, atol=1e-13)


def test_jsd_symmetric_and_bounded_at_half():
    s, t, y = case((20, 9), seed=15, scale=4.0)
    for tau in (1.0, 2.0):
        a = kd_loss(s, t, y, alpha=0.0, tau=tau, kl="jsd", jsd_beta=0.5)
        b = kd_loss(t, s, y, alpha=0.0, tau=tau, kl="jsd", jsd_beta=0.5)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert 0 < a.item() <= math.log(2) * tau**2
    # Disjoint (one-hot) distributions reach the bound log 2.
    far_s = torch.tensor([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0]], dtype=torch.float64)
    far_t = torch.tensor([[-100.0, 100.0, -100.0], [-100.0, -100.0, 100.0]], dtype=torch.float64)
    y2 = torch.zeros(2, dtype=torch.long)
    top = kd_loss(far_s, far_t, y2, alpha=0.0, tau=1.0, kl="jsd", jsd_beta=0.5, tau_squared=False)
    assert top.item() == pytest.approx(math.log(2), rel=1e-12)
    # Skew forward is bounded by log(1 / lambda) since m >= lambda * p_t.
    sk = kd_loss(far_s, far_t, y2, alpha=0.0, tau=1.0, kl="skew_forward", skew_lambda=0.1, tau_squared=False)
    assert sk.item() == pytest.approx(math.log(10), rel=1e-12)


@pytest.mark.parametrize("kl", NEW_KLS)
def test_new_kls_identical_zero_and_stable(kl):
    s, t, y = case((16, 10), seed=16, scale=1e4, dtype=torch.float32)
    assert abs(kd_loss(s, s.clone(), y, alpha=0.0, tau=1.3, kl=kl).item()) < 1e-6
    # a class at -inf in both models (a masked vocabulary entry) and huge logits: finite everywhere
    s[:, 3] = float("-inf")
    t[:, 3] = float("-inf")
    y = torch.where(y == 3, torch.zeros_like(y), y)  # (CE of a label at -inf is infinite)
    s.requires_grad_(True)
    t.requires_grad_(True)
    for tau in (0.05, 1.0, 20.0):
        out = kd_loss(s, t, y, alpha=0.3, tau=tau, kl=kl, detach_teacher=False)
        assert torch.isfinite(out)
        out.backward()
        assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
        s.grad = t.grad = None
    keep_cols = [c for c in range(10) if c != 3]
    got = kd_loss(s, t, y, alpha=0.0, tau=2.0, kl=kl)
    want = ref_soft_loss(s[:, keep_cols], t[:, keep_cols], y, kl, tau=2.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_new_kls_gradcheck():
    s, t, _ = case((3, 4), seed=17)
    y = torch.tensor([0, -100, 3])
    s.requires_grad_(True)
    t.requires_grad_(True)
    for kl in NEW_KLS:

        def f(a, b, kl=kl):
            return kd_loss(
                a,
                b,
                y,
                alpha=0.3,
                tau=1.7,
                kl=kl,
                jsd_beta=0.3,
                skew_lambda=0.2,
                detach_teacher=False,
                standardize=True,
            )

        assert torch.autograd.gradcheck(f, (s, t))


# --------------------------------------------------------------------------------------------
# Logit standardization
# --------------------------------------------------------------------------------------------


def test_standardize_logits_formula():
    s, _, _ = case((4, 3, 7), seed=18, scale=5.0)
    z = standardize_logits(s)
    torch.testing.assert_close(z, ref_standardize(s), rtol=1e-12, atol=1e-12)
    # unbiased std (divisor C - 1): each standardized row has sum of squares C - 1, not C
    torch.testing.assert_close(
        (z * z).sum(-1), torch.full((4, 3), 6.0, dtype=torch.float64), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    # a constant row maps to zeros with a finite gradient
    c = torch.full((2, 5), 3.0, requires_grad=True)
    out = standardize_logits(c)
    assert torch.all(out == 0)
    (out * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(c.grad).all()


def test_standardized_kd_and_dkd_are_shift_and_scale_invariant():
    s, t, y = case((6, 8), seed=19)
    gen = torch.Generator().manual_seed(20)
    shift = torch.randn(6, 1, generator=gen, dtype=torch.float64) * 10
    scale = torch.rand(6, 1, generator=gen, dtype=torch.float64) * 4 + 0.25
    moved_s, moved_t = s * scale + shift, t / scale - shift
    for kl in KL_DIRECTIONS:
        kw = dict(alpha=0.0, tau=2.0, kl=kl)
        base = kd_loss(s, t, y, standardize=True, **kw)
        torch.testing.assert_close(
            kd_loss(moved_s, moved_t, y, standardize=True, **kw), base, rtol=1e-6, atol=1e-9
        )
        assert not torch.isclose(kd_loss(moved_s, moved_t, y, **kw), kd_loss(s, t, y, **kw))
        # and it is KD on the standardized logits
        torch.testing.assert_close(
            base, ref_soft_loss(s, t, y, kl, tau=2.0, standardize=True), rtol=1e-11, atol=1e-13
        )
    base = dkd_loss(s, t, y, standardize=True)
    torch.testing.assert_close(dkd_loss(moved_s, moved_t, y, standardize=True), base, rtol=1e-6, atol=1e-9)
    assert not torch.isclose(dkd_loss(moved_s, moved_t, y), dkd_loss(s, t, y))
    want = ref_dkd(ref_standardize(s), ref_standardize(t), y, alpha=1.0, beta=8.0, tau=4.0)
    assert base.item() == pytest.approx(want, rel=1e-10)


def test_standardize_leaves_ce_on_raw_logits():
    s, t, y = case((3, 4, 6), seed=21, scale=3.0, mask_frac=0.25)
    plain = kd_loss_terms(s, t, y, alpha=0.4, tau=2.0)
    std = kd_loss_terms(s, t, y, alpha=0.4, tau=2.0, standardize=True)
    keep = y != -100
    torch.testing.assert_close(std["ce"], F.cross_entropy(s[keep], y[keep]), rtol=1e-12, atol=1e-14)
    assert std["ce"].item() == plain["ce"].item()
    assert not torch.isclose(std["kl"], plain["kl"])
    torch.testing.assert_close(std["loss"], 0.4 * std["ce"] + 0.6 * 4.0 * std["kl"])


# --------------------------------------------------------------------------------------------
# Masks on [B, T, C]
# --------------------------------------------------------------------------------------------

MASKED_LOSSES = {
    "dkd": lambda s, t, y: dkd_loss(s, t, y, alpha=1.0, beta=2.0, tau=2.0),
    "dkd_std": lambda s, t, y: dkd_loss(s, t, y, tau=2.0, standardize=True),
    "dist": lambda s, t, y: dist_loss(s, t, tau=2.0, labels=y),
    "jsd": lambda s, t, y: kd_loss(s, t, y, alpha=0.0, tau=2.0, kl="jsd", jsd_beta=0.3),
    "skew_forward": lambda s, t, y: kd_loss(s, t, y, alpha=0.0, tau=2.0, kl="skew_forward"),
    "skew_reverse": lambda s, t, y: kd_loss(s, t, y, alpha=0.0, tau=2.0, kl="skew_reverse"),
    "kd_std": lambda s, t, y: kd_loss(s, t, y, alpha=0.3, tau=2.0, standardize=True),
}


@pytest.mark.parametrize("name", list(MASKED_LOSSES))
def test_masked_sequences(name):
    fn = MASKED_LOSSES[name]
    s, t, y = case((3, 5, 7), seed=22, dtype=torch.float32)
    y[0, 1] = y[1, :3] = y[2, 4] = -100
    keep = y != -100
    n_kept = int(keep.sum())
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[~keep] = float("nan")
    t_bad[~keep] = float("nan")
    t_bad[0, 1, 0] = 1e30
    s_bad.requires_grad_(True)
    seq = fn(s_bad, t_bad, y)
    flat = fn(s[keep], t[keep], y[keep])
    assert torch.isfinite(seq)
    torch.testing.assert_close(seq, flat, rtol=1e-6, atol=1e-7)
    if name != "dist":  # per-position losses: the mean is over kept tokens, not sequences
        per_pos = torch.stack(
            [fn(s[keep][i : i + 1], t[keep][i : i + 1], y[keep][i : i + 1]) for i in range(n_kept)]
        )
        torch.testing.assert_close(seq, per_pos.sum() / n_kept, rtol=1e-5, atol=1e-7)
        assert not torch.isclose(seq, per_pos.sum() / 3)
    seq.backward()
    assert torch.isfinite(s_bad.grad).all()
    assert torch.all(s_bad.grad[~keep] == 0) and torch.any(s_bad.grad[keep] != 0)
    # the gradient on kept positions is that of the flat problem
    s_flat = s[keep].clone().requires_grad_(True)
    fn(s_flat, t[keep], y[keep]).backward()
    torch.testing.assert_close(s_bad.grad[keep], s_flat.grad, rtol=1e-5, atol=1e-7)
    # nothing kept: an exact zero, still in the graph
    s_none = s.clone().requires_grad_(True)
    none = fn(s_none, t, torch.full_like(y, -100))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert torch.all(s_none.grad == 0)


def test_dist_mask_matches_reference_on_kept_rows():
    s, t, y = case((2, 6, 5), seed=23, mask_frac=0.3)
    keep = y != -100
    got = dist_terms(s, t, tau=1.5, labels=y)
    inter, intra, loss = ref_dist(s[keep], t[keep], tau=1.5)
    assert got["inter"].item() == pytest.approx(inter, rel=1e-6)
    assert got["intra"].item() == pytest.approx(intra, rel=1e-6)
    assert got["loss"].item() == pytest.approx(loss, rel=1e-6)
    # without labels every position of [B, T, C] is a row
    _, _, loss_all = ref_dist(s.reshape(-1, 5), t.reshape(-1, 5), tau=1.5)
    assert dist_loss(s, t, tau=1.5).item() == pytest.approx(loss_all, rel=1e-6)


# --------------------------------------------------------------------------------------------
# dtypes and arguments
# --------------------------------------------------------------------------------------------

DTYPE_CALLS = {
    "dkd_loss": lambda s, t, y: [dkd_loss(s, t, y)],
    "dkd_terms": lambda s, t, y: list(dkd_terms(s, t, y, standardize=True).values()),
    "dist_loss": lambda s, t, y: [dist_loss(s, t, labels=y)],
    "dist_terms": lambda s, t, y: list(dist_terms(s, t).values()),
    "standardize_logits": lambda s, t, y: [standardize_logits(s)],
    "jsd": lambda s, t, y: [kd_loss(s, t, y, kl="jsd")],
    "skew_forward": lambda s, t, y: [kd_loss(s, t, y, kl="skew_forward")],
    "skew_reverse": lambda s, t, y: [kd_loss(s, t, y, kl="skew_reverse", standardize=True)],
}


@pytest.mark.parametrize("name", list(DTYPE_CALLS))
def test_output_dtypes(name):
    for in_dtype, out_dtype in [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        s, t, y = case((2, 3, 6), seed=24, dtype=in_dtype, mask_frac=0.2)
        outs = DTYPE_CALLS[name](s, t, y)
        assert all(o.dtype == out_dtype and torch.isfinite(o).all() for o in outs), (name, in_dtype)


def test_bf16_matches_reference_on_rounded_inputs():
    s, t, y = case((4, 3, 8), seed=25, dtype=torch.bfloat16, mask_frac=0.2)
    assert dkd_loss(s, t, y, tau=2.0).item() == pytest.approx(
        ref_dkd(s.double(), t.double(), y, alpha=1.0, beta=8.0, tau=2.0), rel=1e-5, abs=1e-5
    )
    got = kd_loss(s, t, y, alpha=0.0, tau=2.0, kl="jsd")
    torch.testing.assert_close(got.double(), ref_soft_loss(s, t, y, "jsd", tau=2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda s, t, y: dkd_loss(s, t, None), "labels"),
        (lambda s, t, y: dkd_loss(s[:, :1], t[:, :1], y), "student_logits"),
        (lambda s, t, y: dkd_loss(s, t[:1], y), "teacher_logits"),
        (lambda s, t, y: dist_loss(s, t, labels=y[:1]), "labels"),
        (lambda s, t, y: standardize_logits(s, eps=-1.0), "eps"),
    ],
)
def test_bad_arguments(call, name):
    s, t, y = case((3, 4), seed=26)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call(s, t, y)


@pytest.mark.parametrize(
    "method,params,key",
    [
        ("kd", {"alpha": 1.5}, "alpha"),
        ("kd", {"alpha": float("nan")}, "alpha"),
        ("kd", {"tau": 0.0}, "tau"),
        ("kd", {"tau": float("inf")}, "tau"),
        ("kd", {"kl": "jsd", "jsd_beta": 1.5}, "jsd_beta"),
        ("kd", {"kl": "skew_forward", "skew_lambda": -0.1}, "skew_lambda"),
        ("kd", {"standardize": 1}, "standardize"),
        ("kd", {"tau_squared": "yes"}, "tau_squared"),
        ("dkd", {"dkd_alpha": -1.0}, "dkd_alpha"),
        ("dkd", {"dkd_beta": float("nan")}, "dkd_beta"),
        ("dkd", {"tau": 0.0}, "tau"),
        ("dist", {"dist_gamma": -2.0}, "dist_gamma"),
    ],
)
def test_parameter_values_are_checked_once_when_the_method_is_built(method, params, key):
    """The losses check shapes and dtypes on every step; a parameter's range is checked by the method
    that passes it, once, when it is built (a one-line ConfigError naming the key)."""
    from kdbench.errors import ConfigError
    from kdbench.methods import build_method

    with pytest.raises(ConfigError) as e:
        build_method(method, params)
    assert e.value.key == f"distill.{key}"
