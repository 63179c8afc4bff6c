"""Metrics against closed forms computed by hand in float64 (not with the implementation)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.metrics import ClassificationMetrics


def _manual(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor):
    p = logits.double().softmax(-1)
    n, c = p.shape
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    ece, mce = 0.0, 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs(conf[m].mean().item() - correct[m].mean().item())
            ece += m.double().mean().item() * gap
            mce = max(mce, gap)
    onehot = torch.nn.functional.one_hot(y, c).double()
    pt = t.double().softmax(-1)
    return {
        "acc": correct.mean().item(), "ece": ece, "mce": mce,
        "nll": -(p[torch.arange(n), y].log()).mean().item(),
        "brier": ((p - onehot) ** 2).sum(-1).mean().item(),
        "agreement": (pred == t.argmax(-1)).double().mean().item(),
        "kl_teacher": (pt * (pt.log() - p.log())).sum(-1).mean().item(),
    }


def test_metrics_match_closed_forms_over_several_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 3
    y = torch.randint(0, 7, (300,), generator=g)
    t = logits + torch.randn(300, 7, generator=g)
    m = ClassificationMetrics(7, with_teacher=True)
    for i in range(0, 300, 64):  # uneven batches: metrics must accumulate, not average batch means
        m.update(logits[i:i + 64], y[i:i + 64], t[i:i + 64])
    got, want = m.compute(), _manual(logits, y, t)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-5), k


def test_perfect_confident_predictions():
    y = torch.arange(10) % 4
    logits = torch.nn.functional.one_hot(y, 4).float() * 50
    m = ClassificationMetrics(4, with_teacher=True)
    m.update(logits, y, logits)
    out = m.compute()
    assert out["acc"] == 1.0 and out["ece"] == pytest.approx(0, abs=1e-6)
    assert out["brier"] == pytest.approx(0, abs=1e-6) and out["agreement"] == 1.0
    assert out["kl_teacher"] == pytest.approx(0, abs=1e-6)


def test_uniform_predictions_brier_and_nll():
    c = 5
    y = torch.arange(20) % c
    m = ClassificationMetrics(c)
    m.update(torch.zeros(20, c), y)
    out = m.compute()
    assert out["nll"] == pytest.approx(math.log(c))
    assert out["brier"] == pytest.approx((1 - 1 / c) ** 2 + (c - 1) / c**2)


def test_reliability_bins_cover_every_example():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 10, generator=g) * 2
    y = torch.randint(0, 10, (200,), generator=g)
    m = ClassificationMetrics(10)
    m.update(logits, y)
    rel = m.reliability()
    assert sum(rel["count"]) == 200 and len(rel["confidence"]) == 15
    conf = torch.tensor(rel["confidence"])
    counts = torch.tensor(rel["count"])
    weighted = (conf * counts).sum() / counts.sum()
    assert weighted.item() == pytest.approx(logits.softmax(-1).max(-1).values.mean().item(), rel=1e-5)


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    """Labels drawn from softmax(z); the model reports 3*z (over-confident): the NLL-optimal temperature is 3,
    and scaling never raises the NLL on the set it was fitted on."""
    import torch.nn.functional as F

    from kdbench.metrics import fit_temperature

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    t = fit_temperature(3 * z, y)
    assert abs(t - 3.0) < 0.15
    assert F.cross_entropy(3 * z / t, y) <= F.cross_entropy(3 * z, y)
    assert abs(fit_temperature(z, y) - 1.0) < 0.05  # calibrated logits: T near 1
    assert 0.05 <= fit_temperature(z * 1e4, y) <= 20.0  # stays in its bracket


def test_temperature_scaled_metrics_appear_only_with_a_temperature():
    from kdbench.metrics import ClassificationMetrics

    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 5, generator=g)
    y = torch.randint(0, 5, (500,), generator=g)
    m = ClassificationMetrics(5)
    m.update(z, y)
    assert "ece_ts" not in m.compute()
    m2 = ClassificationMetrics(5)
    m2.temperature = 2.0
    m2.update(z, y)
    out = m2.compute()
    ref = ClassificationMetrics(5)
    ref.update(z / 2.0, y)
    r = ref.compute()
    assert out["temperature"] == 2.0
    assert abs(out["nll_ts"] - r["nll"]) < 1e-6 and abs(out["ece_ts"] - r["ece"]) < 1e-6
    assert abs(out["nll"] - m.compute()["nll"]) < 1e-6  # the unscaled metrics are unchanged


@pytest.mark.parametrize("scale, classes", [(3.0, 10), (0.4, 256), (1.0, 32), (40.0, 5)])
def test_fit_temperature_finds_the_nll_minimum_of_an_independent_search(scale, classes):
    """The safeguarded Newton fit equals a log-spaced grid + golden-section search written here from the
    definition (NLL of softmax(z / T) over T in [0.05, 20]), to 1e-6 in T."""
    import math

    import torch.nn.functional as F

    from kdbench.metrics import fit_temperature

    g = torch.Generator().manual_seed(classes)
    z = torch.randn(3000, classes, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    logits = (scale * z).float()

    def nll(t: float) -> float:
        return float(F.cross_entropy(logits.double() / t, y))

    grid = [0.05 * (400 ** (i / 80)) for i in range(81)]  # log-spaced over [0.05, 20]: brackets the one minimum
    i = min(range(len(grid)), key=lambda j: nll(grid[j]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    r = (math.sqrt(5) - 1) / 2
    for _ in range(45):  # the bracket shrinks to 0.618 ** 45 (4e-10) of its width
        c, d = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (lo, d) if nll(c) < nll(d) else (c, hi)
    assert fit_temperature(logits, y) == pytest.approx((lo + hi) / 2, abs=1e-6)
