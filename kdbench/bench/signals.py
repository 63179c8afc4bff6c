"""Bench section ``signals``: one training epoch with the teacher ``online`` vs ``cached`` (exact, per
(image, view)) vs ``captured`` (top-5 log-probs, no teacher), plus each store's one-off build time."""

from __future__ import annotations

import time

import torch

from kdbench.bench.table import Section
from kdbench.bench.timing import median_time
from kdbench.losses import kd_loss

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

    from kdbench.capture import top_k
    from kdbench.data import TensorLoader, load_dataset
    from kdbench.data import augment as aug
    from kdbench.losses import topk_kd_loss
    from kdbench.models import build_model
    from kdbench.signals import TopK
    from kdbench.signals.cached import CachedSignal, build
    from kdbench.signals.captured import CapturedSignal
    from kdbench.signals.online import OnlineSignal
    from kdbench.stores import make_header, write_store

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
            write_store(Path(tmp) / "cap", make_header(k=k, capture_tau=1.0, num_classes=data.num_classes, family=family,
                                                       arrays=cap, dataset={"name": name}, teacher={}), cap)
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

                def epoch(sig=sig, student=student, opt=opt, loader=loader):
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


def section(device: torch.device) -> Section:
    """The MNIST and CIFAR-10 setups; on a GPU with 8x the images (the CPU sizes keep ``make bench`` to
    minutes on 2 cores)."""
    setups = SIGNAL_SETUPS if device.type != "cuda" else {k: (*v[:4], 8 * v[4]) for k, v in SIGNAL_SETUPS.items()}
    return Section("teacher signals: one training epoch (median of 3), student step included; speed-up vs online",
                   bench_signals(device, setups))
