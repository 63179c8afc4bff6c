"""``make bench``'s "harness vs reference loop" section (``python -m kdbench.bench --only harness``).

(a) kdbench's own path: a :class:`~kdbench.distill.DistillModule` fitted by a Lightning Trainer through
    :func:`kdbench.engine.fit_and_test` (the loaders, precision, determinism, compile and checkpoint
    settings a run gets from ``conf/trainer/default.yaml``'s ``auto`` values on this device), with the
    ``online`` or the ``cached`` teacher signal.
(b) a reference loop written the way the published KD code bases train (torchvision ``DataLoader``
    over a dataset that builds a PIL image per example and applies torchvision transforms, ``num_workers``
    = the CPU count, float32, batch as given, SGD, the KD loss inline with ``F.kl_div``, the teacher in
    eval mode under ``no_grad``, per-step ``loss.item()`` and per-batch accuracy with ``.item()``). It
    always runs its teacher online: the loops it stands for have no cache.

Both train the same pair (same architectures and initial weights) on the same images with the same
batch size and the same augmentation family, and each epoch validates on the same held-out images.
They alternate epoch by epoch inside one process (a callback runs one reference epoch after each of
kdbench's epochs), so a machine that slows down slows both. The first epoch of each (compilation,
cuDNN autotuning, worker start-up) is left out: the figures are medians over the later epochs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from kdbench.bench.table import Section
from kdbench.bench.timing import sync

#: dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of ``torch.cuda.get_device_name``;
#: the first match wins (so the PCIe / NVL H100 come before the SXM one)
GPU_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0), ("RTX 4090", 165.0),
    ("V100", 125.0), ("T4", 65.0),
)
#: CIFAR's training set and the published recipe's length, for the extrapolated full run
CIFAR_TRAIN, RECIPE_EPOCHS = 50_000, 240
TARGETS = {"cpu_mlp_time_ratio": 1.1, "gpu_speedup": 10.0, "gpu_online_min": 5.0, "gpu_cached_min": 2.0}
_CIFAR = {"name": "cifar10_jpeg", "root": "../shared/data/cifar10-jpeg.tar.gz", "cache_dir": "results/.data_cache"}
_MNIST = {"name": "mnist", "root": "../shared/data"}
TARGET_PAIR = ("resnet32x4", "resnet8x4")
EXTRAPOLATED = f"{RECIPE_EPOCHS} ep x 50k, min"


def conf_pairs() -> list[tuple[str, str]]:
    """The CIFAR teacher -> student pairs of ``conf/pair/*.yaml`` (one list: the configs)."""
    import yaml

    out = []
    for f in sorted((Path(__file__).resolve().parents[1] / "conf" / "pair").glob("*.yaml")):
        c = yaml.safe_load(f.read_text())
        out.append((str(c["teacher_arch"]), str(c["student_arch"])))
    if not out:
        raise FileNotFoundError("no conf/pair/*.yaml next to kdbench (kdbench/conf/pair)")
    return out


def peak_tflops(device: torch.device, given: float | None = None) -> float | None:
    """The peak used for MFU: ``given`` (``--peak-tflops``), else the table's entry for this GPU, else None."""
    if given is not None:
        return float(given)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_TFLOPS if k in name), None)


def harness_setups(device: torch.device, mode: str = "default") -> list[dict]:
    """What to measure on this device: on CPU the MNIST MLP pair and resnet56 -> resnet20 on a CIFAR-10
    JPEG slice; on a GPU every pair of ``conf/pair/*.yaml`` at batch 64 and 256."""
    if device.type != "cuda":
        n_mnist, n_cifar, epochs = {"quick": (2048, 128, 3), "default": (10_000, 512, 4),
                                    "full": (20_000, 2048, 5)}[mode]
        return [
            dict(name="MNIST, Hinton MLPs 784-1200-1200 -> 784-800-800", dataset=_MNIST, augment="none",
                 teacher=("hinton_teacher", {}), student=("hinton_student", {}), n_train=n_mnist, batches=(64,),
                 # augment none: one view per image, the cache costs one teacher epoch
                 signals=("online", "cached"), epochs=epochs),
            dict(name="CIFAR-10 JPEG, resnet56 -> resnet20", dataset=_CIFAR, augment="crop_flip",
                 teacher=("resnet56", {}), student=("resnet20", {}), n_train=n_cifar, batches=(64,),
                 # crop+flip: 162 views per image, a cache of them costs 162 teacher epochs (minutes here)
                 signals=("online",) if mode == "quick" else ("online", "cached"), epochs=epochs),
        ]
    n, epochs = {"quick": (2048, 3), "default": (10_000, 4), "full": (CIFAR_TRAIN, 5)}[mode]
    return [dict(name=f"CIFAR-10 JPEG, {t} -> {s}", dataset=_CIFAR, augment="crop_flip", teacher=(t, {}),
                 student=(s, {}), n_train=n, batches=(64, 256), signals=("online", "cached"), epochs=epochs,
                 pair=(t, s)) for t, s in conf_pairs()]


def _load(setup: dict):
    """The setup's images (a real slice), or random uint8 images of CIFAR's shape when the data is missing."""
    from kdbench.data import TensorData, load_dataset

    n, n_eval = int(setup["n_train"]), max(64, int(setup["n_train"]) // 5)
    try:
        data = load_dataset({**setup["dataset"], "train_subset": n, "test_subset": n_eval, "download": False})
        return data, "real"
    except Exception as e:  # noqa: BLE001 - the data is optional (../shared/data)
        if setup["dataset"]["name"] != "cifar10_jpeg":
            print(f"(skipping {setup['name']}: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
            return None, None
        g = torch.Generator().manual_seed(0)
        data = TensorData(name="random", train_x=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                          train_y=torch.randint(0, 10, (n,), generator=g),
                          test_x=torch.randint(0, 256, (n_eval, 3, 32, 32), dtype=torch.uint8, generator=g),
                          test_y=torch.randint(0, 10, (n_eval,), generator=g), num_classes=10,
                          mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), default_augment="crop_flip")
        return data, "random tensors (no CIFAR-10 JPEG copy at ../shared/data)"


# ---- (b) the reference loop ------------------------------------------------------------------------

class _PILImages(Dataset):
    """uint8 images kept as HWC numpy arrays; each item becomes a PIL image, then the transforms run
    (what ``torchvision.datasets.CIFAR10`` / ``MNIST`` do per item)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.images[i]
        img = Image.fromarray(img[:, :, 0], mode="L") if img.shape[2] == 1 else Image.fromarray(img)
        return self.transform(img), self.labels[i]


class ReferenceLoop:
    """A plain KD training loop: DataLoader + PIL transforms, float32, SGD, inline KD loss."""

    def __init__(self, data, augment: str, batch_size: int, teacher: torch.nn.Module, student: torch.nn.Module,
                 device: torch.device, alpha: float = 0.1, tau: float = 4.0):
        from torchvision import transforms

        if augment == "crop_flip":
            aug = [transforms.RandomCrop(data.train_x.shape[-1], padding=4), transforms.RandomHorizontalFlip()]
        elif augment == "none":
            aug = []
        else:
            raise ValueError(f"the reference loop knows augment none and crop_flip, not {augment!r}")
        norm = [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
        workers = os.cpu_count() or 1
        self.train = DataLoader(_PILImages(data.train_x, data.train_y, transforms.Compose(aug + norm)),
                                batch_size=batch_size, shuffle=True, num_workers=workers)
        self.val = DataLoader(_PILImages(data.test_x, data.test_y, transforms.Compose(norm)),
                              batch_size=batch_size, shuffle=False, num_workers=workers)
        self.teacher, self.student, self.device = teacher.to(device).eval(), student.to(device), device
        self.opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.alpha, self.tau = alpha, tau

    def epoch(self) -> None:
        dev, tau = self.device, self.tau
        self.student.train()
        loss_sum, seen = 0.0, 0
        with torch.enable_grad():
            for x, y in self.train:
                x, y = x.to(dev), y.to(dev)
                with torch.no_grad():
                    t = self.teacher(x)
                s = self.student(x)
                kl = F.kl_div(F.log_softmax(s / tau, dim=1), F.softmax(t / tau, dim=1), reduction="batchmean")
                loss = self.alpha * F.cross_entropy(s, y) + (1 - self.alpha) * kl * tau * tau
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                loss_sum += loss.item() * len(y)
                seen += len(y)
        self.student.eval()
        correct = 0
        with torch.no_grad():
            for x, y in self.val:
                correct += (self.student(x.to(dev)).argmax(1) == y.to(dev)).sum().item()
        self.last = {"train_loss": loss_sum / max(1, seen), "val_acc": correct / len(self.val.dataset)}  # as logged


# ---- (a) kdbench's path, with the reference's epochs in between -------------------------------------

class _Alternate(Callback):
    """Times kdbench's epochs (one ``on_train_epoch_start`` to the next, training + validation +
    checkpoint) and runs one reference epoch, timed on its own, after each."""

    def __init__(self, reference: ReferenceLoop, device: torch.device):
        self.reference, self.device = reference, device
        self.marks: list[float] = []
        self.ref_s: list[float] = []
        self.mem: list[int] = []
        self.ref_mem: list[int] = []

    def _mark(self) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            self.mem.append(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        self.reference.epoch()
        sync(self.device)
        self.ref_s.append(time.perf_counter() - t)
        if self.device.type == "cuda":
            self.ref_mem.append(torch.cuda.max_memory_allocated(self.device))

    def on_train_end(self, trainer, pl_module) -> None:
        self._mark()

    def epochs(self) -> list[float]:
        """kdbench's epoch times, the reference's excluded."""
        return [b - a - r for a, b, r in zip(self.marks, self.marks[1:], self.ref_s, strict=False)]


def flops_per_image(t_arch: str, s_arch: str, num_classes: int, shape: tuple, device: torch.device,
                    n: int = 2) -> dict[str, float]:
    """Matmul/conv FLOPs per image from ``torch.utils.flop_counter``: teacher forward, student forward +
    backward (a training step), student forward (evaluation)."""
    from torch.utils.flop_counter import FlopCounterMode

    from kdbench.models import build_model

    teacher = build_model(t_arch, num_classes, shape).to(device).eval()
    student = build_model(s_arch, num_classes, shape).to(device)
    x = torch.randn(n, *shape, device=device)
    out = {}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        teacher(x)
    out["teacher_fwd"] = fc.get_total_flops() / n
    with FlopCounterMode(display=False) as fc:
        student.train()(x).float().logsumexp(-1).sum().backward()
    out["student_step"] = fc.get_total_flops() / n
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        student.eval()(x)
    out["student_fwd"] = fc.get_total_flops() / n
    return out


def _quiet() -> None:
    import pytorch_lightning  # noqa: F401  (sets its logger level on import)

    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")


def _kdbench_with_reference(setup: dict, data, batch: int, signal, device: torch.device, ckpt_dir: Path,
                            seed: int = 0) -> _Alternate:
    """One kdbench fit of ``setup['epochs']`` epochs with a reference epoch after each of its epochs."""
    import pytorch_lightning as pl

    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, check_every, fit_and_test
    from kdbench.methods import build_method
    from kdbench.models import build_model

    (t_arch, t_kw), (s_arch, s_kw) = setup["teacher"], setup["student"]
    acc = "gpu" if device.type == "cuda" else "cpu"
    pl.seed_everything(seed, verbose=False)
    student = build_model(s_arch, data.num_classes, data.input_shape, **s_kw)
    ref_student = build_model(s_arch, data.num_classes, data.input_shape, **s_kw)
    ref_student.load_state_dict(student.state_dict())  # the same initial weights
    torch.manual_seed(seed + 1)
    ref_teacher = build_model(t_arch, data.num_classes, data.input_shape, **t_kw)
    if getattr(signal, "teacher", None) is not None:
        ref_teacher.load_state_dict(signal.teacher.state_dict())
    reference = ReferenceLoop(data, setup["augment"], batch, ref_teacher, ref_student, device)
    alternate = _Alternate(reference, device)
    # conf/trainer/default.yaml's values: every `auto` resolves as it does for a run on this device
    spec = FitSpec(max_epochs=int(setup["epochs"]), batch_size=batch, eval_batch_size=1000, augment=setup["augment"],
                   accelerator=acc, precision="auto", deterministic="auto", channels_last="auto", compile="auto",
                   progress=False, data_seed=seed)
    module = DistillModule(student, data.num_classes, OptimSpec(lr=0.05, momentum=0.9, weight_decay=5e-4),
                           SchedSpec(name="multistep", milestones=(150, 180, 210)),
                           method=build_method("kd", {"alpha": 0.1, "tau": 4.0}), signal=signal,
                           check_finite_every=check_every("auto", acc))
    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch ETA lines
        fit_and_test(module, data, spec, ckpt_dir=ckpt_dir, resume=False, extra_callbacks=[alternate])
    return alternate


def _teacher(setup: dict, data, seed: int = 0) -> torch.nn.Module:
    from kdbench.models import build_model

    t_arch, t_kw = setup["teacher"]
    torch.manual_seed(seed + 1)
    return build_model(t_arch, data.num_classes, data.input_shape, **t_kw).eval()


def _cached_signal(setup: dict, data, teacher: torch.nn.Module, device: torch.device, folder: Path):
    """A teacher cache built the way ``teacher_signal=cached`` builds it (every (image, view), plus the
    evaluation images), and its one-off build time."""
    from kdbench.config import resolve_channels_last, resolve_precision
    from kdbench.data import augment as aug
    from kdbench.signals.cached import CachedSignal, build, storage_dtype

    acc = "gpu" if device.type == "cuda" else "cpu"
    conf = {"trainer": {"accelerator": acc, "precision": resolve_precision("auto", acc),
                        "channels_last": resolve_channels_last("auto", acc)},
            "dataset": {"batch_size": 512, "augment": setup["augment"]}, "teacher_cache": {"dtype": "auto"}}
    family = setup["augment"] if data.is_image else "none"
    p = {"family": family, "views": aug.num_views(family), "num_classes": data.num_classes,
         "dtype": storage_dtype(conf), "n_train": int(data.train_x.shape[0]), "n_val": 0,
         "n_test": int(data.test_x.shape[0])}
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the build's progress line
        build(folder, teacher, conf, data, p)
    return CachedSignal(folder, p), time.perf_counter() - t0


def bench_harness(device: torch.device, setups: list[dict], given_peak: float | None = None,
                  on_row: Callable[[dict], object] | None = None) -> list[dict]:
    """One row per (setup, batch, teacher signal): kdbench and the reference loop side by side (keys
    starting with ``_`` are for the target lines, not the table); ``on_row`` sees each row as it is measured."""
    from kdbench.signals.online import OnlineSignal

    _quiet()
    peak = peak_tflops(device, given_peak)
    rows = []
    for setup in setups:
        data, source = _load(setup)
        if data is None:
            continue
        setup["source"] = source
        n_train, n_eval = int(data.train_x.shape[0]), int(data.test_x.shape[0])
        f = flops_per_image(setup["teacher"][0], setup["student"][0], data.num_classes, data.input_shape, device)
        with tempfile.TemporaryDirectory() as tmp:
            signals = {}
            for kind in setup["signals"]:
                if kind == "online":
                    signals[kind] = (lambda setup=setup, data=data: OnlineSignal(_teacher(setup, data)), 0.0)
                else:
                    sig, built = _cached_signal(setup, data, _teacher(setup, data).to(device), device,
                                                Path(tmp) / "cache")
                    signals[kind] = (lambda sig=sig: sig, built)
            for batch in setup["batches"]:
                for kind, (make, built) in signals.items():
                    alt = _kdbench_with_reference(setup, data, batch, make(), device,
                                                       Path(tmp) / f"ckpt-{kind}-{batch}")
                    kd, ref = alt.epochs(), alt.ref_s
                    kd_s, ref_s = statistics.median(kd[1:] or kd), statistics.median(ref[1:] or ref)
                    # the FLOPs an epoch needs (the cached signal needs no teacher forward); eval: the student
                    kd_flops = n_train * (f["student_step"] + (f["teacher_fwd"] if kind == "online" else 0)) \
                        + n_eval * f["student_fwd"]
                    ref_flops = n_train * (f["student_step"] + f["teacher_fwd"]) + n_eval * f["student_fwd"]
                    row = {"setup": setup["name"], "batch": batch, "signal": kind,
                           "kdbench img/s": n_train / kd_s, "reference img/s": n_train / ref_s,
                           "speed-up": ref_s / kd_s,
                           "kdbench TFLOP/s": kd_flops / kd_s / 1e12, "reference TFLOP/s": ref_flops / ref_s / 1e12,
                           "kdbench MFU": _pct(kd_flops / kd_s, peak), "reference MFU": _pct(ref_flops / ref_s, peak),
                           "kdbench peak MiB": _mib(alt.mem[1:] or alt.mem, device),
                           "reference peak MiB": _mib(alt.ref_mem[1:] or alt.ref_mem, device),
                           "kdbench 1st epoch (s)": kd[0]}
                    full_min = kd_s * CIFAR_TRAIN / n_train * RECIPE_EPOCHS / 60 \
                        if setup["dataset"]["name"] == "cifar10_jpeg" else None
                    row.update({"cache build (s)": f"{built:.3g}" if kind == "cached" else "-",
                                EXTRAPOLATED: f"{full_min:.3g}" if full_min is not None else "-",
                                "_pair": setup.get("pair"), "_n_train": n_train, "_build_s": built,
                                "_full_min": full_min})
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    return rows


def _pct(flops_per_s: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{100 * flops_per_s / (peak * 1e12):.2f}%"


def _mib(values: list[int], device: torch.device) -> str:
    if device.type != "cuda" or not values:
        return "n/a"
    return f"{max(values) / 2**20:.0f}"


def harness_notes(device: torch.device, setups: list[dict], given_peak: float | None) -> list[str]:
    peak = peak_tflops(device, given_peak)
    lines = [
        "kdbench: DistillModule + Lightning Trainer via kdbench.engine.fit_and_test with conf/trainer/default.yaml's "
        "`auto` settings for this device (precision, deterministic, channels_last, compile), TensorLoader, "
        "checkpoint every epoch. Reference: torchvision DataLoader + per-image PIL transforms, "
        f"num_workers={os.cpu_count()}, float32, SGD, inline F.kl_div KD loss, teacher online (eval, no_grad).",
        "Both: same pair and initial weights (untrained: speed only), same images, batch, augmentation; each epoch "
        "trains then validates on a held-out fifth as many images. images/s = training images / whole-epoch "
        "seconds, median over epochs 2.. (epoch 1: compile, autotuning, worker start-up); the two alternate epoch by "
        "epoch. speed-up = kdbench img/s / reference img/s (its inverse is the per-epoch time ratio).",
        "MFU = the FLOPs an epoch needs (torch.utils.flop_counter: teacher forward unless cached, student forward + "
        "backward, student forward on the eval images) / epoch seconds / peak"
        + (f" ({peak:g} TFLOP/s dense bf16{' as given' if given_peak is not None else ''})." if peak else
           " (none known for this device: n/a; pass --peak-tflops)."),
        "Process-wide flags kdbench's Trainer sets (cudnn.benchmark on a GPU, deterministic algorithms on CPU) apply "
        "to the reference loop too (the published GPU loops set cudnn.benchmark=True themselves).",
        "Peak memory: torch.cuda.max_memory_allocated per epoch (max over steady epochs); n/a on CPU (the process's "
        "max RSS cannot be split between two loops running in one process).",
        f"`{EXTRAPOLATED}`: kdbench's steady epoch time scaled to a 50,000-image epoch, times "
        f"{RECIPE_EPOCHS} epochs (CIFAR-100's recipe; 100 vs 10 classes costs the same).",
    ]
    for s in setups:
        if s.get("source") and s["source"] != "real":
            lines.append(f"{s['name']}: data = {s['source']}.")
        sizes = f"{s['n_train']} training images, {s['epochs']} epochs"
        lines.append(f"{s['name']}: {sizes}, augment {s['augment']}; signals {', '.join(s['signals'])}.")
    return lines


def harness_targets(device: torch.device, rows: list[dict]) -> list[str]:
    """Issue 13's targets, as lines marked MET / NOT MET (never a timed test)."""
    out = ["Targets:"]

    def mark(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    mlp = [r for r in rows if r["setup"].startswith("MNIST") and r["signal"] == "online"]
    for r in mlp:
        ratio = 1 / r["speed-up"]
        out.append(f"- CPU, MNIST MLP pair, batch {r['batch']}: kdbench epoch time / reference epoch time = "
                   f"{ratio:.2f} (target <= {TARGETS['cpu_mlp_time_ratio']}): {mark(ratio <= TARGETS['cpu_mlp_time_ratio'])}")
    if not mlp:
        out.append("- CPU, MNIST MLP pair: not measured in this run")
    gpu = [r for r in rows if r.get("_pair") == TARGET_PAIR]
    if device.type != "cuda" or not gpu:
        out.append("- GPU targets (resnet32x4 -> resnet8x4: >= 10x the reference's images/s; 240 epochs <= 5 min online, "
                   "<= 2 min cached): not measured (no GPU in this run)")
        return out
    ref64 = [r for r in gpu if r["batch"] == 64 and r["signal"] == "online"]
    ref_ips = ref64[0]["reference img/s"] if ref64 else max(r["reference img/s"] for r in gpu)
    best = max((r for r in gpu if r["signal"] == "online"), key=lambda r: r["kdbench img/s"])
    speed = best["kdbench img/s"] / ref_ips
    out.append(f"- GPU, resnet32x4 -> resnet8x4: kdbench online (batch {best['batch']}) {best['kdbench img/s']:.0f} img/s "
               f"vs the reference loop (batch 64) {ref_ips:.0f} img/s = {speed:.1f}x (target >= "
               f"{TARGETS['gpu_speedup']:g}x): {mark(speed >= TARGETS['gpu_speedup'])}")
    for kind, key in (("online", "gpu_online_min"), ("cached", "gpu_cached_min")):
        cand = [r for r in gpu if r["signal"] == kind and r["_full_min"] is not None]
        if not cand:
            out.append(f"- GPU, {RECIPE_EPOCHS}-epoch run, {kind}: not measured")
            continue
        r = min(cand, key=lambda r: r["_full_min"])
        m = r["_full_min"]
        extra = f" (+ {r['_build_s'] * CIFAR_TRAIN / r['_n_train'] / 60:.1f} min one-off cache build)" \
            if kind == "cached" else ""
        out.append(f"- GPU, {RECIPE_EPOCHS}-epoch CIFAR KD run, {kind} (batch {r['batch']}), extrapolated from steady "
                   f"epochs: {m:.1f} min{extra} (target <= {TARGETS[key]:g} min): {mark(m <= TARGETS[key])}")
    return out


def section(device: torch.device, mode: str, given_peak: float | None) -> Section:
    """The setups of :func:`harness_setups` for ``mode`` (quick, default, full), their notes and target lines."""
    setups = harness_setups(device, mode)
    rows = bench_harness(device, setups, given_peak=given_peak)
    return Section("harness vs reference loop: kdbench's training path against a plain DataLoader+PIL loop, "
                   "alternated epoch by epoch", rows, harness_notes(device, setups, given_peak),
                   harness_targets(device, rows))
