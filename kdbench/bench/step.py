"""Bench section ``step``: teacher forward + student train step for CIFAR pairs (images/s)."""

# ruff: noqa: B023  (each closure is timed within its own loop iteration)

from __future__ import annotations

import torch

from kdbench.bench.table import Section
from kdbench.bench.timing import median_time
from kdbench.losses import kd_loss


def bench_step(device: torch.device, pairs: list[tuple[str, str]], batches: tuple[int, ...], steps: int) -> list[dict]:
    from kdbench.models import build_model

    rows = []
    amp = device.type == "cuda"
    for teacher_name, student_name in pairs:
        teacher = build_model(teacher_name, 100).to(device).eval()
        student = build_model(student_name, 100).to(device)
        if amp:
            teacher = teacher.to(memory_format=torch.channels_last)
            student = student.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        for bs in batches:
            xb = torch.randn(bs, 3, 32, 32, device=device)
            if amp:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = torch.randint(0, 100, (bs,), device=device)

            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    with torch.no_grad():
                        t = teacher(xb)
                    s = student(xb)
                loss = kd_loss(s, t, yb, alpha=0.1, tau=4.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            sec = median_time(step, device, repeats=3, inner=steps)
            rows.append({"teacher -> student": f"{teacher_name} -> {student_name}", "batch": bs,
                         "images/s": bs / sec, "ms/step": 1e3 * sec})
    return rows


def section(device: torch.device, full: bool) -> Section:
    """Every pair of ``conf/pair/*.yaml`` at batch 64 and 256 on a GPU or with ``--full``; else one pair at 64."""
    from kdbench.bench.harness import conf_pairs

    every = full or device.type == "cuda"
    pairs = conf_pairs() if every else [("resnet56", "resnet20")]
    return Section("teacher forward + student train step (bf16 autocast on GPU)",
                   bench_step(device, pairs, (64, 256) if every else (64,),
                              steps=10 if device.type == "cuda" else 2))
