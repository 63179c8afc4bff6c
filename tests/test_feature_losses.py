"""Tests for kdbench.losses.features against float64 formulas written here from the papers (and the
reductions the reference code uses), element by element, never by calling the functions under test."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import (
    at_loss,
    crd_momentum_update,
    crd_nce_loss,
    crd_normalizer,
    crd_scores,
    fitnet_loss,
    hcl_loss,
    nst_loss,
    ofd_loss,
    ofd_margin,
    pkt_loss,
    pool_to_smaller,
    rkd_loss,
    sp_loss,
    vid_log_scale_init,
    vid_loss,
)

D64 = torch.float64


def rand(*shape, seed=0, dtype=D64, grad=False, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=D64) * scale + shift).to(dtype)
    return x.requires_grad_(grad)


def grads(fn, *inputs):
    """The value of fn(*inputs) and the gradients of every input (float64 copies)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def assert_close(a, b, tol=1e-10):
    a, b = torch.as_tensor(a, dtype=D64), torch.as_tensor(b, dtype=D64)
    assert torch.allclose(a, b, rtol=tol, atol=tol), f"{a} != {b} (max diff {(a - b).abs().max():.3e})"


# --------------------------------------------------------------------------------------------
# Float64 formulas, written from the papers (loops over samples, channels, pairs and triples).
# --------------------------------------------------------------------------------------------


