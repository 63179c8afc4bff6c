"""Sparse (top-k) KD losses against references written from REFERENCE.md's definitions.

The references below work in float64 with plain probabilities (softmax, powers, sums, ``log`` of
probabilities), row by row, from the teacher's *full* distribution; they never call the
implementation or share its log-space helpers.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.losses import kd_loss_terms, topk_kd_loss, topk_kd_loss_terms

MODES = ("renorm", "tail")
DIRECTIONS = ("forward", "reverse")


def _case(seed: int, n: int = 6, c: int = 10, s_scale: float = 2.0, t_scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * s_scale
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * t_scale
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def _topk(t: torch.Tensor, k: int, t0: float):
    """What a capture stores: the teacher's full-softmax log-probs at ``t0`` on its top-k."""
    values, indices = torch.log_softmax(t / t0, -1).topk(k, dim=-1)
    return indices, values


def _ref_soft_rows(s, t, idx, tau, t0, kl, mode):
    """Per-row soft term from the definitions (float64, plain probabilities, differentiable in s)."""
    out = []
    for n in range(s.shape[0]):
        sel = idx[n]
        p0 = torch.softmax(t[n] / t0, -1)  # the teacher's full distribution at the capture temperature
        q = torch.softmax(s[n] / tau, -1)  # the student's full distribution at tau
        w = p0[sel] ** (t0 / tau)  # re-tempered teacher weights on S
        if mode == "renorm":
            pt = w / w.sum()
            if kl == "forward":
                out.append((pt * (pt.log() - q[sel].log())).sum())
            else:
                qs = q[sel] / q[sel].sum()
                out.append((qs * (qs.log() - pt.log())).sum())
        else:
            rest = torch.ones_like(p0, dtype=torch.bool)
            rest[sel] = False
            bt = torch.cat([w, (p0[rest].sum() ** (t0 / tau)).reshape(1)])  # the teacher's tail mass
            bt = bt / bt.sum()
            bs = torch.cat([q[sel], q[rest].sum().reshape(1)])
            a, b = (bt, bs) if kl == "forward" else (bs, bt)
            out.append((a * (a.log() - b.log())).sum())
    return torch.stack(out)


def _ref_loss(s, t, idx, y, alpha, tau, t0, kl, mode, tau_squared=True):
    ce = torch.stack([-torch.log(torch.softmax(s[n], -1)[y[n]]) for n in range(s.shape[0])]).mean()
    soft = _ref_soft_rows(s, t, idx, tau, t0, kl, mode).mean()
    w = tau**2 if tau_squared else 1.0
    return alpha * ce + (1 - alpha) * w * soft


def _value_and_grad(fn, s):
    x = s.detach().clone().requires_grad_()
    out = fn(x)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


