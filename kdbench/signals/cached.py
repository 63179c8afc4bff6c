"""``cached``: the frozen teacher's logits for every (training image, view), computed once, then looked up.

A frozen teacher's output is a pure function of (image, view), and the augmentation families have
finitely many views (none 1, flip 2, jitter 25, crop+flip 162): so the teacher runs once per
(idx, view) and training reads its logits by the batch's ``(idx, view)``. Unlike caches that keep
one augmented view per image and reuse it every epoch (which silently changes the method), this
is exact: every view a batch draws has its own entry. Validation and test logits (view 0) are
cached too.

The cache lives beside its teacher in the registry, ``<entry>/cache/<key>/``, keyed by the teacher
key, the dataset identity (including the validation split), the augmentation family, the memory
format, the precision the teacher ran in and the storage dtype; it is built under a file lock
(the jobs of a sweep build it once) into a temporary folder renamed into place with ``meta.json``
written last, and memory-mapped when read. ``float32`` storage (the default for a float32 run) makes
it bit-equal to the online teacher on the CPU; ``bfloat16`` halves it (the default under bf16
autocast, where the online teacher's logits are bfloat16 anyway).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from kdbench.data import TensorLoader
from kdbench.data import augment as aug
from kdbench.errors import ConfigError
from kdbench.signals import SPLITS, register_signal, table_for

log = logging.getLogger("kdbench")

DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.uint16),
          "float16": (torch.float16, np.float16)}
META = "meta.json"


def storage_dtype(conf: dict) -> str:
    """``teacher_cache.dtype``; ``auto`` stores what the online teacher would produce under the run's precision."""
    want = (conf.get("teacher_cache") or {}).get("dtype", "auto")
    if want != "auto":
        return want
    precision = str((conf.get("trainer") or {}).get("precision", "32-true"))
    return {"bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "16-mixed": "float16"}.get(precision, "float32")


def augment_family(conf: dict, data) -> str:
    return aug.family_of(conf["dataset"].get("augment"), data)


def plan(conf: dict, data) -> dict:
    """What the cache holds and how many bytes it needs (N x V x C x bytes, plus val and test)."""
    family = augment_family(conf, data)
    views = aug.num_views(family) if data.is_image else 1
    n_train, c = int(data.train_x.shape[0]), int(data.num_classes)
    n_val = int(data.val_x.shape[0]) if data.val_x is not None else 0
    n_test = int(data.test_x.shape[0])
    dtype = storage_dtype(conf)
    item = torch.empty((), dtype=DTYPES[dtype][0]).element_size()
    return {"family": family, "views": views, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "num_classes": c, "dtype": dtype, "bytes": (n_train * views + n_val + n_test) * c * item,
            "formula": f"{n_train} x {views} x {c} x {item} bytes"}


def preflight(conf: dict, data) -> None:
    """Refuse, before any work, a cache that cannot fit: the configured cap, then the free disk space."""
    if getattr(data, "is_tokens", False):
        raise ConfigError("teacher_signal", "cached holds one logit vector per (image, view); for sequence data use "
                                            "online, or captured (top-k per position, `kdbench capture`)")
    p = plan(conf, data)
    d = conf["distill"]
    for key in ("teacher_train_mode", "teacher_grad"):
        if d.get(key):
            raise ConfigError("teacher_signal", f"cached needs a frozen teacher; distill.{key}=true changes it "
                                                "during training (use teacher_signal=online)")
    cap_gb = float((conf.get("teacher_cache") or {}).get("max_gb", 16))
    gib = p["bytes"] / 2**30
    if gib > cap_gb:
        raise ConfigError("teacher_cache.max_gb", f"the cached teacher would need {gib:.2f} GiB ({p['formula']} "
                                                  f"for training, plus val/test), over the cap of {cap_gb:g} GiB; "
                                                  "raise it, store bfloat16 (teacher_cache.dtype), or use online")


def cache_key(teacher_key: str, conf: dict, data, p: dict) -> str:
    from kdbench.teachers import dataset_identity

    fields = {"teacher": teacher_key, "dataset": dataset_identity(conf["dataset"], data), "family": p["family"],
              "views": p["views"], "dtype": p["dtype"], "precision": conf["trainer"].get("precision"),
              "channels_last": bool(conf["trainer"].get("channels_last")) and data.is_image,
              "val": [conf["dataset"].get("val_size"), conf["dataset"].get("split_seed")]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _Progress:
    def __init__(self, total: int, every_s: float = 2.0):
        self.total, self.every, self.t0, self.last = total, every_s, time.time(), 0.0

    def update(self, done: int) -> None:
        now = time.time()
        if now - self.last >= self.every or done == self.total:
            self.last = now
            print(f"\rkdbench: caching teacher logits {done}/{self.total} batches ({now - self.t0:.0f} s)",
                  end="" if done < self.total else "\n", file=sys.stderr, flush=True)


def _teacher_device(conf: dict) -> torch.device:
    acc = conf["trainer"].get("accelerator", "cpu")
    return torch.device("cuda") if acc in ("gpu", "cuda") and torch.cuda.is_available() else torch.device("cpu")


@torch.inference_mode()
def build(folder: Path, teacher: nn.Module, conf: dict, data, p: dict) -> None:
    """Run the teacher once per (training image, view), and once per validation / test image."""
    device = _teacher_device(conf)
    channels_last = bool(conf["trainer"].get("channels_last")) and data.is_image
    teacher = teacher.to(device).eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    precision = str(conf["trainer"].get("precision"))
    autocast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    bs = int(conf["dataset"]["batch_size"])
    tdt, ndt = DTYPES[p["dtype"]]
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    common = dict(mean=data.mean, std=data.std, channels_last=channels_last)
    splits = [("train", data.train_x, data.train_y, p["family"], p["views"]),
              ("test", data.test_x, data.test_y, "none", 1)]
    if data.val_x is not None:
        splits.insert(1, ("val", data.val_x, data.val_y, "none", 1))
    total = sum(-(-x.shape[0] // bs) * v for _, x, _, _, v in splits)
    progress, done = _Progress(total), 0
    for name, x, y, family, views in splits:
        loader = TensorLoader(x, y, bs, augment=family if data.is_image else "none", **common).to(device)
        store = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=ndt,
                                          shape=(x.shape[0], views, p["num_classes"]))
        for v in range(views):
            for start in range(0, x.shape[0], bs):
                idx = torch.arange(start, min(start + bs, x.shape[0]), device=device)
                xb = loader.view_batch(idx, torch.full_like(idx, v))
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    out = teacher(xb)
                store[start:start + len(idx), v] = out.to(tdt).cpu().view(
                    torch.uint16 if p["dtype"] == "bfloat16" else tdt).numpy()
                done += 1
                progress.update(done)
        store.flush()
        del store
    (tmp / META).write_text(json.dumps({**p, "built_s": round(time.time() - progress.t0, 1)}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _open(folder: Path, name: str, dtype: str) -> Tensor:
    import warnings

    arr = np.load(folder / f"{name}.npy", mmap_mode="r")
    with warnings.catch_warnings():  # read-only by design: lookups copy rows out, nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


class CachedSignal:
    """Teacher logits looked up by ``(batch.idx, batch.view)`` (train) or ``batch.idx`` (val, test)."""

    kind = "cached"
    trainable_parameters: list = []

    def __init__(self, folder: Path, meta: dict, on_device: bool | str = "auto"):
        self.folder, self.meta, self.on_device = folder, meta, on_device
        self.tables = {s: _open(folder, s, meta["dtype"]) for s in SPLITS
                       if (folder / f"{s}.npy").exists()}
        self.device = torch.device("cpu")
        self.resident = False  # the tables are in the device's memory (looked up there, no copy per batch)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables.values())

    def to(self, device: torch.device) -> CachedSignal:
        """Follow the student; on a GPU (or with ``on_device=true``) the tables move into its memory
        once, so a batch's lookup is one gather there instead of a host gather and a copy."""
        self.device = torch.device(device)
        if self.resident or self.on_device is False:
            return self
        fits = self.on_device is True
        if self.on_device == "auto" and self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            fits = self.nbytes() < free // 4
        if fits:
            self.tables = {s: t.to(self.device) if self.device.type != "cpu" else t.clone()
                           for s, t in self.tables.items()}
            self.resident = True
        return self

    def __call__(self, batch, split: str) -> Tensor:
        table = table_for(self.tables, split)
        where = table.device
        idx = batch.idx.to(where)
        view = batch.view.to(where) if split == "train" else torch.zeros_like(idx)
        return table[idx, view].to(self.device, non_blocking=True).float()


@register_signal("cached", preflight=preflight)
def _cached(*, teacher: nn.Module | None, conf: dict, data, teacher_meta: dict | None = None, **_) -> CachedSignal:
    from filelock import FileLock

    if teacher is None or not teacher_meta or not teacher_meta.get("path"):
        raise ConfigError("teacher_signal", "cached needs a registry teacher (not oracle or none)")
    preflight(conf, data)
    p = plan(conf, data)
    folder = Path(teacher_meta["path"]) / "cache" / cache_key(str(teacher_meta.get("key")), conf, data, p)
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    with FileLock(str(folder) + ".lock"):
        if not (folder / META).is_file():
            if p["bytes"] > free:
                raise ConfigError("teacher_signal", f"the cached teacher needs {p['bytes'] / 2**30:.2f} GiB "
                                                    f"({p['formula']}), the disk at {folder.parent} has "
                                                    f"{free / 2**30:.2f} GiB free")
            log.info("teacher cache %s: building (%s)", folder, p["formula"])
            build(folder, teacher, conf, data, p)
    return CachedSignal(folder, json.loads((folder / META).read_text()),
                        on_device=(conf.get("teacher_cache") or {}).get("on_device", "auto"))
