"""Tests for kdbench.losses against closed forms and an independent float64 reference."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import KL_DIRECTIONS, KL_REDUCTIONS, kd_loss, kd_loss_terms, kl_divergence

# --------------------------------------------------------------------------------------------
# Independent float64 reference, written from the formulas (log-sum-exp by hand).
# --------------------------------------------------------------------------------------------


def ref_log_softmax(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    m = x.max(dim=-1, keepdim=True).values
    z = x - m
    return z - torch.log(torch.exp(z).sum(dim=-1, keepdim=True))


def ref_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_c p (log p - log q), with 0 where p == 0."""
    p = torch.exp(log_p)
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)


def ref_kd(
    s,
    t,
    y,
    *,
    alpha=0.5,
    tau=2.0,
    kl="forward",
    tau_squared=True,
    ignore_index=-100,
    kl_reduction="sum",
    student_tau_one=False,
):
    """Mean over kept positions of alpha*CE + (1-alpha)*w*KL, all in float64."""
    c = s.shape[-1]
    s = s.detach().double().reshape(-1, c)
    t = t.detach().double().reshape(-1, c)
    y = y.reshape(-1)
    keep = y != ignore_index
    s, t, y = s[keep], t[keep], y[keep]
    if s.shape[0] == 0:
        return torch.zeros((), dtype=torch.float64)
    ce = -ref_log_softmax(s).gather(1, y.long().unsqueeze(1)).squeeze(1)
    log_ps = ref_log_softmax(s if student_tau_one else s / tau)
    log_pt = ref_log_softmax(t / tau)
    k = ref_kl(log_pt, log_ps) if kl == "forward" else ref_kl(log_ps, log_pt)
    if kl_reduction == "mean":
        k = k / c
    w = tau**2 if tau_squared else 1.0
    return (alpha * ce + (1 - alpha) * w * k).mean()


def rand_case(shape, gen, scale=2.0, mask_frac=0.0, dtype=torch.float32):
    c = shape[-1]
    s = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, c, shape[:-1], generator=gen)
    if mask_frac > 0:
        drop = torch.rand(shape[:-1], generator=gen) < mask_frac
        y = torch.where(drop, torch.full_like(y, -100), y)
    return s, t, y


# --------------------------------------------------------------------------------------------
# 1. Seed example
# --------------------------------------------------------------------------------------------


def test_seed_example_by_hand_and_reference():
    s = torch.tensor([[2.0, 0.5, -1.0]])
    t = torch.tensor([[3.0, 1.0, -0.5]])
    y = torch.tensor([0])
    # By hand with math: CE = -log softmax(s)[0]; KL(p_t^3 || p_s^3); loss = .5 CE + .5 * 9 KL.
    ce = -(2.0 - math.log(math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
    ps = [math.exp(v / 3) for v in (2.0, 0.5, -1.0)]
    pt = [math.exp(v / 3) for v in (3.0, 1.0, -0.5)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    klv = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    by_hand = 0.5 * ce + 0.5 * 9 * klv
    assert by_hand == pytest.approx(0.136202, abs=1e-6)
    assert ref_kd(s, t, y, alpha=0.5, tau=3.0).item() == pytest.approx(by_hand, abs=1e-12)
    out = kd_loss(s, t, y, alpha=0.5, tau=3.0)
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == pytest.approx(0.136202, abs=1e-6)
    assert kd_loss(s.double(), t.double(), y, alpha=0.5, tau=3.0).item() == pytest.approx(by_hand, abs=1e-12)


# --------------------------------------------------------------------------------------------
# 2. Random cases vs the float64 reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2), (8, 10), (4, 3, 5), (2, 3, 2, 6)])
@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_random_cases_match_reference(shape, kl):
    # A seed fixed per case (``hash()`` of a str changes with PYTHONHASHSEED between processes).
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, kl)).encode()))
    for alpha in (0.0, 0.3, 1.0):
        for tau in (0.5, 1.0, 4.0):
            for tau_squared in (True, False):
                s, t, y = rand_case(shape, gen, mask_frac=0.2)
                kw = dict(alpha=alpha, tau=tau, kl=kl, tau_squared=tau_squared)
                got = kd_loss(s, t, y, **kw)
                want = ref_kd(s, t, y, **kw)
                assert got.dtype == torch.float32
                # float32 log_softmax rounds each log-probability to ~1e-7 absolute; for nearly
                # equal distributions the KL (~1e-6) keeps that absolute error, amplified by its
                # weight (1-alpha)*tau^2. The tolerance scales with the loss's total weight.
                w = tau**2 if tau_squared else 1.0
                atol = 1e-6 * (alpha + (1 - alpha) * w)
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)


