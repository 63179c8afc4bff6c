"""The 2023-24 logit methods (kdbench.losses.logit_2024, methods ttm, wttm, normkd, ctkd): each loss against a
float64 formula written here, its gradient, masks and bf16, the identities that pin it, and a digits run each."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import FAST, whole_cut_resumed


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


# ---- CTKD ---------------------------------------------------------------------------------------------


def ref_kd_at(s, t, temp):
    """float64: mean of T_i^2 KL(softmax(t/T_i) || softmax(s/T_i)); ``temp`` one value or one per row."""
    temp = torch.as_tensor(temp, dtype=torch.float64).reshape(-1, 1)
    return (temp.squeeze(-1) ** 2 * _f64_kl(_f64_softmax(t.double() / temp), _f64_softmax(s.double() / temp))).mean()


def test_ctkd_kd_loss_at_a_tensor_temperature_is_kd_and_its_gradient_reaches_the_temperature():
    from kdbench.losses import ctkd_kd_loss, kd_loss

    s, t = _pair(seed=10)
    # a global temperature: KD's tau^2 KL at that tau
    for tau in (1.0, 4.0, 15.6):
        assert torch.allclose(ctkd_kd_loss(s.double(), t.double(), torch.tensor(tau)),
                              kd_loss(s.double(), t.double(), None, alpha=0.0, tau=tau), rtol=1e-12)
    # one per row, with d/dT of the float64 formula
    temp = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0, 13.0], dtype=torch.float64, requires_grad=True)
    temp_ref = temp.detach().clone().requires_grad_()
    got = ctkd_kd_loss(s.double(), t.double(), temp)
    got.backward()
    ref = ref_kd_at(s, t, temp_ref)
    ref.backward()
    assert torch.allclose(got, ref, rtol=1e-12) and torch.allclose(temp.grad, temp_ref.grad, rtol=1e-9)
    # float32 and bf16 inputs: float32 values
    assert ctkd_kd_loss(s.bfloat16(), t.bfloat16(), torch.tensor([4.0])).dtype == torch.float32
    assert math.isclose(ctkd_kd_loss(s, t, torch.tensor([4.0])).item(), ref_kd_at(s, t, 4.0).item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="temperature must be a tensor"):
        ctkd_kd_loss(s, t, torch.ones(3))


def test_ctkd_kd_loss_masks_ignored_positions_and_their_temperatures():
    from kdbench.losses import ctkd_kd_loss

    s, t = _pair(seed=11)
    y = torch.tensor([0, -100, 2, 3, -100, 5])
    keep = y != -100
    temp = torch.tensor([2.0, math.nan, 3.0, 4.0, 0.0, 6.0], requires_grad=True)  # garbage where dropped
    got = ctkd_kd_loss(s, t, temp, labels=y)
    got.backward()
    assert math.isclose(got.item(), ref_kd_at(s[keep], t[keep], temp.detach()[keep]).item(), rel_tol=1e-5)
    assert torch.isfinite(temp.grad).all() and temp.grad[1] == 0 and temp.grad[4] == 0
    # standardize: both sides z-scored first (CTKD+LS)
    from kdbench.losses import standardize_logits

    z = ctkd_kd_loss(s, t, torch.tensor(2.0), standardize=True)
    assert math.isclose(z.item(), ref_kd_at(standardize_logits(s), standardize_logits(t), 2.0).item(), rel_tol=1e-5)


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_the_gradient_reversal_flips_and_scales_the_gradient(strength):
    from kdbench.losses import reverse_gradient

    x = torch.randn(5, requires_grad=True)
    g = torch.randn(5)
    y = reverse_gradient(x, strength)
    assert torch.equal(y, x)  # the identity forward
    (y * g).sum().backward()
    assert torch.allclose(x.grad, -strength * g)
    # gradcheck of the reversed function against its definition: the Jacobian is -strength * I
    x64 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: reverse_gradient(v, strength), x64)
    assert torch.equal(jac, -strength * torch.eye(3, dtype=torch.float64))


def test_the_temperature_parameter_gets_the_reversed_scaled_gradient_of_the_loss():
    """theta's gradient through CTKD's temperature is -lambda times the loss's own gradient with respect to it:
    the optimizer's step raises the distillation loss (an adversarial temperature)."""
    from kdbench.features import Out
    from kdbench.losses import ctkd_kd_loss
    from kdbench.methods.ctkd import CTKD

    s, t = (x.double() for x in _pair(n=8, c=10, seed=12))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    method = CTKD()
    parts = method.build(Out(torch.zeros(2, 10)), Out(torch.zeros(2, 10)), 100)
    assert [n for n, _ in parts.named_parameters()] == ["theta"] and parts.theta.item() == 1.0
    parts.double()  # float64 throughout: at T ~ 15 the loss is nearly flat in T
    for epoch in (0, 4, 30):
        method.set_epoch(epoch)
        parts.zero_grad()
        method(Out(s), Out(t), _batch(s, y), parts)["loss"].backward()
        theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
        kd = ctkd_kd_loss(s, t, 1.0 + 20.0 * torch.sigmoid(theta))
        (plain,) = torch.autograd.grad(0.9 * kd, theta)  # the loss's own gradient: CE does not depend on theta
        assert plain.abs().item() > 1e-4 and torch.allclose(parts.theta.grad, -method.strength * plain, rtol=1e-9)
    assert method.strength == 1.0  # from epoch 10 on


