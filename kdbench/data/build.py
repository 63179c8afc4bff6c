"""What every loader of labelled examples shares: fixed class-balanced subsets, label checks,
channel statistics, the finished :class:`TensorData`, and a progress line for slow loads."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import torch

from kdbench.data import keys
from kdbench.data.core import TensorData
from kdbench.errors import DataError

#: seed of the fixed, class-balanced ordering that ``train_subset``/``test_subset`` take prefixes of
SUBSET_SEED = 1234


def stratified_order(y: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed permutation of ``range(len(y))`` whose every prefix is class-balanced (±1 per class).

    Each example gets its rank within its class under a seeded random permutation; examples are then
    ordered by rank (ties in random order), so the first ``k`` hold ``~k / num_classes`` per class.
    """
    n = y.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    yp = y[perm]
    by_class = torch.sort(yp, stable=True).indices
    ys = yp[by_class]
    counts = torch.bincount(ys)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[by_class] = torch.arange(n) - starts[ys]
    return perm[torch.sort(rank, stable=True).indices]


def subset_indices(y: torch.Tensor, k: int | None) -> torch.Tensor | None:
    """Indices (sorted) of the fixed ``k``-example subset of labels ``y``; None means keep all."""
    if k is None or k >= y.numel():
        return None
    return stratified_order(y, SUBSET_SEED)[:k].sort().values


def check_labels(name: str, split: str, y: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """``y`` as int64 ``[n]``, refused unless it has one label in ``[0, num_classes)`` per example."""
    y = torch.as_tensor(y).reshape(-1).to(torch.int64)
    if y.numel() != n:
        raise DataError("dataset", f"{name}: {split} has {n} examples but {y.numel()} labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError("dataset", f"{name}: {split} labels out of range [0, {num_classes}): "
                                   f"found {int(y.min())}..{int(y.max())}")
    return y


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images ``[N, C, H, W]`` on the 0..1 scale (chunked, float64)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(2048):
        f = chunk.transpose(0, 1).reshape(c, -1).to(torch.float64)
        s += f.sum(1)
        ss += (f * f).sum(1)
    count = max(x.shape[0] * x.shape[2] * x.shape[3], 1)
    mean = s / count / 255.0
    var = (ss / count / 255.0**2 - mean**2).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def finish(name: str, cfg: Mapping, *, train_x, train_y, test_x, test_y, num_classes: int,
           mean, std, default_augment: str, class_names=None, info: dict | None = None,
           subset: bool = True) -> TensorData:
    """Validate labels, take the configured subsets (unless the loader already did) and build the TensorData."""
    train_y = check_labels(name, "train", train_y, train_x.shape[0], num_classes)
    test_y = check_labels(name, "test", test_y, test_x.shape[0], num_classes)
    info = dict(info or {})
    info.setdefault("full_sizes", {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])})
    if subset:
        for split in ("train", "test"):
            k = keys.subset(cfg, split)
            if k is None:
                continue
            info[f"{split}_subset"] = k
            y = train_y if split == "train" else test_y
            idx = subset_indices(y, k)
            if idx is None:
                continue
            if split == "train":
                train_x, train_y = train_x[idx], train_y[idx]
            else:
                test_x, test_y = test_x[idx], test_y[idx]
    info["sizes"] = {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])}
    return TensorData(
        name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        num_classes=int(num_classes), mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        default_augment=default_augment, class_names=list(class_names) if class_names is not None else None,
        info=info,
    )


class Progress:
    """A progress line on stderr for slow loads: silent for the first second, then every few seconds."""

    def __init__(self, what: str, total: int, quiet_s: float = 1.0, every_s: float = 2.0,
                 scale: float = 1.0, unit: str = ""):
        self.what, self.total = what, total
        self.start = self.last = time.monotonic()
        self.quiet_s, self.every_s = quiet_s, every_s
        self.scale, self.unit = scale, unit
        self.shown = False
        self.cr, self.end = ("\r", "") if sys.stderr.isatty() else ("", "\n")

    def _amount(self, n: int) -> str:
        return f"{n / self.scale:.0f}" if self.scale != 1.0 else str(n)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.start < self.quiet_s or now - self.last < self.every_s:
            return
        self.last, self.shown = now, True
        print(f"{self.cr}kdbench: {self.what}: {self._amount(done)}/{self._amount(self.total)}{self.unit} "
              f"({now - self.start:.0f} s)", file=sys.stderr, end=self.end, flush=True)

    def close(self) -> None:
        if self.shown:
            print(f"{self.cr}kdbench: {self.what}: done in {time.monotonic() - self.start:.1f} s",
                  file=sys.stderr, flush=True)
