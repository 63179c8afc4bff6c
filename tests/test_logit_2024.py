"""The 2023-24 logit methods (kdbench.losses.logit_2024, methods ttm, wttm, normkd, ctkd): each loss against a
float64 formula written here, its gradient, masks and bf16, the identities that pin it, and a digits run each."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import FAST


def _f64_softmax(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    e = (z - z.max(dim=-1, keepdim=True).values).exp()
    return e / e.sum(dim=-1, keepdim=True)


def _f64_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row sum_c p (log p - log q), float64."""
    return (p * (p.log() - q.log())).sum(-1)


def ref_ttm(s, t, gamma, weighted=False):
    """float64: q = p_t^gamma / sum p_t^gamma; mean of [w *] KL(q || softmax(s)), w = sum p_t^gamma."""
    pt = _f64_softmax(t) ** gamma
    w = pt.sum(-1)
    kl = _f64_kl(pt / w.unsqueeze(-1), _f64_softmax(s))
    return (w * kl if weighted else kl).mean()


def ref_normkd(s, t, t_norm):
    """float64: mean of T_t^2 KL(softmax(t/T_t) || softmax(s/T_s)), T = t_norm * unbiased std of the row."""
    s, t = s.double(), t.double()
    c = s.shape[-1]
    std = lambda z: (((z - z.mean(-1, keepdim=True)) ** 2).sum(-1, keepdim=True) / (c - 1)).sqrt()  # noqa: E731
    tt, ts = t_norm * std(t), t_norm * std(s)
    return (tt.squeeze(-1) ** 2 * _f64_kl(_f64_softmax(t / tt), _f64_softmax(s / ts))).mean()


def _pair(n=6, c=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, c, generator=g), scale * torch.randn(n, c, generator=g)


# ---- TTM / WTTM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.1, 0.25, 1.0, 2.0])
def test_ttm_and_wttm_equal_their_float64_formulas(gamma):
    from kdbench.losses import ttm_loss, wttm_loss

    s, t = _pair()
    assert math.isclose(ttm_loss(s, t, gamma).item(), ref_ttm(s, t, gamma).item(), rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(wttm_loss(s, t, gamma).item(), ref_ttm(s, t, gamma, weighted=True).item(), rel_tol=1e-5,
                        abs_tol=1e-7)
    # float64 in, float64 out, to float64 accuracy
    s64, t64 = s.double(), t.double()
    assert ttm_loss(s64, t64, gamma).dtype == torch.float64
    assert torch.allclose(wttm_loss(s64, t64, gamma), ref_ttm(s, t, gamma, weighted=True), rtol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0, 10.0])
def test_ttm_with_gamma_one_over_tau_is_kd_with_the_student_untempered(tau):
    """softmax(z_t)^(1/tau) / sum == softmax(z_t / tau): TTM is KL(p_t^tau || softmax(z_s)), KD's KL without tau^2
    and with the student at temperature 1."""
    from kdbench.losses import kl_divergence, ttm_loss

    s, t = _pair(seed=1)
    kd_student_untempered = (_f64_softmax(t / tau), _f64_softmax(s))
    assert torch.allclose(ttm_loss(s.double(), t.double(), 1 / tau), _f64_kl(*kd_student_untempered).mean(),
                          rtol=1e-12)
    # and through KD's own KL: the student's logits pre-multiplied by tau are untempered at tau
    assert torch.allclose(ttm_loss(s, t, 1 / tau), kl_divergence(t, s * tau, tau=tau).mean(), rtol=1e-5)


def test_wttm_weight_is_the_power_sum_of_the_teacher():
    """Row by row, WTTM / TTM is sum_c p_t^gamma (1 at gamma 1; up to C^(1 - gamma) for a uniform teacher)."""
    from kdbench.losses import ttm_loss, wttm_loss

    s, t = _pair(n=4, seed=2)
    gamma = 0.3
    for i in range(4):
        w = (_f64_softmax(t[i]) ** gamma).sum()
        assert math.isclose(wttm_loss(s[i:i + 1], t[i:i + 1], gamma).item(),
                            (w * ttm_loss(s[i:i + 1].double(), t[i:i + 1].double(), gamma)).item(), rel_tol=1e-5)
    assert torch.allclose(wttm_loss(s, t, 1.0), ttm_loss(s, t, 1.0))
    uniform = torch.zeros(1, 7)
    assert math.isclose(wttm_loss(s[:1], uniform, gamma).item() / ttm_loss(s[:1], uniform, gamma).item(),
                        7 ** (1 - gamma), rel_tol=1e-5)