def test_the_curriculum_is_the_papers_cosine():
    """lambda_n = lambda_min + (lambda_max - lambda_min)/2 * (1 + cos((1 + min(n, N)/N) pi)), n the 1-based epoch;
    the first four are the reversal strengths CTKD's code logs (LS repository's ctkd,resnet32x4,resnet8x4 log)."""
    from kdbench.losses import ctkd_lambda
    from kdbench.methods.ctkd import CTKD

    paper = lambda n, N=10, lo=0.0, hi=1.0: lo + (hi - lo) / 2 * (1 + math.cos((1 + min(n, N) / N) * math.pi))  # noqa: E731
    for n in (0, 1, 2, 3, 5, 7, 10, 11, 240):
        assert math.isclose(ctkd_lambda(n), paper(n), abs_tol=1e-12)
        assert math.isclose(ctkd_lambda(n, epochs=20, lambda_min=0.2, lambda_max=0.8), paper(n, 20, 0.2, 0.8),
                            abs_tol=1e-12)
    logged = [0.02447174185242318, 0.09549150281252627, 0.20610737385376343, 0.3454915028125263]
    method = CTKD()
    for epoch, value in enumerate(logged):  # set_epoch is 0-based: epoch 0 trains at lambda_1
        method.set_epoch(epoch)
        assert math.isclose(method.strength, value, rel_tol=1e-12)
    assert ctkd_lambda(0) == 0.0 and ctkd_lambda(10) == 1.0 and ctkd_lambda(-3) == 0.0


def test_ctkd_instance_temperature_and_dkd_wrapping():
    """instance: one temperature per row, from an MLP of the detached [teacher, student] logits, in
    (t_start, t_start + t_range); dkd: DKD's term at the global temperature; instance + dkd is refused."""
    import torch.nn.functional as F

    from kdbench.errors import ConfigError
    from kdbench.features import Out
    from kdbench.losses import dkd_loss
    from kdbench.methods import build_method

    s, t = _pair(n=8, c=10, seed=13)
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    inst = build_method("ctkd", {"temperature": "instance", "mlp_hidden": 16})
    torch.manual_seed(0)
    parts = inst.build(Out(torch.zeros(2, 10)), Out(torch.zeros(2, 10)), 100)
    assert sum(p.numel() for p in parts.parameters()) == 20 * 16 + 16 + 16 + 1
    s_req = s.clone().requires_grad_()
    out = inst(Out(s_req), Out(t), _batch(s, y), parts)
    temp = parts(s, t, 0.5)
    assert temp.shape == (8,) and ((temp > 1.0) & (temp < 21.0)).all() and temp.std() > 0
    assert math.isclose(out["kd"].item(), ref_kd_at(s, t, temp.detach()).item(), rel_tol=1e-5)
    out["loss"].backward()
    # the student's gradient is the loss's at that temperature (nothing of the MLP's path reaches it)
    s_ref = s.double().requires_grad_()
    (0.1 * F.cross_entropy(s_ref, y) + 0.9 * ref_kd_at(s_ref, t, temp.detach())).backward()
    assert torch.allclose(s_req.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-7)
    dkd = build_method("ctkd", {"wraps": "dkd", "ce_weight": 1.0, "kd_weight": 1.0})
    parts = dkd.build(Out(torch.zeros(2, 10)), Out(torch.zeros(2, 10)), 100)
    out = dkd(Out(s), Out(t), _batch(s, y), parts)
    tau = 1.0 + 20.0 * torch.sigmoid(torch.tensor(1.0))
    assert math.isclose(out["dkd"].item(), dkd_loss(s, t, y, alpha=1.0, beta=8.0, tau=tau.item()).item(), rel_tol=1e-5)
    assert math.isclose(out["temperature"].item(), tau.item(), rel_tol=1e-6)
    with pytest.raises(ConfigError, match="distill.temperature: CTKD\\+DKD learns a global temperature"):
        build_method("ctkd", {"wraps": "dkd", "temperature": "instance"})


