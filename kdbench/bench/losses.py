"""Bench section ``loss``: :func:`kdbench.losses.kd_loss` vs the usual inline formulation
(``F.kl_div`` + ``cross_entropy``), forward + backward."""

# ruff: noqa: B023  (each closure is timed within its own loop iteration)

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.bench.table import Section
from kdbench.bench.timing import median_time
from kdbench.losses import kd_loss


def naive_kd(s, t, y, alpha=0.5, tau=4.0):
    """KD as the published code bases write it inline."""
    soft = F.kl_div(F.log_softmax(s / tau, -1), F.softmax(t / tau, -1), reduction="batchmean") * tau * tau
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * soft


def bench_loss(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    shapes = [(256, 100), (4096, 1000)] if quick else [(64, 100), (256, 100), (4096, 1000), (8 * 512, 32000)]
    for n, c in shapes:
        s = torch.randn(n, c, device=device, requires_grad=True)
        t = torch.randn(n, c, device=device)
        y = torch.randint(0, c, (n,), device=device)

        def ours():
            kd_loss(s, t, y, alpha=0.5, tau=4.0).backward()

        def ref():
            naive_kd(s, t, y).backward()

        a, b = median_time(ours, device), median_time(ref, device)
        rows.append({"N x C": f"{n} x {c}", "kd_loss (ms)": 1e3 * a, "F.kl_div inline (ms)": 1e3 * b,
                     "ratio": a / b})
    return rows


def section(device: torch.device, quick: bool) -> Section:
    return Section("KD loss, forward + backward (median)", bench_loss(device, quick))