def block_mean(x, size):
    """Average over non-overlapping blocks down to size x size (divisible sizes only)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def smaller_pair(fs, ft):
    h = min(fs.shape[2], ft.shape[2])
    fs = fs if fs.shape[2] == h else block_mean(fs, h)
    ft = ft if ft.shape[2] == h else block_mean(ft, h)
    return fs, ft


def huber(x):
    return torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)


def ref_at(gs, gt, p=2.0):
    """Q = sum_c |A_c|^p, vectorised and L2-normalised; mean over samples and positions of (Qs - Qt)^2."""
    total = 0.0
    for fs, ft in zip(gs, gt):
        fs, ft = smaller_pair(fs.double(), ft.double())
        n, hw = fs.shape[0], fs.shape[2] * fs.shape[3]
        for i in range(n):
            qs = sum(fs[i, c].abs() ** p for c in range(fs.shape[1])).flatten()
            qt = sum(ft[i, c].abs() ** p for c in range(ft.shape[1])).flatten()
            total = total + ((qs / qs.norm() - qt / qt.norm()) ** 2).sum() / (n * hw)
    return total


def ref_nst(gs, gt):
    """Per sample, MMD^2 between the channel sets (each channel's spatial map L2-normalised) under the
    kernel k(x, y) = (x . y)^2; mean over samples, summed over stages."""
    total = 0.0
    for fs, ft in zip(gs, gt):
        fs, ft = smaller_pair(fs.double(), ft.double())
        n = fs.shape[0]
        for i in range(n):
            s = [fs[i, c].flatten() / fs[i, c].norm() for c in range(fs.shape[1])]
            t = [ft[i, c].flatten() / ft[i, c].norm() for c in range(ft.shape[1])]

            def k_mean(a, b):
                return sum(torch.dot(x, y) ** 2 for x in a for y in b) / (len(a) * len(b))

            total = total + (k_mean(s, s) + k_mean(t, t) - 2 * k_mean(s, t)) / n
    return total


def ref_sp(gs, gt):
    """G_ij = <f_i, f_j>, each row L2-normalised; ||G_t - G_s||_F^2 / N^2."""
    total = 0.0
    for fs, ft in zip(gs, gt):
        n = fs.shape[0]
        s = [fs[i].double().flatten() for i in range(n)]
        t = [ft[i].double().flatten() for i in range(n)]
        for i in range(n):
            rs = torch.stack([torch.dot(s[i], s[j]) for j in range(n)])
            rt = torch.stack([torch.dot(t[i], t[j]) for j in range(n)])
            total = total + ((rt / rt.norm() - rs / rs.norm()) ** 2).sum() / n**2
    return total


def ref_hcl(gs, gt):
    """MSE + the k-th used pooled level (of 4, 2, 1 below the side) at 2^-k, over the weights' sum."""
    total = 0.0
    for fs, ft in zip(gs, gt):
        fs, ft = fs.double(), ft.double()
        used = [size for size in (4, 2, 1) if size < fs.shape[2]]
        weights = [2.0 ** -(k + 1) for k in range(len(used))]
        loss = ((fs - ft) ** 2).mean()
        for size, w in zip(used, weights):
            loss = loss + w * ((block_mean(fs, size) - block_mean(ft, size)) ** 2).mean()
        total = total + loss / (1.0 + sum(weights))
    return total


def ref_rkd(fs, ft, wd=25.0, wa=50.0, squared=False):
    """Huber between the distance matrices over their mean (pairs i != j), mean over N^2 entries;
    Huber between the cosines at each anchor i of (e_j - e_i, e_k - e_i), 0 when j or k is i, mean over N^3."""
    s = [x.double().flatten() for x in fs]
    t = [x.double().flatten() for x in ft]
    n = len(s)

    def distances(e):
        d = [
            [((e[i] - e[j]) ** 2).sum() if i != j else torch.zeros((), dtype=D64) for j in range(n)]
            for i in range(n)
        ]
        if not squared:
            d = [[x.sqrt() if i != j else x for j, x in enumerate(row)] for i, row in enumerate(d)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[x / mean for x in row] for row in d]

    def cosine(e, i, j, k):
        if j == i or k == i:
            return torch.zeros((), dtype=D64)
        a, b = e[j] - e[i], e[k] - e[i]
        return torch.dot(a, b) / (a.norm() * b.norm())

    ds, dt = distances(s), distances(t)
    loss_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    loss_a = (
        sum(
            huber(cosine(s, i, j, k) - cosine(t, i, j, k))
            for i in range(n)
            for j in range(n)
            for k in range(n)
        )
        / n**3
    )
    return wd * loss_d + wa * loss_a


def ref_pkt(fs, ft, eps=1e-7):
    """P_ij = K_ij / sum_j K_ij with K = (cos + 1) / 2 (vectors over norm + eps); mean_ij P_t log((P_t + eps) / (P_s + eps))."""
    n = fs.shape[0]

    def probabilities(f):
        u = [f[i].double() / (f[i].double().norm() + eps) for i in range(n)]
        k = [[(torch.dot(u[i], u[j]) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    ps, pt = probabilities(fs), probabilities(ft)
    return (
        sum(pt[i][j] * torch.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n))
        / n**2
    )


def ref_vid(mu, target, log_scale, eps=1e-5):
    """0.5 ((mu - t)^2 / var_c + log var_c), var_c = log(1 + exp(log_scale_c)) + eps, averaged over all entries."""
    mu, target = mu.double(), target.double()
    n, c, h, w = mu.shape
    total = 0.0
    for ch in range(c):
        var = torch.log(1 + torch.exp(log_scale[ch].double())) + eps
        total = total + (0.5 * ((mu[:, ch] - target[:, ch]) ** 2 / var + torch.log(var))).sum()
    return total / (n * c * h * w)


def ref_ofd(s, t, margin):
    """Heo et al.: T = max(t, m); d_p = sum of 0 if S <= T <= 0 else (T - S)^2; divided by N."""
    s, t = s.double(), t.double()
    m = margin.double().view(1, -1, 1, 1).expand_as(t)
    big_t = torch.where(t > m, t, m)
    zero_zone = (s <= big_t) & (big_t <= 0)
    return torch.where(zero_zone, torch.zeros_like(s), (big_t - s) ** 2).sum() / s.shape[0]


def ref_margin(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, gamma^2), or -3 |gamma| when P(x < 0) <= 0.001."""
    out = []
    for g, b in zip(gamma.tolist(), beta.tolist()):
        sd = abs(g)
        p_neg = 0.5 * (1 + math.erf((0 - b) / sd / math.sqrt(2)))
        if p_neg > 0.001:
            pdf = math.exp(-0.5 * (b / sd) ** 2) / math.sqrt(2 * math.pi)
            out.append(b - sd * pdf / p_neg)
        else:
            out.append(-3 * sd)
    return torch.tensor(out, dtype=D64)


def ref_nce(x, n_data, eps=1e-7):
    """Tian et al.'s NCE: P(D=1 | positive) = x0 / (x0 + K Pn), P(D=0 | negative) = K Pn / (xk + K Pn)."""
    n, k1 = x.shape
    c = (k1 - 1) / n_data
    total = 0.0
    for i in range(n):
        total = total + torch.log(x[i, 0] / (x[i, 0] + c + eps))
        for k in range(1, k1):
            total = total + torch.log(c / (x[i, k] + c + eps))
    return -total / n


# --------------------------------------------------------------------------------------------
# Lists of maps
# --------------------------------------------------------------------------------------------

#: (student H, teacher H) per stage: equal sizes, student larger, teacher larger
SIZES = [((8, 8),), ((8, 4),), ((4, 8),), ((8, 8), (4, 2), (2, 4))]


def stage_maps(n, sizes, seed=0, cs=3, ct=5, relu=True):
    gs = [rand(n, cs, hs, hs, seed=seed + 2 * i) for i, (hs, _) in enumerate(sizes)]
    gt = [rand(n, ct, ht, ht, seed=seed + 2 * i + 1) for i, (_, ht) in enumerate(sizes)]
    if relu:
        gs, gt = [g.relu() + 0.01 for g in gs], [g.relu() + 0.01 for g in gt]
    return gs, gt


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_equals_the_formula_with_its_gradient(n, sizes, p):
    gs, gt = stage_maps(n, sizes, relu=p != 2.0)
    k = len(gs)
    value, g = grads(lambda *xs: at_loss(list(xs[:k]), list(xs[k:]), p), *gs, *gt)
    ref, g_ref = grads(lambda *xs: ref_at(xs[:k], xs[k:], p), *gs, *gt)
    assert value.dtype == D64 and value.shape == ()
    assert_close(value, ref)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("sizes", SIZES)
def test_nst_equals_the_formula_with_its_gradient(n, sizes):
    gs, gt = stage_maps(n, sizes, relu=False)
    k = len(gs)
    value, g = grads(lambda *xs: nst_loss(list(xs[:k]), list(xs[k:])), *gs, *gt)
    ref, g_ref = grads(lambda *xs: ref_nst(xs[:k], xs[k:]), *gs, *gt)
    assert_close(value, ref)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_sp_equals_the_formula_with_its_gradient_on_maps_of_any_shape(n):
    gs = [rand(n, 4, 4, 4, seed=1), rand(n, 3, 2, 2, seed=2)]
    gt = [rand(n, 6, 2, 2, seed=3), rand(n, 7, seed=4)]
    value, g = grads(lambda a, b, c, d: sp_loss([a, b], [c, d]), *gs, *gt)
    ref, g_ref = grads(lambda a, b, c, d: ref_sp([a, b], [c, d]), *gs, *gt)
    assert_close(value, ref)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


def test_sp_and_pkt_are_exactly_zero_for_one_sample():
    s, t = rand(1, 3, 4, 4, seed=1, grad=True), rand(1, 5, 2, 2, seed=2)
    loss = sp_loss([s], [t])
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)
    v, w = rand(1, 8, seed=3, grad=True), rand(1, 6, seed=4)
    loss = pkt_loss(v, w)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_hcl_equals_the_formula_on_stages_of_different_sizes(n):
    shapes = [(n, 4, 8, 8), (n, 6, 4, 4), (n, 5, 2, 2), (n, 7, 1, 1)]
    fs = [rand(*sh, seed=i) for i, sh in enumerate(shapes)]
    ft = [rand(*sh, seed=10 + i) for i, sh in enumerate(shapes)]
    k = len(fs)
    value, g = grads(lambda *xs: hcl_loss(list(xs[:k]), list(xs[k:])), *fs, *ft)
    ref, g_ref = grads(lambda *xs: ref_hcl(xs[:k], xs[k:]), *fs, *ft)
    assert_close(value, ref)
    for a, b in zip(g, g_ref):
        assert_close(a, b)


def test_hcl_weights_by_order_of_use():
    # one 4x4 stage: MSE + 1/2 (2x2) + 1/4 (1x1), over 1.75; constant maps make every MSE 1
    s, t = torch.ones(2, 3, 4, 4, dtype=D64), torch.zeros(2, 3, 4, 4, dtype=D64)
    assert_close(hcl_loss([s], [t]), 1.0)
    s[:, :, :2, :2] = 3.0  # a quarter at 3: MSE 3, pooled 2x2 MSE 3, 1x1 mean 1.5 -> 2.25
    assert_close(hcl_loss([s], [t]), (3.0 + 0.5 * 3.0 + 0.25 * 2.25) / 1.75)


# --------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 6])
@pytest.mark.parametrize("squared", [False, True])
def test_rkd_equals_the_formula_with_its_gradient(n, squared):
    s, t = rand(n, 5, seed=1), rand(n, 7, seed=2)
    value, (gs, gt) = grads(lambda a, b: rkd_loss(a, b, squared), s, t)
    ref, (rs, rt) = grads(lambda a, b: ref_rkd(a, b, squared=squared), s, t)
    assert_close(value, ref)
    assert_close(gs, rs)
    assert_close(gt, rt)
    # the weights are the terms' multipliers; 0 leaves a term out
    assert_close(rkd_loss(s, t, squared, 1e-12, 1, 0), ref_rkd(s, t, 1, 0, squared))
    assert_close(rkd_loss(s, t, squared, 1e-12, 0, 1), ref_rkd(s, t, 0, 1, squared))


def test_rkd_flattens_maps_to_vectors():
    s, t = rand(4, 2, 3, 3, seed=1), rand(4, 5, seed=2)
    assert_close(rkd_loss(s, t), ref_rkd(s.reshape(4, -1), t))


@pytest.mark.parametrize("n", [1, 2])
def test_rkd_needs_three_points_and_is_an_exact_connected_zero_below(n):
    s, t = rand(n, 5, seed=1, grad=True), rand(n, 5, seed=2, grad=True)
    loss = rkd_loss(s, t)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(s.grad == 0) and torch.all(t.grad == 0)
    # with NaN features the zero stays a zero (nothing of them enters the value or the gradient)
    bad = torch.full((n, 5), math.nan, dtype=D64, requires_grad=True)
    loss = rkd_loss(bad, t.detach())
    loss.backward()
    assert loss.item() == 0.0 and torch.all(bad.grad == 0)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_pkt_equals_the_formula_with_its_gradient(n):
    s, t = rand(n, 6, seed=1), rand(n, 9, seed=2)
    value, (gs, gt) = grads(pkt_loss, s, t)
    ref, (rs, rt) = grads(ref_pkt, s, t)
    assert_close(value, ref)
    assert_close(gs, rs)
    assert_close(gt, rt)
    assert_close(pkt_loss(s, t, 1e-3), ref_pkt(s, t, 1e-3))


# --------------------------------------------------------------------------------------------
# One map with a trainable piece
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_fitnet_is_the_mean_squared_error(n):
    s, t = rand(n, 4, 3, 3, seed=1), rand(n, 4, 3, 3, seed=2)
    value, (gs,) = grads(lambda a: fitnet_loss(a, t), s)
    assert_close(value, ((s - t) ** 2).sum() / s.numel())
    assert_close(gs, 2 * (s - t) / s.numel())
    with pytest.raises(ValueError, match="regressor"):
        fitnet_loss(s, rand(n, 5, 3, 3))


#: (student H, teacher H): equal, teacher larger (pooled here), student larger (pooled by the method)
VID_SIZES = [(4, 4), (4, 8), (8, 4)]


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("hs,ht", VID_SIZES)
def test_vid_equals_the_negative_log_likelihood_with_its_gradient(n, hs, ht):
    h = min(hs, ht)
    fs, ft = rand(n, 3, hs, hs, seed=1), rand(n, 5, ht, ht, seed=2)
    mu = rand(n, 5, h, h, seed=3)
    log_scale = rand(5, seed=4)
    value, (g_mu, g_scale) = grads(lambda a, b: vid_loss(fs, ft, a, b), mu, log_scale)
    target = ft if ht == h else block_mean(ft, h)
    ref, (r_mu, r_scale) = grads(lambda a, b: ref_vid(a, target, b), mu, log_scale)
    assert_close(value, ref)
    assert_close(g_mu, r_mu)
    assert_close(g_scale, r_scale)


def test_vid_refuses_a_mean_not_at_the_pairs_smaller_size():
    fs, ft = rand(2, 3, 8, 8), rand(2, 5, 4, 4)
    with pytest.raises(ValueError, match="pool_to_smaller"):
        vid_loss(fs, ft, rand(2, 5, 8, 8), rand(5))
    with pytest.raises(ValueError, match="channels"):
        vid_loss(fs, ft, rand(2, 4, 4, 4), rand(5))


def test_vid_log_scale_init_gives_the_initial_variance():
    for var, eps in [(5.0, 1e-5), (0.5, 1e-3)]:
        x = vid_log_scale_init(var, eps)
        assert math.log(1 + math.exp(x)) + eps == pytest.approx(var, rel=1e-12)
    with pytest.raises(ValueError):
        vid_log_scale_init(1e-6, 1e-5)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("ht", [4, 8])
def test_ofd_equals_the_partial_l2_with_its_gradient(n, ht):
    s = rand(n, 6, 4, 4, seed=1)
    t = rand(n, 6, ht, ht, seed=2, shift=-0.3)
    margin = -rand(6, seed=3).abs() - 0.05
    value, (gs,) = grads(lambda a: ofd_loss(a, t, margin), s)
    target = t if ht == 4 else block_mean(t, 4)
    ref, (rs,) = grads(lambda a: ref_ofd(a, target, margin), s)
    assert_close(value, ref)
    assert_close(gs, rs)
    # every case of the definition occurs: t > 0, margin < t <= 0, t <= margin; s on both sides
    m = margin.view(1, -1, 1, 1)
    assert (target > 0).any() and ((target > m) & (target <= 0)).any() and (target <= m).any()
    # the margin may also come as [1, C, 1, 1]
    assert_close(ofd_loss(s, t, margin.view(1, -1, 1, 1)), ref)


def test_ofd_margin_is_the_mean_of_the_negative_part():
    gamma = torch.tensor([1.0, 0.5, -2.0, 0.1, 1.0], dtype=D64)
    beta = torch.tensor([0.0, 0.3, -1.0, 2.0, 5.0], dtype=D64)  # the last two: P(x < 0) <= 0.001
    margin = ofd_margin(gamma, beta)
    assert margin.dtype == D64 and not margin.requires_grad
    assert_close(margin, ref_margin(gamma, beta), 1e-12)
    assert_close(margin[3:], -3 * gamma[3:].abs(), 0)
    # Monte Carlo: the sample mean of the negative draws of N(beta, gamma^2)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        x = beta[c] + gamma[c].abs() * torch.randn(400_000, generator=g, dtype=D64)
        assert margin[c].item() == pytest.approx(x[x < 0].mean().item(), abs=5e-3)
    # float32 statistics give a float32 margin; a dead channel gives beta if negative, else 0
    dead = ofd_margin(torch.zeros(3), torch.tensor([-0.5, 0.0, 0.5]))
    assert dead.dtype == torch.float32 and dead.tolist() == [-0.5, 0.0, 0.0]


# --------------------------------------------------------------------------------------------
# CRD
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(1, 4), (2, 16), (5, 0)])
def test_crd_nce_equals_the_formula_with_its_gradient(n, k):
    x = rand(n, k + 1, seed=1).abs() * 1e-3 + 1e-5
    value, (g,) = grads(lambda a: crd_nce_loss(a, 100), x)
    ref, (r,) = grads(lambda a: ref_nce(a, 100), x)
    assert_close(value, ref)
    assert_close(g, r)