@pytest.mark.parametrize("name", ["ttm", "wttm"])
def test_ttm_gradients_are_the_formulas(name):
    from kdbench.losses import ttm_loss, wttm_loss

    fn = ttm_loss if name == "ttm" else wttm_loss
    s, t = _pair(seed=3)
    s64 = s.double().requires_grad_()
    t64 = t.double().requires_grad_()
    fn(s64, t64, 0.2).backward()
    s_ref = s.double().requires_grad_()
    t_ref = t.double().requires_grad_()
    ref_ttm(s_ref, t_ref, 0.2, weighted=name == "wttm").backward()
    assert torch.allclose(s64.grad, s_ref.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(t64.grad, t_ref.grad, rtol=1e-10, atol=1e-12)
    # the student's gradient of TTM is (softmax(s) - q) / N
    if name == "ttm":
        q = _f64_softmax(0.2 * torch.log_softmax(t.double(), -1))
        assert torch.allclose(s64.grad, (_f64_softmax(s) - q) / s.shape[0], atol=1e-12)


# ---- NormKD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_norm", [0.5, 1.0, 2.0])
def test_normkd_equals_its_float64_formula_and_gradient(t_norm):
    from kdbench.losses import normkd_loss

    s, t = _pair(seed=4)
    assert math.isclose(normkd_loss(s, t, t_norm).item(), ref_normkd(s, t, t_norm).item(), rel_tol=1e-5)
    s64, s_ref = s.double().requires_grad_(), s.double().requires_grad_()
    normkd_loss(s64, t.double(), t_norm).backward()
    ref_normkd(s_ref, t.double(), t_norm).backward()  # the gradient runs through the student's std, as NormKD's
    assert torch.allclose(s64.grad, s_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("std", [0.5, 1.0, 3.0])
def test_normkd_with_constant_std_rows_is_kd_at_tau_t_norm_times_std(std):
    """Rows of std ``std`` on both sides: T_t = T_s = t_norm*std = tau, and NormKD is KD's tau^2 KL at tau."""
    from kdbench.losses import kd_loss, normkd_loss

    s, t = (x.double() for x in _pair(seed=5))
    s = std * (s - s.mean(-1, keepdim=True)) / s.std(-1, keepdim=True) + 1.5  # shifts change nothing
    t = std * (t - t.mean(-1, keepdim=True)) / t.std(-1, keepdim=True) - 2.0
    t_norm = 2.0
    tau = t_norm * std
    kd = kd_loss(s, t, None, alpha=0.0, tau=tau)  # (1 - alpha) * tau^2 * KL at tau
    assert torch.allclose(normkd_loss(s, t, t_norm), kd, rtol=1e-10)


def test_normkd_constant_rows_are_finite_and_a_constant_teacher_weighs_nothing():
    from kdbench.losses import normkd_loss

    s, t = _pair(n=3, seed=6)
    t[1] = 4.0  # a constant teacher row: uniform, weight (t_norm * 0)^2 = 0
    s[2] = -1.0  # a constant student row: uniform
    s.requires_grad_()
    loss = normkd_loss(s, t, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert torch.equal(s.grad[1], torch.zeros(7))
    row2 = normkd_loss(s[2:].detach(), t[2:], 2.0)
    tt = 2.0 * t[2].double().std()
    ref = tt**2 * _f64_kl(_f64_softmax(t[2] / tt), torch.full((7,), 1 / 7, dtype=torch.float64))
    assert math.isclose(row2.item(), ref.item(), rel_tol=1e-5)


# ---- shared: masks, bf16, shapes ------------------------------------------------------------------


def _losses():
    from kdbench.losses import normkd_loss, ttm_loss, wttm_loss

    return {"ttm": lambda s, t, **kw: ttm_loss(s, t, 0.25, **kw), "wttm": lambda s, t, **kw: wttm_loss(s, t, 0.25, **kw),
            "normkd": lambda s, t, **kw: normkd_loss(s, t, 2.0, **kw)}


@pytest.mark.parametrize("name", ["ttm", "wttm", "normkd"])
def test_ignored_positions_are_dropped_and_cannot_leak_nan(name):
    """-100 labels drop a position from the mean (as KD's masks), NaN logits there reach neither the value nor
    the gradient, and [B, T, C] is the same as its rows; with no kept position the loss is an exact 0."""
    fn = _losses()[name]
    s, t = _pair(n=6, seed=7)
    y = torch.tensor([1, -100, 3, 4, -100, 0])
    keep = y != -100
    expect = fn(s[keep], t[keep])
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[1], t_bad[4] = math.nan, math.inf
    s_bad.requires_grad_()
    got = fn(s_bad, t_bad, labels=y)
    got.backward()
    assert torch.allclose(got, expect, rtol=1e-6)
    assert torch.isfinite(s_bad.grad).all() and torch.equal(s_bad.grad[1], torch.zeros(7))
    assert torch.allclose(fn(s.reshape(2, 3, 7), t.reshape(2, 3, 7), labels=y.reshape(2, 3)), expect, rtol=1e-6)
    s_req = s.clone().requires_grad_()
    none = fn(s_req, t, labels=torch.full((6,), -100))
    none.backward()
    assert none.item() == 0.0 and torch.equal(s_req.grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", ["ttm", "wttm", "normkd"])
def test_bf16_inputs_are_computed_in_float32(name):
    fn = _losses()[name]
    s, t = _pair(seed=8)
    sb, tb = s.bfloat16(), t.bfloat16()
    out = fn(sb, tb)
    assert out.dtype == torch.float32
    assert torch.allclose(out, fn(sb.float(), tb.float()), rtol=1e-6)


def test_bad_arguments_are_refused():
    from kdbench.losses import normkd_loss, ttm_loss, wttm_loss

    s, t = _pair()
    for fn in (ttm_loss, wttm_loss):
        with pytest.raises(ValueError, match="gamma"):
            fn(s, t, 0.0)
    with pytest.raises(ValueError, match="t_norm"):
        normkd_loss(s, t, -1.0)
    with pytest.raises(ValueError, match="shape"):
        ttm_loss(s, t[:, :3], 0.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        normkd_loss(s[:, :1], t[:, :1], 2.0)


# ---- the methods -----------------------------------------------------------------------------------


def _batch(s, y):
    from kdbench.data import Batch

    return Batch(s, y, torch.arange(len(y)), torch.zeros(len(y), dtype=torch.long))


@pytest.mark.parametrize(("name", "params", "term"), [
    ("ttm", {"ce_weight": 1.0, "kd_weight": 45.0, "gamma": 0.1}, "ttm"),
    ("wttm", {"ce_weight": 1.0, "kd_weight": 4.0, "gamma": 0.2}, "wttm"),
    ("normkd", {"ce_weight": 0.1, "kd_weight": 0.9, "t_norm": 2.0}, "normkd"),
])
def test_each_logit_method_is_ce_plus_its_weighted_term(name, params, term):
    import torch.nn.functional as F

    from kdbench.methods import build_method, method_defaults

    assert method_defaults(name) == params  # the configs' defaults are the methods' own
    s, t = _pair(n=8, c=10, seed=9)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(0))
    fn = {"ttm": ref_ttm, "wttm": lambda a, b, g: ref_ttm(a, b, g, weighted=True), "normkd": ref_normkd}[name]
    knob = params.get("gamma", params.get("t_norm"))
    out = build_method(name, params)(s, t, _batch(s, y))
    ce = F.cross_entropy(s.double(), y)
    assert math.isclose(out["ce"].item(), ce.item(), rel_tol=1e-5)
    assert math.isclose(out[term].item(), fn(s, t, knob).item(), rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), (params["ce_weight"] * ce + params["kd_weight"] * fn(s, t, knob)).item(),
                        rel_tol=1e-5)
    with pytest.raises(TypeError, match="dense teacher logits"):
        build_method(name, params)(s, object(), _batch(s, y))


@pytest.mark.parametrize("override, key", [("distill.gamma=0", "distill.gamma"), ("distill.kd_weight=-1",
                                                                                   "distill.kd_weight")])
def test_bad_parameters_are_one_line_errors(compose, override, key):
    from kdbench.config import validate
    from kdbench.errors import ConfigError

    for method in ("ttm", "wttm"):
        with pytest.raises(ConfigError) as e:
            validate(compose(f"distill={method}", override))
        assert e.value.key == key
    with pytest.raises(ConfigError) as e:
        validate(compose("distill=normkd", "distill.t_norm=0"))
    assert e.value.key == "distill.t_norm"


@pytest.mark.parametrize("distill", ["ttm", "wttm", "normkd"])
def test_each_logit_method_trains_two_epochs_on_digits(compose, teachers_dir, distill):
    from kdbench.train import run

    rec = run(compose(*FAST, f"distill={distill}", f"paths.teachers_dir={teachers_dir}"))
    assert rec["status"] == "complete" and len(rec["history"]) == 2
    assert all(math.isfinite(h["train_loss"]) for h in rec["history"])
    assert rec["metrics"]["last"]["test"]["acc"] > 0.2
    assert rec["distill"]["method"] == distill and rec["params"]["training_only"] == 0