def test_kl_divergence_matches_reference_and_shape():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(3, 4, 7, generator=gen)
    q = torch.randn(3, 4, 7, generator=gen)
    for tau in (0.3, 1.0, 5.0):
        got = kl_divergence(p, q, tau)
        assert got.shape == (3, 4)
        want = ref_kl(ref_log_softmax(p.double() / tau), ref_log_softmax(q.double() / tau))
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 3. Analytic gradient (forward KL)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,tau", [(0.5, 3.0), (0.0, 0.7), (1.0, 2.0), (0.2, 10.0)])
def test_forward_gradient_closed_form(alpha, tau):
    gen = torch.Generator().manual_seed(3)
    n, c = 6, 5
    s = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, c, generator=gen, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=gen)
    kd_loss(s, t, y, alpha=alpha, tau=tau, kl="forward").backward()
    onehot = F.one_hot(y, c).double()
    sd = s.detach()
    analytic = alpha * (torch.softmax(sd, -1) - onehot) + (1 - alpha) * tau * (
        torch.softmax(sd / tau, -1) - torch.softmax(t / tau, -1)
    )
    torch.testing.assert_close(s.grad, analytic / n, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
@pytest.mark.parametrize("student_tau_one", [False, True])
def test_gradcheck(kl, student_tau_one):
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, -100, 3])

    def f(s_, t_):
        return kd_loss(
            s_, t_, y, alpha=0.3, tau=1.7, kl=kl, student_tau_one=student_tau_one, detach_teacher=False
        )

    assert torch.autograd.gradcheck(f, (s, t))


# --------------------------------------------------------------------------------------------
# 4. Invariances and KL properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_shift_invariance(kl):
    gen = torch.Generator().manual_seed(5)
    s, t, y = rand_case((2, 4, 6), gen, dtype=torch.float64)
    base = kd_loss(s, t, y, alpha=0.4, tau=2.5, kl=kl)
    shift_s = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64) * 10
    shift_t = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64) * 10
    torch.testing.assert_close(kd_loss(s + shift_s, t, y, alpha=0.4, tau=2.5, kl=kl), base)
    torch.testing.assert_close(kd_loss(s, t + shift_t, y, alpha=0.4, tau=2.5, kl=kl), base)


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_kl_of_identical_is_zero(kl):
    gen = torch.Generator().manual_seed(6)
    s, _, y = rand_case((5, 9), gen, scale=5.0)
    out = kd_loss(s, s.clone(), y, alpha=0.0, tau=1.3, kl=kl)
    assert out.item() == 0.0
    assert torch.all(kl_divergence(s, s, 0.2) == 0)


def test_kl_nonnegative_and_asymmetric():
    gen = torch.Generator().manual_seed(7)
    p = torch.randn(50, 8, generator=gen) * 3
    q = torch.randn(50, 8, generator=gen) * 3
    for tau in (0.1, 1.0, 10.0):
        assert torch.all(kl_divergence(p, q, tau) >= 0)
    y = torch.zeros(50, dtype=torch.long)
    fwd = kd_loss(p, q, y, alpha=0.0, tau=1.0, kl="forward")
    rev = kd_loss(p, q, y, alpha=0.0, tau=1.0, kl="reverse")
    assert abs(fwd.item() - rev.item()) > 1e-3
    # forward: KL(teacher || student); reverse: KL(student || teacher).
    torch.testing.assert_close(fwd, kl_divergence(q, p).mean())
    torch.testing.assert_close(rev, kl_divergence(p, q).mean())
    # reverse with (student, teacher) == forward with roles swapped.
    torch.testing.assert_close(rev, kd_loss(q, p, y, alpha=0.0, tau=1.0, kl="forward"))