def test_crd_scores_normalizer_and_memory_update_equal_their_formulas():
    n, k, d, temperature, n_data = 3, 4, 6, 0.07, 50
    v = torch.nn.functional.normalize(rand(n, d, seed=1), dim=1)
    bank = torch.nn.functional.normalize(rand(n, k + 1, d, seed=2), dim=2)
    scores = crd_scores(v, bank, temperature)
    ref = torch.tensor(
        [
            [math.exp(torch.dot(bank[i, j], v[i]).item() / temperature) for j in range(k + 1)]
            for i in range(n)
        ],
        dtype=D64,
    )
    assert scores.shape == (n, k + 1)
    assert_close(scores, ref)
    z = crd_normalizer(scores, n_data)
    assert_close(z, ref.sum() / (n * (k + 1)) * n_data)
    rows, m = bank[:, 0], 0.5
    new = crd_momentum_update(rows, v, m)
    mixed = m * rows + (1 - m) * v
    assert_close(new, mixed / mixed.norm(dim=1, keepdim=True))
    # the gradient reaches the embedding through the scores (the bank is constant)
    v.requires_grad_(True)
    crd_nce_loss(crd_scores(v, bank, temperature) / z, n_data).backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# All of them: gradcheck in float64, bf16 inputs computed in float32, clear refusals
