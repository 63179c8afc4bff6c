"""Bench section ``features``: each method's training step on one CIFAR pair, relative to KD, and the
training-only parameters a feature method adds (its regressors, embeddings, memory)."""

# ruff: noqa: B023  (each closure is timed within its own loop iteration)

from __future__ import annotations

import statistics

import torch

from kdbench.bench.table import Section
from kdbench.bench.timing import median_time

#: the methods compared (KD first: the reference every ratio is taken against)
METHODS = ("kd", "at", "nst", "sp", "rkd", "pkt", "fitnet", "vid", "crd", "ofd", "reviewkd")


def bench_features(device: torch.device, pair: tuple[str, str], batch: int, steps: int, repeats: int = 5,
                   methods: tuple[str, ...] = METHODS) -> list[dict]:
    """One real DistillModule step (student forward with the features asked for, the online teacher's
    pass, the method's loss, backward, SGD step) per method, ``batch`` CIFAR-sized images, 100 classes."""
    from kdbench.data.core import Batch
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.features import probe
    from kdbench.methods import build_method, method_defaults
    from kdbench.models import build_model
    from kdbench.runner import build_parts, declares_needs
    from kdbench.signals.online import OnlineSignal

    shape, rows = (3, 32, 32), []
    x = torch.randn(batch, *shape, device=device)
    b = Batch(x, torch.randint(0, 100, (batch,), device=device), torch.arange(batch, device=device),
              torch.zeros(batch, dtype=torch.long, device=device))
    steppers = []
    for name in methods:
        torch.manual_seed(0)
        teacher, student = build_model(pair[0], 100, shape).to(device), build_model(pair[1], 100, shape).to(device)
        method = build_method(name, method_defaults(name))
        signal, parts = OnlineSignal(teacher), None
        if declares_needs(method):
            signal.request(method.needs.teacher)
            parts = build_parts(method, probe(student, shape, method.needs.student),
                                signal.probe(shape, method.needs.teacher), 50_000, teacher_model=teacher,
                                train_y=torch.arange(50_000) % 100)
        module = DistillModule(student, 100, OptimSpec(), SchedSpec(), method=method, signal=signal,
                               parts=parts).to(device)
        opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

        def step(module=module, opt=opt):
            loss = module.training_step(b, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steppers.append((name, method, parts, step))
    # interleaved: every repeat times each method once, so a load that comes and goes hits them alike
    times: dict[str, list[float]] = {name: [] for name, *_ in steppers}
    for _ in range(repeats):
        for name, _, _, step in steppers:
            times[name].append(median_time(step, device, repeats=1, inner=steps))
    base = statistics.median(times[steppers[0][0]])
    for name, method, parts, _ in steppers:
        sec = statistics.median(times[name])
        rows.append({"method": name, "needs": "logits" if not declares_needs(method) else
                     ", ".join(method.needs.student), "ms/step": 1e3 * sec, "x KD": sec / base,
                     "training-only params": sum(p.numel() for p in parts.parameters()) if parts is not None else 0})
    return rows


def section(device: torch.device, full: bool) -> Section:
    pair = ("resnet56", "resnet20")
    batch = 64 if device.type == "cpu" and not full else 256
    return Section(f"feature methods: one training step on {pair[0]} -> {pair[1]}, batch {batch}, relative to KD",
                   bench_features(device, pair, batch, steps=2 if device.type == "cpu" else 10),
                   notes=["ms/step: median of 5 interleaved repeats (each the mean of its steps after a warm-up), side by side; "
                          "training-only params: the method's own modules, not part of the deployed student"])


#: the CIFAR pairs of the benchmark tables whose training-only parameters the docs list
PAIRS = (("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
         ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"))


def training_only(methods: tuple[str, ...] | None = None, pairs=PAIRS, n_train: int = 50_000) -> list[dict]:
    """Per feature method and pair: the parameters of its own modules (built on a probe batch, as a run
    builds them), and their share of the student's; a pair it cannot use says why."""
    from kdbench.features import probe
    from kdbench.methods import build_method, method_defaults, method_names
    from kdbench.models import build_model
    from kdbench.runner import build_parts, declares_needs

    shape, rows = (3, 32, 32), []
    names = methods or tuple(n for n in method_names() if declares_needs(build_method(n, method_defaults(n))))
    for name in names:
        row = {"method": name}
        for t, s in pairs:
            method = build_method(name, method_defaults(name))
            student, teacher = build_model(s, 100, shape), build_model(t, 100, shape)
            try:
                parts = build_parts(method, probe(student, shape, method.needs.student),
                                    probe(teacher, shape, method.needs.teacher), n_train, teacher_model=teacher,
                                    train_y=torch.arange(n_train) % 100)
            except ValueError as e:
                row[f"{t} -> {s}"] = f"refused ({str(e).splitlines()[0][:40]})"
                continue
            n = sum(p.numel() for p in parts.parameters()) if parts is not None else 0
            row[f"{t} -> {s}"] = f"{n:,} ({100 * n / sum(p.numel() for p in student.parameters()):.1f} %)"
        rows.append(row)
    return rows


def params_section(device: torch.device) -> Section:
    return Section("feature methods: training-only parameters per pair (share of the student's)", training_only(),
                   notes=["built on a probe batch as a run builds them; none of them is part of the deployed student"])