def _ckpt_parts(rec: dict, experiment: str | None = None) -> dict:
    """The method's parts in the last.ckpt of ``rec``'s run (in ``experiment``, by default its own)."""
    from pathlib import Path

    folder = Path(rec["record_path"]).parents[2] / "checkpoints" / (experiment or rec["experiment"]) / rec["run_id"]
    ck = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in ck["state_dict"].items() if k.startswith("parts.")}


@pytest.mark.parametrize(("distill", "training_only", "keys"), [
    ("ctkd", 1, {"parts.theta"}),
    ("ctkd_instance", 20 * 256 + 256 + 256 + 1, {"parts.mlp.0.weight", "parts.mlp.2.bias"}),
    ("ctkd_dkd", 1, {"parts.theta"}),
    ("ctkd_ls", 1, {"parts.theta"}),
])
def test_ctkd_trains_two_epochs_on_digits_and_checkpoints_its_temperature(compose, teachers_dir, distill,
                                                                         training_only, keys):
    from kdbench.train import run

    rec = run(compose(*FAST, f"distill={distill}", f"paths.teachers_dir={teachers_dir}"))
    assert rec["status"] == "complete" and len(rec["history"]) == 2
    assert all(math.isfinite(h["train_loss"]) for h in rec["history"])
    assert rec["params"]["training_only"] == training_only
    parts = _ckpt_parts(rec)
    assert set(parts) == keys or keys <= set(parts), sorted(parts)
    if "parts.theta" in parts:
        assert parts["parts.theta"].shape == (1,) and parts["parts.theta"].item() != 1.0  # it was trained


def test_ctkd_works_with_the_cached_teacher_signal(compose, teachers_dir):
    from kdbench.train import run

    rec = run(compose(*FAST, "distill=ctkd", "teacher_signal=cached", "trainer.max_epochs=1",
                      f"paths.teachers_dir={teachers_dir}"))
    assert rec["status"] == "complete" and rec["teacher_signal"] == "cached" and rec["params"]["training_only"] == 1


def test_an_interrupted_ctkd_run_resumes_exactly_with_its_temperature(compose, teachers_dir, monkeypatch):
    """SIGTERM as the second epoch starts, then the same command: the temperature (and its optimizer state) come
    back from last.ckpt and the run ends with the uninterrupted run's numbers and temperature."""
    args = (*FAST, "distill=ctkd", "trainer.max_epochs=3", f"paths.teachers_dir={teachers_dir}")
    after_one = []
    whole, resumed = whole_cut_resumed(lambda name: compose(*args, f"experiment_name={name}"), monkeypatch,
                                       between=lambda whole: after_one.append(_ckpt_parts(whole, "cut")["parts.theta"]))
    a, b = _ckpt_parts(whole)["parts.theta"], _ckpt_parts(resumed)["parts.theta"]
    assert torch.allclose(a, b, rtol=1e-6) and not torch.equal(a, after_one[0])