# --------------------------------------------------------------------------------------------


def small_cases():
    """(name, fn, inputs) with every input a float64 leaf; margins and log-scales kept fixed."""
    gs, gt = stage_maps(2, [(4, 2), (2, 2)], seed=7)
    margin = -rand(3, seed=8).abs() - 0.1
    return [
        ("at", lambda a, b, c, d: at_loss([a, b], [c, d]), [*gs, *gt]),
        ("nst", lambda a, b, c, d: nst_loss([a, b], [c, d]), [*gs, *gt]),
        ("sp", lambda a, b: sp_loss([a], [b]), [rand(3, 2, 2, 2, seed=1), rand(3, 4, seed=2)]),
        ("hcl", lambda a, b: hcl_loss([a], [b]), [rand(2, 2, 4, 4, seed=1), rand(2, 2, 4, 4, seed=2)]),
        ("rkd", rkd_loss, [rand(4, 3, seed=1), rand(4, 5, seed=2)]),
        ("pkt", pkt_loss, [rand(3, 4, seed=1), rand(3, 5, seed=2)]),
        ("fitnet", fitnet_loss, [rand(2, 2, 2, 2, seed=1), rand(2, 2, 2, 2, seed=2)]),
        (
            "vid",
            lambda mu, ls, ft: vid_loss(rand(2, 3, 2, 2), ft, mu, ls),
            [rand(2, 2, 2, 2, seed=3), rand(2, seed=4), rand(2, 2, 4, 4, seed=2)],
        ),
        (
            "ofd",
            lambda s, t: ofd_loss(s, t, margin),
            [rand(2, 3, 2, 2, seed=1), rand(2, 3, 4, 4, seed=2, shift=-0.2)],
        ),
        ("crd_nce", lambda x: crd_nce_loss(x, 20), [rand(2, 5, seed=1).abs() + 0.1]),
    ]


