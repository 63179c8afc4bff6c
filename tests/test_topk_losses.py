"""Sparse (top-k) KD losses against references written from REFERENCE.md's definitions (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import kd_loss_terms, topk_kd_loss_terms


def _case(seed: int, n: int = 7, c: int = 10):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=torch.float64) * 2, torch.randn(n, c, generator=g, dtype=torch.float64) * 3,
            torch.randint(0, c, (n,), generator=g))


def _ref_soft(s, t, k, tau, t0, kl, mode):
    """Per-row loop over plain probabilities: the definitions, no log-space tricks."""
    out = []
    for si, ti in zip(s, t):
        p0 = torch.softmax(ti / t0, -1)
        top = torch.argsort(p0, descending=True)[:k]
        q = torch.softmax(si / tau, -1)
        pw = p0[top] ** (t0 / tau)
        if mode == "renorm":
            pt = pw / pw.sum()
            if kl == "forward":
                out.append(sum(pt[j] * (math.log(pt[j]) - math.log(q[top[j]])) for j in range(k)))
            else:
                qs = q[top] / q[top].sum()
                out.append(sum(qs[j] * (math.log(qs[j]) - math.log(pt[j])) for j in range(k)))
        else:
            tail_t = (1 - p0[top].sum()) ** (t0 / tau)
            bt = torch.cat([pw, tail_t.reshape(1)])
            bt = bt / bt.sum()
            bs = torch.cat([q[top], (1 - q[top].sum()).reshape(1)])
            a, b = (bt, bs) if kl == "forward" else (bs, bt)
            out.append(sum(a[j] * (math.log(a[j]) - math.log(b[j])) for j in range(k + 1)))
    return torch.stack([torch.as_tensor(o) for o in out]).mean()


def _topk(t, k, t0):
    lp = torch.log_softmax(t / t0, -1)
    v, i = lp.topk(k, dim=-1)
    return i, v


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("mode", ["renorm", "tail"])
@pytest.mark.parametrize("t0", [1.0, 4.0])
def test_k_equal_c_is_kd_loss_value_and_gradient(kl, mode, t0):
    s, t, y = _case(0)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    i, v = _topk(t, 10, t0)
    a = topk_kd_loss_terms(s1, i, v, y, alpha=0.3, tau=4.0, kl=kl, mode=mode, capture_tau=t0)["loss"]
    b = kd_loss_terms(s2, t, y, alpha=0.3, tau=4.0, kl=kl)["loss"]
    a.backward()
    b.backward()
    assert torch.allclose(a, b, atol=1e-12) and torch.allclose(s1.grad, s2.grad, atol=1e-12)


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("mode", ["renorm", "tail"])
@pytest.mark.parametrize("k, tau, t0", [(1, 2.0, 1.0), (3, 1.0, 1.0), (5, 4.0, 2.0), (8, 2.0, 0.5)])
def test_matches_the_definitions_below_c(kl, mode, k, tau, t0):
    if mode == "renorm" and kl == "reverse" and k == 1:
        pytest.skip("one class: both renormalised distributions are a point mass (value 0; covered below)")
    s, t, y = _case(k)
    i, v = _topk(t, k, t0)
    got = topk_kd_loss_terms(s, i, v, y, alpha=0.0, tau=tau, kl=kl, mode=mode, capture_tau=t0, tau_squared=False)
    assert torch.allclose(got["kl"], _ref_soft(s, t, k, tau, t0, kl, mode), atol=1e-10)


def test_renorm_identity_and_non_negativity():
    for seed in range(20):
        s, t, y = _case(seed)
        for k in (1, 3, 6):
            i, v = _topk(t, k, 1.0)
            fwd = topk_kd_loss_terms(s, i, v, y, alpha=0.0, tau=1.0, tau_squared=False)["kl"]
            q = torch.softmax(s, -1).gather(-1, i)
            pt = torch.softmax(v, -1)
            qs = q / q.sum(-1, keepdim=True)
            ident = ((pt * (pt.log() - qs.log())).sum(-1) - q.sum(-1).log()).mean()
            assert torch.allclose(fwd, ident, atol=1e-12)
            for kl in ("forward", "reverse"):
                for mode in ("renorm", "tail"):
                    val = topk_kd_loss_terms(s.float(), i, v.float(), y, alpha=0.0, tau=2.0, kl=kl, mode=mode)["kl"]
                    assert val >= -1e-6


@pytest.mark.parametrize("mode", ["renorm", "tail"])
def test_gradcheck(mode):
    s, t, y = _case(3, n=4, c=6)
    i, v = _topk(t, 3, 1.0)
    s = s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: topk_kd_loss_terms(x, i, v, y, alpha=0.4, tau=2.0, mode=mode)["loss"],
                                    (s,))


@pytest.mark.parametrize("mode", ["renorm", "tail"])
def test_masked_positions_cannot_leak_and_the_mean_is_over_kept_tokens(mode):
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 5, 10, generator=g)
    t = torch.randn(2, 5, 10, generator=g)
    y = torch.randint(0, 10, (2, 5), generator=g)
    y[0, 3:] = -100
    y[1, 0] = -100
    i, v = _topk(t, 4, 1.0)
    s_bad, v_bad = s.clone(), v.clone()
    s_bad[y == -100] = float("nan")
    v_bad[y == -100] = float("nan")
    a = s.clone().requires_grad_()
    b = s_bad.clone().requires_grad_()
    la = topk_kd_loss_terms(a, i, v, y, alpha=0.5, tau=2.0, mode=mode)["loss"]
    lb = topk_kd_loss_terms(b, i, v_bad, y, alpha=0.5, tau=2.0, mode=mode)["loss"]
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb) and torch.isfinite(b.grad).all() and (b.grad[y == -100] == 0).all()
    keep = y != -100
    flat = topk_kd_loss_terms(s[keep], i[keep], v[keep], y[keep], alpha=0.5, tau=2.0, mode=mode)["loss"]
    assert torch.allclose(la, flat, atol=1e-6)


def test_tail_with_all_teacher_mass_in_the_top_k_stays_finite():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.full((4, 10), -1e4)
    t[:, :3] = torch.randn(4, 3)
    i, v = _topk(t, 3, 1.0)
    for kl in ("forward", "reverse"):
        out = topk_kd_loss_terms(s, i, v, None, alpha=0.0, tau=2.0, kl=kl, mode="tail")["loss"]
        (g,) = torch.autograd.grad(out, s)
        assert torch.isfinite(out) and torch.isfinite(g).all()


def test_bad_input_names_the_argument():
    s, t, y = _case(1)
    i, v = _topk(t, 3, 1.0)
    with pytest.raises(ValueError, match="^topk_indices"):
        topk_kd_loss_terms(s, i.double(), v, y)
    with pytest.raises(ValueError, match="^topk_indices"):
        topk_kd_loss_terms(s, i[:, :2], v, y)
    with pytest.raises(ValueError, match="^mode"):
        topk_kd_loss_terms(s, i, v, y, mode="zero")