def test_kl_nearly_equal_peaked_is_nonnegative_and_accurate():
    # float32 log_softmax rounds log(1 + 1e-10) to 0, so the raw element-wise sum can dip to -1e-10.
    gen = torch.Generator().manual_seed(20)
    p = torch.randn(200, 8, generator=gen) * 3
    q = p + 1e-3 * torch.randn(200, 8, generator=gen)
    q.requires_grad_(True)
    for tau in (0.05, 0.1, 1.0):
        k = kl_divergence(p, q, tau)
        assert torch.all(k >= 0)
        want = ref_kl(ref_log_softmax(p.double() / tau), ref_log_softmax(q.detach().double() / tau))
        torch.testing.assert_close(k.double(), want, rtol=1e-3, atol=1e-6)
    # The clamp is straight-through: the gradient is the exact float64 one.
    kl_divergence(p, q, 0.1).sum().backward()
    q64 = q.detach().double().requires_grad_(True)
    ref_kl(ref_log_softmax(p.double() / 0.1), ref_log_softmax(q64 / 0.1)).sum().backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------
# 5. Masked sequences
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_masked_sequence_equals_flat_kept(kl):
    gen = torch.Generator().manual_seed(8)
    b, t_len, c = 3, 5, 7
    s, t, y = rand_case((b, t_len, c), gen)
    y[0, 1] = y[1, :3] = y[2, 4] = -100
    keep = y != -100
    n_kept = int(keep.sum())
    # Garbage (NaN / huge) in masked positions must not matter.
    s_garbage = s.clone()
    t_garbage = t.clone()
    s_garbage[~keep] = float("nan")
    t_garbage[~keep] = float("nan")
    t_garbage[0, 1, 0] = 1e30
    s_garbage.requires_grad_(True)
    kw = dict(alpha=0.3, tau=2.0, kl=kl)
    seq = kd_loss(s_garbage, t_garbage, y, **kw)
    flat = kd_loss(s[keep], t[keep], y[keep], **kw)
    assert torch.isfinite(seq)
    torch.testing.assert_close(seq, flat)
    # Mean over kept tokens (not over B): compare with per-position sum / n_kept.
    per_pos = torch.stack(
        [ref_kd(s[keep][i : i + 1], t[keep][i : i + 1], y[keep][i : i + 1], **kw) for i in range(n_kept)]
    )
    torch.testing.assert_close(seq.double(), per_pos.sum() / n_kept, rtol=1e-5, atol=1e-7)
    assert not torch.isclose(seq.double(), per_pos.sum() / b)
    seq.backward()
    assert torch.isfinite(s_garbage.grad).all()
    assert torch.all(s_garbage.grad[~keep] == 0)
    assert torch.any(s_garbage.grad[keep] != 0)