# ---------------------------------------------------------------------------------------------
# k = C: both modes are the dense KD loss (re-tempering is exact on the full support)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", DIRECTIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tau, t0, tau_squared", [(4.0, 4.0, True), (4.0, 1.0, True), (0.5, 2.0, False)])
def test_k_equal_c_is_kd_loss_value_and_gradient(kl, mode, tau, t0, tau_squared):
    s, t, y = _case(0)
    lp_full = torch.log_softmax(t / t0, -1)
    perm = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(n)) for n in range(6)])
    lp = lp_full.gather(-1, perm)  # all C classes, in an arbitrary order
    kw = dict(alpha=0.3, tau=tau, kl=kl, tau_squared=tau_squared)
    got = topk_kd_loss_terms(s, perm, lp, y, mode=mode, capture_tau=t0, **kw)
    want = kd_loss_terms(s, t, y, **kw)
    for key in ("loss", "ce", "kl"):
        assert torch.allclose(got[key], want[key], rtol=1e-12, atol=1e-12), key
    _, g_got = _value_and_grad(lambda x: topk_kd_loss(x, perm, lp, y, mode=mode, capture_tau=t0, **kw), s)
    _, g_want = _value_and_grad(lambda x: kd_loss_terms(x, t, y, **kw)["loss"], s)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_k_equal_c_float32_matches_kd_loss(mode):
    s, t, y = _case(1, n=8, c=12)
    idx, lp = _topk(t.float(), 12, 1.0)
    for kl in DIRECTIONS:
        a = topk_kd_loss(s.float(), idx, lp, y, tau=2.0, kl=kl, mode=mode, capture_tau=1.0)
        b = kd_loss_terms(s.float(), t.float(), y, tau=2.0, kl=kl)["loss"]
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# k < C: the definitions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", DIRECTIONS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "k, tau, t0", [(1, 2.0, 1.0), (3, 1.0, 1.0), (5, 4.0, 2.0), (8, 2.0, 0.8), (9, 0.7, 3.0)]
)
def test_matches_the_definitions_below_c(kl, mode, k, tau, t0):
    s, t, y = _case(10 + k)
    idx, lp = _topk(t, k, t0)
    kw = dict(tau=tau, kl=kl, mode=mode, capture_tau=t0)
    got = topk_kd_loss_terms(s, idx, lp, y, alpha=0.0, tau_squared=False, **kw)
    want = _ref_soft_rows(s, t, idx, tau, t0, kl, mode).mean()
    assert torch.allclose(got["kl"], want, rtol=1e-10, atol=1e-12)
    # the weighted loss and its gradient
    v, g = _value_and_grad(lambda x: topk_kd_loss(x, idx, lp, y, alpha=0.3, **kw), s)
    v_ref, g_ref = _value_and_grad(lambda x: _ref_loss(x, t, idx, y, 0.3, tau, t0, kl, mode), s)
    assert torch.allclose(v, v_ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g, g_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k, tau, t0", [(1, 1.0, 1.0), (3, 2.0, 1.0), (6, 0.5, 2.0)])
def test_renorm_forward_is_kl_of_the_renormalised_student_minus_log_mass(k, tau, t0):
    s, t, y = _case(20 + k, n=9, c=11)
    idx, lp = _topk(t, k, t0)
    got = topk_kd_loss_terms(s, idx, lp, y, alpha=0.0, tau=tau, capture_tau=t0, tau_squared=False)["kl"]
    rows = []
    for n in range(s.shape[0]):
        w = torch.softmax(t[n] / t0, -1)[idx[n]] ** (t0 / tau)
        pt = w / w.sum()
        q_s = torch.softmax(s[n] / tau, -1)[idx[n]]
        mass = q_s.sum()
        rows.append((pt * (pt / (q_s / mass)).log()).sum() - mass.log())
    assert torch.allclose(got, torch.stack(rows).mean(), rtol=1e-10, atol=1e-12)


def test_renorm_reverse_ignores_the_student_mass_outside_s_and_forward_does_not():
    s, t, y = _case(3)
    idx, lp = _topk(t, 4, 1.0)
    outside = torch.ones_like(s).scatter(-1, idx, 0.0)
    s2 = s + 5.0 * outside  # moves student mass out of S, same shape inside S
    kw = dict(alpha=0.0, tau=2.0, mode="renorm")
    rev = [topk_kd_loss(x, idx, lp, y, kl="reverse", **kw) for x in (s, s2)]
    fwd = [topk_kd_loss(x, idx, lp, y, kl="forward", **kw) for x in (s, s2)]
    assert torch.allclose(rev[0], rev[1], rtol=1e-12)
    assert fwd[1] > fwd[0] + 1.0


@pytest.mark.parametrize("kl", DIRECTIONS)
def test_tail_is_at_most_the_dense_kl(kl):
    """A coarser partition cannot increase a KL (data processing), teacher at the capture temperature."""
    for seed in range(5):
        s, t, y = _case(30 + seed)
        for k in (1, 4, 9):
            idx, lp = _topk(t, k, 2.0)
            kw = dict(alpha=0.0, tau=2.0, kl=kl, tau_squared=False)
            tail = topk_kd_loss(s, idx, lp, y, mode="tail", capture_tau=2.0, **kw)
            dense = kd_loss_terms(s, t, y, **kw)["loss"]
            assert 0 <= tail <= dense + 1e-12


def test_non_negative_over_many_random_cases():
    g = torch.Generator().manual_seed(7)
    for _ in range(40):
        c = int(torch.randint(2, 30, (1,), generator=g))
        k = int(torch.randint(1, c + 1, (1,), generator=g))
        scale_s, scale_t = (float(10 ** (3 * torch.rand((), generator=g) - 1.5)) for _ in range(2))
        tau, t0 = (float(10 ** (torch.rand((), generator=g) - 0.5)) for _ in range(2))
        s = torch.randn(6, c, generator=g) * scale_s
        t = torch.randn(6, c, generator=g) * scale_t
        idx, lp = _topk(t, k, t0)
        for mode in MODES:
            for kl in DIRECTIONS:
                for n in range(6):  # per position, not only on average
                    v = topk_kd_loss_terms(s[n : n + 1], idx[n : n + 1], lp[n : n + 1], None, alpha=0.0,
                                           tau=tau, kl=kl, mode=mode, capture_tau=t0)["kl"]
                    assert torch.isfinite(v) and v >= -1e-6, (mode, kl, c, k, tau, t0)


@pytest.mark.parametrize("kl", DIRECTIONS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, kl):
    s, t, y = _case(4, n=4, c=6)
    y[2] = -100
    idx, lp = _topk(t, 3, 1.0)

    def fn(x):
        return topk_kd_loss(x, idx, lp, y, alpha=0.4, tau=2.0, kl=kl, mode=mode, capture_tau=1.5)

    assert torch.autograd.gradcheck(fn, (s.clone().requires_grad_(),))


# ---------------------------------------------------------------------------------------------
# masks, tails of zero mass, dtypes, bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kl", DIRECTIONS)
@pytest.mark.parametrize("mode", MODES)
def test_masked_positions_cannot_leak_and_the_mean_is_over_kept_positions(mode, kl, dtype):
    g = torch.Generator().manual_seed(5)
    b, t_len, c, k = 2, 5, 10, 4
    s = torch.randn(b, t_len, c, generator=g, dtype=dtype)
    t = torch.randn(b, t_len, c, generator=g, dtype=dtype) * 2
    y = torch.randint(0, c, (b, t_len), generator=g)
    y[0, 3:] = -100
    y[1, 0] = -100
    masked = y == -100
    idx, lp = _topk(t, k, 1.0)
    s_bad, idx_bad, lp_bad = s.clone(), idx.clone(), lp.clone()
    s_bad[masked] = float("nan")
    lp_bad[masked] = float("nan")
    idx_bad[masked] = torch.tensor([-7, c + 5, 0, 3])  # out-of-range garbage too
    kw = dict(alpha=0.5, tau=2.0, kl=kl, mode=mode, capture_tau=1.0)
    v, gr = _value_and_grad(lambda x: topk_kd_loss(x, idx, lp, y, **kw), s)
    v_bad, g_bad = _value_and_grad(lambda x: topk_kd_loss(x, idx_bad, lp_bad, y, **kw), s_bad)
    assert torch.isfinite(v_bad) and torch.isfinite(g_bad).all()
    assert torch.equal(v, v_bad) and torch.equal(gr, g_bad)
    assert (g_bad[masked] == 0).all()
    # mean over the kept positions: the same as the kept rows alone, flattened
    keep = ~masked
    v_flat, g_flat = _value_and_grad(lambda x: topk_kd_loss(x, idx[keep], lp[keep], y[keep], **kw), s[keep])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    assert torch.allclose(v, v_flat, **tol)
    assert torch.allclose(gr[keep], g_flat, **tol)


def test_no_kept_position_is_an_exact_zero_connected_to_the_graph():
    s, t, _ = _case(6)
    idx, lp = _topk(t, 3, 1.0)
    y = torch.full((6,), -100)
    for mode in MODES:
        v, g = _value_and_grad(lambda x, mode=mode: topk_kd_loss(x, idx, lp, y, mode=mode), s)
        assert v == 0 and torch.equal(g, torch.zeros_like(s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tail_with_all_teacher_mass_in_the_top_k_stays_finite(dtype):
    g = torch.Generator().manual_seed(8)
    n, c, k = 5, 10, 3
    s = torch.randn(n, c, generator=g, dtype=dtype)
    t = torch.full((n, c), -1e4, dtype=dtype)
    t[:, :k] = torch.randn(n, k, generator=g, dtype=dtype)
    idx, lp = _topk(t, k, 1.0)
    for t0, tau in ((1.0, 1.0), (1.0, 4.0), (2.0, 0.5)):
        kw = dict(alpha=0.0, tau=tau, capture_tau=t0)
        renorm = topk_kd_loss(s, idx, lp, None, mode="renorm", **kw)
        for kl in DIRECTIONS:
            def fn(x, kl=kl, kw=kw):
                return topk_kd_loss(x, idx, lp, None, kl=kl, mode="tail", **kw)

            v, gr = _value_and_grad(fn, s)
            assert torch.isfinite(v) and torch.isfinite(gr).all() and v >= 0
        # forward: a zero tail bucket contributes exactly 0, leaving the renorm value
        assert torch.allclose(topk_kd_loss(s, idx, lp, None, mode="tail", **kw), renorm, rtol=1e-6)
    # stored log-probs whose sum rounds above 1
    for kl in DIRECTIONS:
        v, gr = _value_and_grad(
            lambda x, kl=kl: topk_kd_loss(x, idx, lp + 1e-6, None, alpha=0.0, kl=kl, mode="tail"), s
        )
        assert torch.isfinite(v) and torch.isfinite(gr).all()
    # reverse: one gradient step moves the student's mass into S (the floored tail still penalises it)
    v, gr = _value_and_grad(lambda x: topk_kd_loss(x, idx, lp, None, alpha=0.0, kl="reverse", mode="tail"), s)

    def outside_mass(x):
        return 1 - torch.softmax(x, -1)[:, :k].sum(-1)

    assert (outside_mass(s - 0.1 * gr) < outside_mass(s)).all()


def test_tail_gradcheck_with_zero_teacher_tail():
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64)
    t = torch.full((3, 6), -1e4, dtype=torch.float64)
    t[:, :2] = torch.randn(3, 2, generator=g, dtype=torch.float64)
    idx, lp = _topk(t, 2, 1.0)
    for kl in DIRECTIONS:
        assert torch.autograd.gradcheck(
            lambda x, kl=kl: topk_kd_loss(x, idx, lp, None, alpha=0.0, kl=kl, mode="tail", tau=2.0),
            (s.clone().requires_grad_(),),
        )


def test_dtypes():
    s, t, y = _case(11)
    idx, lp = _topk(t, 4, 1.0)
    ref = topk_kd_loss(s.float(), idx, lp.float(), y)
    for dt in (torch.float16, torch.bfloat16):
        out = topk_kd_loss(s.to(dt), idx, lp.to(dt), y)
        assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=0.05)
    assert topk_kd_loss(s, idx, lp.float(), y).dtype == torch.float64
    assert topk_kd_loss(s.float(), idx.int(), lp, y).dtype == torch.float32
    assert torch.equal(topk_kd_loss(s, idx, lp, y), topk_kd_loss_terms(s, idx, lp, y)["loss"])


def test_topk_logprobs_are_treated_as_data():
    s, t, y = _case(12)
    idx, lp = _topk(t, 4, 1.0)
    lp = lp.clone().requires_grad_()
    out = topk_kd_loss(s.clone().requires_grad_(), idx, lp, y)
    out.backward()
    assert lp.grad is None


def test_bad_input_names_the_argument():
    s, t, y = _case(1)
    idx, lp = _topk(t, 3, 1.0)
    wide = torch.arange(11).expand(6, 11)
    cases = [
        ("topk_indices", dict(topk_indices=idx.double())),  # float indices
        ("topk_indices", dict(topk_indices=idx > 0)),  # bool indices
        ("topk_indices", dict(topk_indices=wide, topk_logprobs=s.new_zeros(6, 11))),  # k = 11 > C = 10
        ("topk_indices", dict(topk_indices=idx[:4], topk_logprobs=lp[:4])),  # leading dims
        ("topk_indices", dict(topk_indices=idx[:, :0], topk_logprobs=lp[:, :0])),  # k = 0
        ("topk_indices", dict(topk_indices=idx.clone().fill_(10))),  # out of [0, C)
        ("topk_logprobs", dict(topk_logprobs=lp[:, :2])),
        ("topk_logprobs", dict(topk_logprobs=lp.long())),
        ("student_logits", dict(student_logits=s.long())),
        ("labels", dict(labels=y.double())),
        ("labels", dict(labels=y[:3])),
        ("labels", dict(labels=None)),  # alpha > 0 needs labels
        ("mode", dict(mode="zero")),
        ("kl", dict(kl="jsd")),
        ("capture_tau", dict(capture_tau=0.0)),
    ]  # alpha, tau, tau_squared: the KD method's, checked once when it is built (test_method_losses.py)
    for name, override in cases:
        args = dict(student_logits=s, topk_indices=idx, topk_logprobs=lp, labels=y)
        kwargs = {}
        for key, value in override.items():
            (args if key in args else kwargs)[key] = value
        with pytest.raises(ValueError, match=f"^{name}"):
            topk_kd_loss_terms(*args.values(), **kwargs)