@pytest.mark.parametrize("case", small_cases(), ids=lambda c: c[0])
def test_gradcheck_in_float64(case):
    _, fn, inputs = case
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", small_cases(), ids=lambda c: c[0])
def test_bf16_inputs_are_computed_in_float32(case):
    _, fn, inputs = case
    low = [x.detach().to(torch.bfloat16).requires_grad_(True) for x in inputs]
    loss = fn(*low)
    assert loss.dtype == torch.float32 and loss.shape == ()
    expected = fn(*[x.detach().float() for x in low])
    assert_close(loss, expected, 1e-6)
    loss.backward()
    for x in low:
        assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_float32_stays_float32_and_matches_float64():
    s, t = rand(5, 6, seed=1), rand(5, 4, seed=2)
    low = rkd_loss(s.float(), t.float())
    assert low.dtype == torch.float32
    assert_close(low, rkd_loss(s, t), 1e-5)


def test_pool_to_smaller_takes_the_smaller_side_per_axis():
    a, b = rand(2, 3, 8, 4), rand(2, 5, 4, 8)
    pa, pb = pool_to_smaller(a, b)
    assert pa.shape == (2, 3, 4, 4) and pb.shape == (2, 5, 4, 4)
    assert_close(pa, a.reshape(2, 3, 4, 2, 4, 1).mean(dim=(3, 5)))
    same = rand(2, 3, 4, 4)
    assert pool_to_smaller(same, same)[0] is same


@pytest.mark.parametrize("loss", [at_loss, nst_loss, sp_loss, hcl_loss])
def test_lists_that_do_not_pair_are_refused(loss):
    a = rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="stages"):
        loss([a, a], [a])
    with pytest.raises(ValueError, match="non-empty list"):
        loss([], [])
    with pytest.raises(ValueError, match="non-empty list"):
        loss(a, a)
    with pytest.raises(ValueError, match="batch"):
        loss([a], [rand(3, 3, 4, 4)])


def test_hcl_refuses_pairs_of_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        hcl_loss([rand(2, 3, 4, 4)], [rand(2, 3, 2, 2)])