def test_custom_ignore_index():
    gen = torch.Generator().manual_seed(9)
    s, t, y = rand_case((6, 4), gen)
    y[2] = 7
    keep = y != 7
    torch.testing.assert_close(kd_loss(s, t, y, ignore_index=7), kd_loss(s[keep], t[keep], y[keep]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_all_masked_is_zero_with_grad(alpha):
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4)
    y = torch.full((2, 3), -100)
    terms = kd_loss_terms(s, t, y, alpha=alpha, tau=2.0)
    out = terms["loss"]
    assert out.item() == 0.0 and not torch.isnan(out)
    assert terms["ce"].item() == 0.0 and terms["kl"].item() == 0.0
    assert out.grad_fn is not None and out.requires_grad
    out.backward()
    assert s.grad is not None and torch.all(s.grad == 0)


# --------------------------------------------------------------------------------------------
# 6. Teacher gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_no_grad_to_teacher_unless_asked(kl):
    gen = torch.Generator().manual_seed(10)
    s, t, y = rand_case((4, 5), gen)
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y, alpha=0.5, tau=2.0, kl=kl).backward()
    assert t.grad is None or torch.all(t.grad == 0)
    assert torch.any(s.grad != 0)
    s.grad = None
    t.grad = None
    kd_loss(s, t, y, alpha=0.5, tau=2.0, kl=kl, detach_teacher=False).backward()
    assert t.grad is not None and torch.any(t.grad != 0)


# --------------------------------------------------------------------------------------------
# 7. Stability and dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_huge_logits_stable(tau, kl):
    gen = torch.Generator().manual_seed(11)
    s, t, y = rand_case((16, 10), gen, scale=1e4)
    s.requires_grad_(True)
    kw = dict(alpha=0.3, tau=tau, kl=kl)
    out = kd_loss(s, t, y, **kw)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()
    want = ref_kd(s, t, y, **kw)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    # Gradient vs float64 autograd of the reference.
    s64 = s.detach().double().requires_grad_(True)
    ref_kd_grad = torch.autograd.grad(ref_kd_autograd(s64, t.double(), y, **kw), s64)[0]
    scale = ref_kd_grad.abs().max().item()
    torch.testing.assert_close(s.grad.double(), ref_kd_grad, rtol=1e-4, atol=1e-5 * max(scale, 1e-3))


def ref_kd_autograd(s, t, y, *, alpha, tau, kl):
    """Differentiable variant of the reference (no mask, forward/reverse only)."""
    ce = -ref_log_softmax(s).gather(1, y.unsqueeze(1)).squeeze(1)
    log_ps = ref_log_softmax(s / tau)
    log_pt = ref_log_softmax(t / tau)
    k = ref_kl(log_pt, log_ps) if kl == "forward" else ref_kl(log_ps, log_pt)
    return (alpha * ce + (1 - alpha) * tau**2 * k).mean()


