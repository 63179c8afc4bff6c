# ruff: noqa: B023, B007  (each closure is timed within its own loop iteration)
"""``make bench``: speed benchmarks that print tables (medians and side-by-side ratios).

1. loss: kdbench.losses.kd_loss vs the usual inline formulation (F.kl_div + cross_entropy), fwd+bwd.
2. data: TensorLoader (whole dataset as a uint8 tensor, batched crop+flip) vs a torchvision
   DataLoader with per-image PIL transforms, on the CIFAR-10 JPEG copy (or random images).
3. step: teacher forward + student train step for CIFAR pairs (images/s), batch 64 and 256.
4. signals: one training epoch with the teacher ``online`` vs ``cached`` (exact, per (image, view))
   vs ``captured`` (top-5 log-probs, no teacher) on real MNIST with jitter (25 views) and on a
   CIFAR-10 JPEG slice with crop+flip (162 views), plus each store's one-off build time.
5. harness: kdbench's own training path (DistillModule + Lightning Trainer through
   :func:`kdbench.engine.fit_and_test`, as ``kdbench.train`` runs it) against a plain reference loop in
   the style of the published KD code bases (torchvision DataLoader with per-image PIL transforms,
   ``num_workers`` = CPU count, float32, SGD, the KD loss inline with ``F.kl_div``), the two alternated
   epoch by epoch in one process: images/s, the ratio, MFU, peak memory, online and cached teacher.
6. fused: K students per teacher pass (``fuse=K``): K separate runs vs one fused group, K = 1, 4, 8
   (:mod:`kdbench.bench_fused`).

Every figure is measured in this run on this machine (printed in the header); compare ratios
within a table, and absolute numbers only with the same device.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdbench.losses import kd_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 7, inner: int = 5) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def naive_kd(s, t, y, alpha=0.5, tau=4.0):
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


def bench_data(device: torch.device, n_images: int) -> list[dict]:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from kdbench.data import TensorLoader

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_images,), generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    class PILSet(Dataset):
        def __len__(self):
            return n_images

        def __getitem__(self, i):
            return tf(pil[i]), int(y[i])

    rows = []
    for bs in (64, 256):
        ours = TensorLoader(x.to(device), y.to(device), bs, shuffle=True, augment="crop_flip", mean=mean, std=std)
        ref = DataLoader(PILSet(), batch_size=bs, shuffle=True, num_workers=0)

        def run_ours():
            for _batch in ours:
                pass
            _sync(device)

        def run_ref():
            for xb, yb in ref:
                xb.to(device)
            _sync(device)

        a = median_time(run_ours, device, repeats=3, inner=1)
        b = median_time(run_ref, device, repeats=3, inner=1)
        rows.append({"batch": bs, "TensorLoader (img/s)": n_images / a, "DataLoader+PIL (img/s)": n_images / b,
                     "speed-up": b / a})
    return rows


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


SIGNAL_SETUPS = {
    # name: (dataset config, augment family, teacher (arch, kwargs), student (arch, kwargs), train images)
    "MNIST, jitter (25 views)": ({"name": "mnist", "root": "../shared/data"}, "jitter",
                                 ("mnist_cnn", {"width": 32}), ("mnist_cnn", {"width": 8}), 4096),
    "CIFAR-10 JPEG, crop+flip (162 views)": ({"name": "cifar10_jpeg", "root": "../shared/data/cifar10-jpeg.tar.gz",
                                             "cache_dir": "results/.data_cache"}, "crop_flip",
                                            ("resnet20", {}), ("resnet8", {}), 256),
}


def bench_signals(device: torch.device, setups: dict, epochs: int = 3, k: int = 5) -> list[dict]:
    """Median seconds per training epoch (teacher signal + student step) for each signal, side by side."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from kdbench.capture import top_k, write_store
    from kdbench.data import TensorLoader, load_dataset
    from kdbench.data import augment as aug
    from kdbench.losses import topk_kd_loss
    from kdbench.models import build_model
    from kdbench.signals import TopK
    from kdbench.signals.cached import CachedSignal, build
    from kdbench.signals.captured import CapturedSignal
    from kdbench.signals.online import OnlineSignal

    rows = []
    for name, (dcfg, family, (t_arch, t_kw), (s_arch, s_kw), n) in setups.items():
        try:
            data = load_dataset({**dcfg, "train_subset": n, "test_subset": 256, "download": False})
        except Exception as e:  # noqa: BLE001 - the data is optional (../shared/data)
            print(f"(skipping {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        data.val_x = data.val_y = None
        torch.manual_seed(0)
        teacher = build_model(t_arch, data.num_classes, data.input_shape, **t_kw).to(device).eval()
        views = aug.num_views(family)
        bs = 128
        with tempfile.TemporaryDirectory() as tmp:
            p = {"family": family, "views": views, "num_classes": data.num_classes, "dtype": "float32",
                 "n_train": n, "n_val": 0, "n_test": int(data.test_x.shape[0])}
            conf = {"trainer": {"accelerator": "gpu" if device.type == "cuda" else "cpu",
                                "precision": "bf16-mixed" if device.type == "cuda" else "32-true"},
                    "dataset": {"batch_size": 512}}
            t0 = time.perf_counter()
            build(Path(tmp) / "cache", teacher, conf, data, p)
            cache_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.inference_mode():
                cap = {"train": top_k(teacher, data.train_x, data.train_y, family, views, data, 512, k, 1.0),
                       "test": top_k(teacher, data.test_x, data.test_y, "none", 1, data, 512, k, 1.0)}
            write_store(Path(tmp) / "cap", {"k": k, "capture_tau": 1.0}, cap)
            capture_s = time.perf_counter() - t0
            signals = {"online": OnlineSignal(teacher), "cached": CachedSignal(Path(tmp) / "cache", p),
                       "captured": CapturedSignal(Path(tmp) / "cap")}
            per_epoch = {}
            for kind, sig in signals.items():
                sig.to(device)
                torch.manual_seed(0)
                student = build_model(s_arch, data.num_classes, data.input_shape, **s_kw).to(device)
                opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
                loader = TensorLoader(data.train_x, data.train_y, bs, shuffle=True, augment=family,
                                      mean=data.mean, std=data.std, seed=0).to(device)

                def epoch():
                    for batch in loader:
                        t = sig(batch, "train")
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                            s = student(batch.x)
                        if isinstance(t, TopK):
                            loss = topk_kd_loss(s, t.indices, t.log_probs, batch.y, alpha=0.1, tau=4.0, mode="renorm")
                        else:
                            loss = kd_loss(s, t, batch.y, alpha=0.1, tau=4.0)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    loader.set_epoch(loader.epoch + 1)

                per_epoch[kind] = median_time(epoch, device, repeats=epochs, inner=1)
            builds = {"online": 0.0, "cached": cache_s, "captured": capture_s}
            for kind, sec in per_epoch.items():
                saved = per_epoch["online"] - sec
                rows.append({"setup": f"{name}, {n} images", "signal": kind if kind != "captured" else f"captured top-{k}",
                             "s / epoch": sec, "vs online": per_epoch["online"] / sec,
                             "one-off build (s)": builds[kind],
                             "epochs to repay": builds[kind] / saved if kind != "online" and saved > 0 else np.nan})
    return rows


#: everything printed, for ``--out`` (the Markdown file is what the console showed)
_REPORT: list[str] = []


def _emit(text: str = "") -> None:
    print(text, flush=True)
    _REPORT.append(text)


def _print(title: str, rows: list[dict], notes: list[str] | None = None) -> None:
    import pandas as pd

    _emit(f"\n## {title}\n")
    for line in notes or []:
        _emit(line)
    if notes:
        _emit()
    _emit(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g") if rows else "(nothing measured)")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """The file name of this device's results (``results/bench/<slug>.md``)."""
    import os
    import re

    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    return f"cpu_{os.cpu_count()}core"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdbench-bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="all ten CIFAR pairs and larger loss shapes")
    p.add_argument("--quick", action="store_true", help="the smallest sizes (the harness section in a few minutes "
                                                       "on a busy 2-core CPU)")
    p.add_argument("--only", choices=("loss", "data", "step", "signals", "harness", "fused"), default=None)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for MFU (default: a table of GPUs' dense bf16 peaks; CPU: none)")
    p.add_argument("--out", nargs="?", const="auto", default=None, metavar="PATH",
                   help="also write the tables as Markdown (default path: results/bench/<device>.md)")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    device = torch.device(args.device)
    torch.manual_seed(0)
    _REPORT.clear()
    _emit(f"# kdbench bench — device: {device_label(device)}, torch {torch.__version__}")
    quick = not args.full
    if args.only in (None, "loss"):
        _print("KD loss, forward + backward (median)", bench_loss(device, quick))
    if args.only in (None, "data"):
        _print("CIFAR-style batches with random crop (pad 4) + flip, one epoch of 2,048 images",
               bench_data(device, 2048))
    if args.only in (None, "step"):
        from kdbench.bench_harness import conf_pairs

        pairs = conf_pairs() if (args.full or device.type == "cuda") else [("resnet56", "resnet20")]
        batches = (64, 256) if (args.full or device.type == "cuda") else (64,)
        _print("teacher forward + student train step (bf16 autocast on GPU)",
               bench_step(device, pairs, batches, steps=10 if device.type == "cuda" else 2))
    if args.only in (None, "signals"):
        # on a GPU, 8x the images (the CPU sizes keep `make bench` to minutes on 2 cores)
        setups = SIGNAL_SETUPS if device.type != "cuda" else {
            k: (*v[:4], 8 * v[4]) for k, v in SIGNAL_SETUPS.items()}
        _print("teacher signals: one training epoch (median of 3), student step included; speed-up vs online",
               bench_signals(device, setups))
    if args.only in (None, "harness"):
        from kdbench.bench_harness import (
            bench_harness,
            harness_notes,
            harness_setups,
            harness_targets,
            table_rows,
        )

        mode = "quick" if args.quick else "full" if args.full else "default"
        setups = harness_setups(device, mode)
        rows = bench_harness(device, setups, given_peak=args.peak_tflops)
        _print("harness vs reference loop: kdbench's training path against a plain DataLoader+PIL loop, "
               "alternated epoch by epoch", table_rows(rows), harness_notes(device, setups, args.peak_tflops))
        _emit()
        for line in harness_targets(device, rows):
            _emit(line)
    if args.only in (None, "fused"):
        from kdbench.bench_fused import bench_fused

        rows = bench_fused(device, quick=not args.full)
        targets = [r.pop("target") for r in rows if "target" in r]
        _print("K students per teacher pass: K separate runs vs one fused group (MNIST, Hinton MLP pair, online "
               "teacher; min of 3 alternated repeats)", rows)
        _emit()
        for line in targets:
            _emit(f"Target, fused K = 8 at least 1.5x faster than 8 separate runs: {line}")
    if args.out:
        from pathlib import Path

        out = Path("results") / "bench" / f"{device_slug(device)}.md" if args.out == "auto" else Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(_REPORT) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