def test_minus_inf_logits_are_finite():
    s = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    t = torch.tensor([[3.0, float("-inf"), 0.0]])
    y = torch.tensor([0])
    out = kd_loss(s, t, y, alpha=0.5, tau=2.0, kl="forward")
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(out.double(), ref_kd(s, t, y, alpha=0.5, tau=2.0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32(dtype):
    gen = torch.Generator().manual_seed(12)
    s, t, y = rand_case((4, 3, 8), gen, dtype=dtype, mask_frac=0.2)
    out = kd_loss(s, t, y, alpha=0.5, tau=2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_kd(s, t, y, alpha=0.5, tau=2.0), rtol=1e-5, atol=1e-6)
    assert kl_divergence(s, t).dtype == torch.float32


def test_float64_stays_float64():
    gen = torch.Generator().manual_seed(13)
    s, t, y = rand_case((5, 4), gen, dtype=torch.float64)
    out = kd_loss(s, t, y)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_kd(s, t, y), rtol=1e-12, atol=1e-14)
    assert kl_divergence(s, t).dtype == torch.float64


# --------------------------------------------------------------------------------------------
# 8. Ablation switches
# --------------------------------------------------------------------------------------------


def test_kl_reduction_mean_scales_only_kl():
    gen = torch.Generator().manual_seed(14)
    c = 9
    s, t, y = rand_case((7, c), gen, dtype=torch.float64, mask_frac=0.2)
    for alpha in (0.0, 0.4, 1.0):
        for kl in KL_DIRECTIONS[:2]:
            kw = dict(alpha=alpha, tau=3.0, kl=kl, kl_reduction="mean")
            torch.testing.assert_close(kd_loss(s, t, y, **kw), ref_kd(s, t, y, **kw), rtol=1e-12, atol=1e-14)
    # alpha=1: pure CE, unchanged by the KL reduction.
    a1_sum = kd_loss(s, t, y, alpha=1.0, kl_reduction="sum")
    a1_mean = kd_loss(s, t, y, alpha=1.0, kl_reduction="mean")
    assert a1_sum.item() == a1_mean.item()
    # alpha=0: pure soft term, divided by exactly C.
    a0_sum = kd_loss(s, t, y, alpha=0.0, kl_reduction="sum")
    a0_mean = kd_loss(s, t, y, alpha=0.0, kl_reduction="mean")
    assert (a0_sum / a0_mean).item() == pytest.approx(c, rel=1e-12)
    # alpha in between: alpha*CE + (1-alpha)*w*KL/C.
    alpha, tau = 0.4, 2.0
    ce = kd_loss(s, t, y, alpha=1.0)
    klsum = kd_loss(s, t, y, alpha=0.0, tau=tau, tau_squared=False)
    mixed = kd_loss(s, t, y, alpha=alpha, tau=tau, kl_reduction="mean")
    assert mixed.item() == pytest.approx(
        alpha * ce.item() + (1 - alpha) * tau**2 * klsum.item() / c, rel=1e-12
    )


@pytest.mark.parametrize("kl", KL_DIRECTIONS[:2])
def test_student_tau_one(kl):
    gen = torch.Generator().manual_seed(15)
    s, t, y = rand_case((6, 5), gen, dtype=torch.float64)
    kw = dict(alpha=0.3, tau=4.0, kl=kl)
    got = kd_loss(s, t, y, student_tau_one=True, **kw)
    torch.testing.assert_close(got, ref_kd(s, t, y, student_tau_one=True, **kw), rtol=1e-12, atol=1e-14)
    assert not torch.isclose(got, kd_loss(s, t, y, **kw))
    # Only the soft term changes: alpha=1 is unaffected; at tau=1 the switch is a no-op.
    assert kd_loss(s, t, y, alpha=1.0, student_tau_one=True).item() == kd_loss(s, t, y, alpha=1.0).item()
    torch.testing.assert_close(
        kd_loss(s, t, y, alpha=0.3, tau=1.0, kl=kl, student_tau_one=True),
        kd_loss(s, t, y, alpha=0.3, tau=1.0, kl=kl),
    )
    # Soft term: student at tau=1, teacher at tau.
    soft = kd_loss(s, t, y, alpha=0.0, tau=4.0, kl=kl, tau_squared=False, student_tau_one=True)
    log_ps, log_pt = ref_log_softmax(s), ref_log_softmax(t / 4.0)
    expect = ref_kl(log_pt, log_ps) if kl == "forward" else ref_kl(log_ps, log_pt)
    torch.testing.assert_close(soft, expect.mean(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tau", [0.5, 3.0, 4.0])
def test_tau_squared_off_divides_soft_term(tau):
    gen = torch.Generator().manual_seed(16)
    s, t, y = rand_case((8, 6), gen)
    on = kd_loss(s, t, y, alpha=0.0, tau=tau, tau_squared=True)
    off = kd_loss(s, t, y, alpha=0.0, tau=tau, tau_squared=False)
    torch.testing.assert_close(off * tau**2, on, rtol=1e-6, atol=0.0)
    if tau == 4.0:  # multiplication by a power of two is exact
        assert (off * 16).item() == on.item()
    # CE part (alpha=1) ignores tau_squared.
    assert (
        kd_loss(s, t, y, alpha=1.0, tau=tau, tau_squared=False).item() == kd_loss(s, t, y, alpha=1.0).item()
    )


# --------------------------------------------------------------------------------------------
# 9. The tau^2 fact
# --------------------------------------------------------------------------------------------


def _soft_grad(s, t, y, tau, tau_squared):
    s = s.detach().clone().requires_grad_(True)
    kd_loss(s, t, y, alpha=0.0, tau=tau, tau_squared=tau_squared).backward()
    return s.grad


def test_tau_squared_gradient_scale():
    gen = torch.Generator().manual_seed(17)
    s, t, y = rand_case((16, 10), gen, scale=1.0, dtype=torch.float64)
    g_on = _soft_grad(s, t, y, 4.0, True)
    g_off = _soft_grad(s, t, y, 4.0, False)
    assert (g_on.norm() / g_off.norm()).item() == pytest.approx(16.0, rel=1e-12)
    # With tau^2 the soft gradient tends to (s - t, centred) / (N C): roughly tau-independent.
    n20, n40 = _soft_grad(s, t, y, 20.0, True).norm(), _soft_grad(s, t, y, 40.0, True).norm()
    assert (n20 / n40).item() == pytest.approx(1.0, rel=0.05)
    # Without it the gradient decays like 1/tau^2.
    m20, m40 = _soft_grad(s, t, y, 20.0, False).norm(), _soft_grad(s, t, y, 40.0, False).norm()
    assert (m20 / m40).item() == pytest.approx(4.0, rel=0.05)


# --------------------------------------------------------------------------------------------
# 10. Bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(kl="sideways"), "kl"),
        (dict(kl_reduction="avg"), "kl_reduction"),
    ],
)
def test_bad_scalar_arguments(kwargs, name):
    """Unknown choices; the ranges of alpha, tau, ... are the method's, checked when it is built
    (test_method_losses.py::test_parameter_values_are_checked_once_when_the_method_is_built)."""
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=rf"^{name} must"):
        kd_loss(s, t, y, **kwargs)


def test_bad_value_messages_name_allowed_values():
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="forward.*reverse"):
        kd_loss(s, t, y, kl="sideways")
    with pytest.raises(ValueError, match="sum.*mean"):
        kd_loss(s, t, y, kl_reduction="avg")
    with pytest.raises(ValueError, match="tau"):
        kl_divergence(s, t, tau=0.0)


def test_bad_shapes_and_missing_inputs():
    s, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, torch.randn(2, 4), y)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        kd_loss(torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, None, y, alpha=0.5)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, torch.randn(2, 3), None, alpha=0.5)
    with pytest.raises(ValueError, match="q_logits"):
        kl_divergence(s, torch.randn(3, 3))


def test_teacher_none_is_pure_ce_and_labels_none_is_pure_kd():
    gen = torch.Generator().manual_seed(18)
    s, t, y = rand_case((3, 4, 5), gen, mask_frac=0.3)
    got = kd_loss(s, None, y, alpha=1.0)
    torch.testing.assert_close(got, F.cross_entropy(s.reshape(-1, 5), y.reshape(-1), ignore_index=-100))
    got = kd_loss(s, t, None, alpha=0.0, tau=2.0)
    torch.testing.assert_close(got, 4.0 * kl_divergence(t, s, 2.0).mean())


# --------------------------------------------------------------------------------------------
# 11. kd_loss_terms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl_reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("tau_squared", [True, False])
def test_kd_loss_terms_consistent(kl_reduction, tau_squared):
    gen = torch.Generator().manual_seed(19)
    s, t, y = rand_case((3, 4, 6), gen, mask_frac=0.25)
    kw = dict(alpha=0.35, tau=2.5, kl="reverse", tau_squared=tau_squared, kl_reduction=kl_reduction)
    terms = kd_loss_terms(s, t, y, **kw)
    assert set(terms) == {"loss", "ce", "kl"}
    assert terms["loss"].item() == kd_loss(s, t, y, **kw).item()
    w = 2.5**2 if tau_squared else 1.0
    torch.testing.assert_close(terms["loss"], 0.35 * terms["ce"] + 0.65 * w * terms["kl"])
    keep = y != -100
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s[keep], y[keep]))
    kl_pos = kl_divergence(s[keep], t[keep], 2.5)
    if kl_reduction == "mean":
        kl_pos = kl_pos / 6
    torch.testing.assert_close(terms["kl"], kl_pos.mean())
