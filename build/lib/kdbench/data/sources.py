"""Dataset sources: every dataset the harness knows, loaded whole into a :class:`TensorData`.

``load_dataset(cfg)`` reads the ``dataset`` config section (a dict or an OmegaConf DictConfig)::

    name: digits | synthetic | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder | cifar10_jpeg
    root: where the files are (torchvision's own layout, or an image-folder tree / tar archive)
    download: false          # passed to torchvision; never downloads unless asked
    cache_dir: null          # decoded-image cache (image folders); default <root>/.kdbench_cache
    train_subset: null       # keep k training examples (fixed, class-balanced, seed-independent)
    test_subset: null

Every failure a user can cause (missing, truncated or inconsistent files) is a one-line
:class:`~kdbench.errors.DataError` naming the config key and the file; bad config values are
:class:`~kdbench.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from kdbench.data import text as _text
from kdbench.data.core import TensorData
from kdbench.errors import ConfigError, DataError

#: seed of the fixed, class-balanced ordering that ``train_subset``/``test_subset`` take prefixes of
SUBSET_SEED = 1234
#: seed of the fixed train/test split of ``digits``
DIGITS_SPLIT_SEED = 0
#: bump when the decoded-image cache format changes
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG_NOTE = "CIFAR-10 (JPEG q75 copy)"

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`."""

    name: str
    loader: Callable[[Mapping], TensorData]
    #: None where the config decides (synthetic, image folders)
    num_classes: int | None
    #: "image" (uint8 ``[N, C, H, W]``), "features" (float32 ``[N, D]``) or "tokens" (int64 ``[N, T]``)
    kind: str
    description: str
    #: default normalisation; None where it is computed from the training data
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    default_augment: str = "none"


# --------------------------------------------------------------------------------------------- config


def _get(cfg: Mapping, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except Exception:  # noqa: BLE001 - struct DictConfigs and odd mappings
        value = default
    return default if value is None else value


def _int(cfg: Mapping, key: str, default: int | None, minimum: int = 0) -> int | None:
    value = _get(cfg, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"dataset.{key}", f"must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"dataset.{key}", f"must be >= {minimum}, got {value!r}")
    return int(value)


def _float(cfg: Mapping, key: str, default: float, lo: float, hi: float = math.inf,
           open_lo: bool = False, open_hi: bool = False) -> float:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"dataset.{key}", f"must be a number, got {value!r}")
    bad_lo = value <= lo if open_lo else value < lo
    bad_hi = value >= hi if open_hi else value > hi
    if bad_lo or bad_hi:
        lo_b, hi_b = "(" if open_lo else "[", ")" if open_hi else "]"
        raise ConfigError(f"dataset.{key}", f"must be in {lo_b}{lo}, {hi}{hi_b}, got {value!r}")
    return float(value)


def _bool(cfg: Mapping, key: str, default: bool) -> bool:
    value = _get(cfg, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"dataset.{key}", f"must be true or false, got {value!r}")
    return value


def _root(cfg: Mapping) -> Path:
    """``dataset.root``, or ``$KDBENCH_DATA_ROOT``, or ``./data``."""
    root = _get(cfg, "root") or os.environ.get("KDBENCH_DATA_ROOT") or "data"
    return Path(str(root)).expanduser().absolute()


# --------------------------------------------------------------------------------------------- helpers


def _stratified_order(y: torch.Tensor, seed: int) -> torch.Tensor:
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


def _subset_indices(y: torch.Tensor, k: int | None) -> torch.Tensor | None:
    """Indices (sorted) of the fixed ``k``-example subset of labels ``y``; None means keep all."""
    if k is None or k >= y.numel():
        return None
    return _stratified_order(y, SUBSET_SEED)[:k].sort().values


def _check_labels(name: str, split: str, y: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(y).reshape(-1).to(torch.int64)
    if y.numel() != n:
        raise DataError("dataset", f"{name}: {split} has {n} examples but {y.numel()} labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError("dataset", f"{name}: {split} labels out of range [0, {num_classes}): "
                                   f"found {int(y.min())}..{int(y.max())}")
    return y


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _finish(name: str, cfg: Mapping, *, train_x, train_y, test_x, test_y, num_classes: int,
            mean, std, default_augment: str, class_names=None, info: dict | None = None,
            subset: bool = True) -> TensorData:
    """Validate labels, take the configured subsets and build the TensorData."""
    train_y = _check_labels(name, "train", train_y, train_x.shape[0], num_classes)
    test_y = _check_labels(name, "test", test_y, test_x.shape[0], num_classes)
    info = dict(info or {})
    info.setdefault("full_sizes", {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])})
    if subset:
        for split in ("train", "test"):
            k = _int(cfg, f"{split}_subset", None, minimum=1)
            if k is None:
                continue
            info[f"{split}_subset"] = k
            y = train_y if split == "train" else test_y
            idx = _subset_indices(y, k)
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


class _Progress:
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


# --------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(cfg: Mapping) -> TensorData:
    """Gaussian features, labels from a hidden linear rule ``argmax(W x + b + noise * gumbel)``.

    ``W ~ N(0, 9 / dim)`` (clean logits have std ~3 whatever ``dim``) and ``b ~ N(0, 0.25)`` come from
    ``seed``; so do the features and the Gumbel draws, drawn in an order that does not depend on
    ``noise``: the same seed gives the same features at every noise level, only labels change.
    ``noise`` is a temperature: labels are samples from ``softmax((W x + b) / noise)``.
    """
    n_train = _int(cfg, "n_train", 4000, minimum=1)
    n_test = _int(cfg, "n_test", 1000, minimum=1)
    dim = _int(cfg, "dim", 20, minimum=1)
    num_classes = _int(cfg, "num_classes", 5, minimum=2)
    noise = _float(cfg, "noise", 0.0, 0.0)
    seed = _int(cfg, "seed", 0, minimum=0)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) * (3.0 / math.sqrt(dim))
    bias = torch.randn(num_classes, generator=g) * 0.5
    train_x = torch.randn(n_train, dim, generator=g)
    test_x = torch.randn(n_test, dim, generator=g)

    def gumbel(n: int) -> torch.Tensor:
        u = torch.rand(n, num_classes, generator=g).clamp_(1e-12, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    g_train, g_test = gumbel(n_train), gumbel(n_test)
    clean_test = (test_x @ weight.T + bias).argmax(1)
    train_y = (train_x @ weight.T + bias + noise * g_train).argmax(1)
    test_y = (test_x @ weight.T + bias + noise * g_test).argmax(1)
    info = {
        "source": "synthetic", "n_train": n_train, "n_test": n_test, "dim": dim, "noise": noise, "seed": seed,
        "oracle": {"weight": weight, "bias": bias},
        "oracle_test_acc": float((clean_test == test_y).float().mean()),
    }
    return _finish("synthetic", cfg, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                   num_classes=num_classes, mean=(0.0,), std=(1.0,), default_augment="none",
                   class_names=[f"class_{i}" for i in range(num_classes)], info=info)


def oracle_teacher(data: TensorData) -> torch.nn.Linear:
    """The synthetic data's hidden rule as a frozen ``nn.Linear`` (its argmax is the noise-free label).

    With ``noise > 0`` the true posterior is ``softmax(oracle(x) / noise)``.
    """
    oracle = (data.info or {}).get("oracle")
    if not oracle:
        raise DataError("dataset", f"{data.name} has no oracle teacher (only dataset.name=synthetic does)")
    weight, bias = oracle["weight"], oracle["bias"]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    layer.requires_grad_(False)
    return layer.eval()


# --------------------------------------------------------------------------------------------- digits


def _load_digits(cfg: Mapping) -> TensorData:
    """scikit-learn's 1,797 8x8 digits (bundled, offline) as uint8 ``[N, 1, 8, 8]``, fixed split."""
    from sklearn.datasets import load_digits

    test_fraction = _float(cfg, "test_fraction", 0.25, 0.0, 1.0, open_lo=True, open_hi=True)
    d = load_digits()
    x = torch.from_numpy(d.images).mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(d.target).to(torch.int64)
    y = _check_labels("digits", "all", y, x.shape[0], 10)
    order = _stratified_order(y, DIGITS_SPLIT_SEED)
    n_test = max(1, min(x.shape[0] - 1, int(round(test_fraction * x.shape[0]))))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    train_x = x[train_idx].contiguous()
    mean, std = _channel_stats(train_x)
    info = {"source": "sklearn.datasets.load_digits", "test_fraction": test_fraction,
            "split_seed": DIGITS_SPLIT_SEED}
    return _finish("digits", cfg, train_x=train_x, train_y=y[train_idx], test_x=x[test_idx].contiguous(),
                   test_y=y[test_idx], num_classes=10, mean=mean, std=std, default_augment="none",
                   class_names=[str(i) for i in range(10)], info=info)


# --------------------------------------------------------------------------------------------- MNIST


def _check_idx_file(path: Path, title: str) -> None:
    """Raise DataError unless ``path`` is a complete IDX file (header says how long it must be)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or not 1 <= head[3] <= 3:
                raise DataError("dataset.root", f"{title}: {path} is not an uncompressed IDX ubyte file "
                                                f"(bad header; truncated or corrupted?)")
            nd = head[3]
            dims_raw = f.read(4 * nd)
    except OSError as e:
        raise DataError("dataset.root", f"{title}: cannot read {path}: {e}") from e
    if len(dims_raw) < 4 * nd:
        raise DataError("dataset.root", f"{title}: {path} is truncated ({size} bytes)")
    dims = [int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(nd)]
    expected = 4 + 4 * nd + math.prod(dims)
    if size != expected:
        what = "truncated" if size < expected else "corrupted (longer than its header says)"
        raise DataError("dataset.root", f"{title}: {path} is {what}: {size} bytes, but its IDX header "
                                        f"{'x'.join(map(str, dims))} needs {expected}")


def _tv_root(root: Path, folder: str) -> Path:
    """Accept a root that points at ``<folder>/`` or ``<folder>/raw`` itself as well as its parent."""
    if root.name == "raw" and root.parent.name == folder:
        return root.parent.parent
    if root.name == folder and not (root / folder).exists():
        return root.parent
    return root


def _load_mnist_like(cfg: Mapping, *, name: str, title: str, cls_name: str, folder: str,
                     mean: tuple[float, ...], std: tuple[float, ...]) -> TensorData:
    import torchvision.datasets as tvd

    root = _tv_root(_root(cfg), folder)
    download = _bool(cfg, "download", False)
    raw = root / folder / "raw"
    files = [raw / f for f in MNIST_FILES]
    legacy = all((root / folder / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
    if not download and not legacy:
        missing = [p for p in files if not p.is_file()]
        if missing:
            gz = [p.name + ".gz" for p in missing if p.with_name(p.name + ".gz").is_file()]
            hint = (f" (found {', '.join(gz)}: decompress with gunzip, or set dataset.download=true to let "
                    f"torchvision extract them)") if gz else ""
            raise DataError("dataset.root", f"{title} not found: expected {', '.join(MNIST_FILES)} under {raw}"
                                            f" (missing: {', '.join(p.name for p in missing)}){hint}; set "
                                            f"dataset.root to the folder that contains {folder}/ or "
                                            f"dataset.download=true")
        for p in files:
            _check_idx_file(p, title)
    cls = getattr(tvd, cls_name)
    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = cls(str(root), train=split == "train", download=download)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError, AssertionError, ...
            if download:
                for p in files:
                    if p.is_file():
                        _check_idx_file(p, title)
            msg = f"{type(e).__name__}: {e}".strip()
            raise DataError("dataset.root", f"{title} could not be loaded from {raw}"
                                            f"{' (download=true)' if download else ''}: {msg}") from e
    tr, te = splits["train"], splits["test"]
    train_x, test_x = tr.data.unsqueeze(1), te.data.unsqueeze(1)
    if train_x.dtype != torch.uint8 or tuple(train_x.shape[1:]) != (1, 28, 28):
        raise DataError("dataset.root", f"{title}: unexpected image tensor {tuple(train_x.shape)} "
                                        f"{train_x.dtype} from {raw}")
    info = {"source": f"torchvision.datasets.{cls_name}", "root": str(root),
            "files": [str(p) for p in files] if not legacy else [str(root / folder / "processed")]}
    return _finish(name, cfg, train_x=train_x, train_y=tr.targets, test_x=test_x, test_y=te.targets,
                   num_classes=10, mean=mean, std=std, default_augment="none",
                   class_names=list(tr.classes), info=info)


# --------------------------------------------------------------------------------------------- CIFAR


def _load_cifar(cfg: Mapping, *, name: str, title: str, cls_name: str, num_classes: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> TensorData:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    cls = getattr(tvd, cls_name)
    root = _tv_root(_root(cfg), cls.base_folder)
    download = _bool(cfg, "download", False)
    folder = root / cls.base_folder
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    md5s = dict(cls.train_list + cls.test_list)
    md5s[cls.meta["filename"]] = cls.meta["md5"]
    if not download:
        missing = [f for f in expected if not (folder / f).is_file()]
        if missing:
            hint = (f" (found {cls.filename}: set dataset.download=true to let torchvision verify and extract "
                    f"it, or extract it with tar xzf)") if (root / cls.filename).is_file() else ""
            raise DataError("dataset.root", f"{title} not found: expected {', '.join(expected)} under {folder}"
                                            f" (missing: {', '.join(missing)}){hint}; set dataset.root to the "
                                            f"folder that contains {cls.base_folder}/ or dataset.download=true")
    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = cls(str(root), train=split == "train", download=download)
        except Exception as e:  # noqa: BLE001 - RuntimeError, pickle errors, ...
            for f in expected:
                p = folder / f
                if p.is_file() and not check_integrity(str(p), md5s[f]):
                    raise DataError("dataset.root", f"{title}: {p} fails its md5 check (truncated or "
                                                    f"corrupted); delete it and download again") from e
            msg = f"{type(e).__name__}: {e}".strip()
            raise DataError("dataset.root", f"{title} could not be loaded from {folder}"
                                            f"{' (download=true)' if download else ''}: {msg}") from e
    tr, te = splits["train"], splits["test"]
    train_x = torch.from_numpy(tr.data).permute(0, 3, 1, 2).contiguous()
    test_x = torch.from_numpy(te.data).permute(0, 3, 1, 2).contiguous()
    info = {"source": f"torchvision.datasets.{cls_name}", "root": str(root),
            "files": [str(folder / f) for f in expected]}
    return _finish(name, cfg, train_x=train_x, train_y=torch.as_tensor(tr.targets), test_x=test_x,
                   test_y=torch.as_tensor(te.targets), num_classes=num_classes, mean=mean, std=std,
                   default_augment="crop_flip", class_names=list(tr.classes), info=info)


# --------------------------------------------------------------------------------------------- image folders


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class _Listing:
    """The image files of a ``train/`` + ``test/`` tree: ``{split: {class: [relative paths]}}``."""

    def __init__(self) -> None:
        self.classes: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
        self.fingerprint: list = []

    def add_class(self, split: str, cls: str) -> None:
        self.classes[split].setdefault(cls, [])

    def add(self, split: str, cls: str, rel: str) -> None:
        self.classes[split].setdefault(cls, []).append(rel)


def _split_prefix(paths: Iterable[PurePosixPath]) -> tuple[str, ...] | None:
    """The path prefix under which ``train/`` lives: () or one wrapper folder (``cifar10/train``)."""
    firsts: set[str] = set()
    wrapped = False
    for p in paths:
        if not p.parts or _hidden(p.parts[:1]):
            continue
        if p.parts[0] == "train":
            return ()
        firsts.add(p.parts[0])
        wrapped = wrapped or (len(p.parts) > 1 and p.parts[1] == "train")
    if wrapped and len(firsts) == 1:
        return (firsts.pop(),)
    return None


def _classify(listing: _Listing, rel: PurePosixPath, prefix: tuple[str, ...], is_dir: bool) -> None:
    parts = rel.parts[len(prefix):]
    if rel.parts[:len(prefix)] != prefix or len(parts) < 2 or parts[0] not in ("train", "test"):
        return
    if _hidden(parts):
        return
    split, cls = parts[0], parts[1]
    if is_dir or len(parts) == 2:
        if is_dir:
            listing.add_class(split, cls)
        return
    listing.add_class(split, cls)
    if _is_image(parts[-1]):
        listing.add(split, cls, str(rel))


def _list_directory(root: Path) -> _Listing:
    rels: list[tuple[PurePosixPath, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        base = Path(dirpath)
        rel_base = PurePosixPath(base.relative_to(root).as_posix()) if base != root else PurePosixPath()
        for d in dirnames:
            rels.append((rel_base / d, True))
        for f in sorted(filenames):
            if _is_image(f) and not f.startswith("."):
                rels.append((rel_base / f, False))
    prefix = _split_prefix(r for r, _ in rels)
    listing = _Listing()
    if prefix is None:
        return listing
    for rel, is_dir in rels:
        _classify(listing, rel, prefix, is_dir)
    fp = []
    for split in ("train", "test"):
        for cls in sorted(listing.classes[split]):
            for rel in listing.classes[split][cls]:
                st = (root / rel).stat()
                fp.append((rel, st.st_size, st.st_mtime_ns))
    listing.fingerprint = fp
    return listing


def _safe_member(name: str) -> PurePosixPath | None:
    """A tar member's path if it is relative and stays inside the archive's tree, else None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    p = PurePosixPath(name.replace("\\", "/"))
    if any(part == ".." for part in p.parts):
        return None
    return PurePosixPath(*[part for part in p.parts if part not in (".", "")])


def _read_archive(path: Path) -> tuple[_Listing, dict[str, bytes]]:
    """Read a tar archive of an image-folder tree into memory (never extracted to disk).

    The whole archive is refused if any member has an absolute path or a ``..`` component; links and
    other special members are ignored.
    """
    blobs: dict[str, bytes] = {}
    entries: list[tuple[PurePosixPath, bool]] = []
    progress = _Progress(f"reading {path.name}", path.stat().st_size, scale=1e6, unit=" MB")
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
            for m in tf:
                progress.update(raw.tell())
                rel = _safe_member(m.name)
                if rel is None or (m.issym() or m.islnk()) and _safe_member(m.linkname) is None:
                    raise DataError("dataset.root", f"unsafe archive {path}: member {m.name!r} "
                                                    f"points outside the archive; refusing to read it")
                if m.isdir():
                    entries.append((rel, True))
                elif m.isfile() and _is_image(rel.name) and not _hidden(rel.parts):
                    f = tf.extractfile(m)
                    if f is None:
                        continue
                    blobs[str(rel)] = f.read()
                    entries.append((rel, False))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError("dataset.root", f"cannot read archive {path}: {type(e).__name__}: {e} "
                                        f"(truncated or not a tar archive?)") from e
    progress.close()
    listing = _Listing()
    prefix = _split_prefix(r for r, _ in entries)
    if prefix is not None:
        for rel, is_dir in entries:
            _classify(listing, rel, prefix, is_dir)
        if prefix:
            blobs = {k: v for k, v in blobs.items() if PurePosixPath(k).parts[:len(prefix)] == prefix}
    return listing, blobs


def _default_cache_dirs(base: Path) -> list[Path]:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [base / ".kdbench_cache", Path(xdg) / "kdbench",
            Path(tempfile.gettempdir()) / f"kdbench-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"]


def _cache_dir(cfg: Mapping, base: Path) -> Path | None:
    """``dataset.cache_dir``, else ``$KDBENCH_CACHE_DIR``, else the first writable default; None: no cache."""
    explicit = _get(cfg, "cache_dir") or os.environ.get("KDBENCH_CACHE_DIR")
    if explicit:
        p = Path(str(explicit)).expanduser().absolute()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError("dataset.cache_dir", f"cannot create cache folder {p}: {e}") from e
        return p
    for p in _default_cache_dirs(base):
        try:
            p.mkdir(parents=True, exist_ok=True)
            if os.access(p, os.W_OK):
                return p
        except OSError:
            continue
    return None


def _save_cache(path: Path, payload: dict) -> None:
    """Write the cache atomically (readers never see half a file); a failure is a warning, not an error."""
    from kdbench.files import atomic_write

    try:
        # readable by others, like the data it mirrors
        atomic_write(path, lambda tmp: torch.save(payload, tmp), mode=0o644)
    except OSError as e:
        print(f"kdbench: warning: could not write dataset cache {path}: {e}", file=sys.stderr)


def _load_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt, never fatal
        return None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        return None
    return payload


def _decode_all(items: list[tuple[str, Callable[[], bytes]]], where: str, mode_name: str | None,
                progress: _Progress, done: int = 0):
    """Decode ``(label, read_bytes)`` items into one uint8 ``[N, C, H, W]`` tensor (all one size)."""
    from torchvision.io import ImageReadMode, decode_image

    def decode(label: str, data: bytes, mode) -> torch.Tensor:
        try:
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except Exception as e:  # noqa: BLE001 - RuntimeError from the codec, ValueError on empty input
            raise DataError("dataset.root", f"cannot decode image {label} in {where}: {e}") from e

    if mode_name is None:
        first = decode(items[0][0], items[0][1](), ImageReadMode.UNCHANGED)
        mode_name = "GRAY" if first.shape[0] in (1, 2) else "RGB"
    mode = ImageReadMode.GRAY if mode_name == "GRAY" else ImageReadMode.RGB
    out: torch.Tensor | None = None
    first_label = items[0][0]
    for i, (label, read) in enumerate(items):
        img = decode(label, read(), mode)
        if out is None:
            out = torch.empty((len(items), *img.shape), dtype=torch.uint8)
        elif img.shape != out.shape[1:]:
            raise DataError("dataset.root", f"image {label} in {where} is {img.shape[2]}x{img.shape[1]} "
                                            f"but {first_label} is {out.shape[3]}x{out.shape[2]}: all images "
                                            f"must share one size")
        out[i] = img
        if i % 512 == 0:
            progress.update(done + i)
    assert out is not None
    return out, mode_name


def _load_imagefolder(cfg: Mapping, *, name: str = "imagefolder") -> TensorData:
    """An image-folder tree (``train/<class>/*``, ``test/<class>/*``) or a tar archive of one.

    Images are decoded once (only the selected subset when ``train_subset``/``test_subset`` are set) into
    uint8 tensors and cached as a ``.pt`` keyed by the source (archive path + size + mtime, or every
    file's path + size + mtime for a folder) and the subset sizes. Archives are read in memory, never
    extracted; one with an absolute or ``..`` member is refused.
    """
    if not _get(cfg, "root"):
        raise ConfigError("dataset.root", f"{name} needs dataset.root: a folder holding train/ and test/ "
                                          f"class folders, or a .tar.gz/.tgz/.tar archive of one")
    src = Path(str(_get(cfg, "root"))).expanduser().absolute()
    if not src.exists():
        raise DataError("dataset.root", f"{src} does not exist (expected a folder holding train/ and test/ "
                                        f"class folders, or a .tar.gz archive of one)")
    k_train = _int(cfg, "train_subset", None, minimum=1)
    k_test = _int(cfg, "test_subset", None, minimum=1)
    is_dir = src.is_dir()
    if not is_dir and not tarfile.is_tarfile(src):
        raise DataError("dataset.root", f"{src} is neither a folder nor a tar archive (.tar.gz/.tgz/.tar)")
    st = src.stat()
    listing: _Listing | None = None
    blobs: dict[str, bytes] = {}
    if is_dir:
        listing = _list_directory(src)
        source_key: Any = listing.fingerprint
    else:
        source_key = [st.st_size, st.st_mtime_ns]
    key_obj = {"v": CACHE_VERSION, "source": str(src), "key": source_key, "train_subset": k_train,
               "test_subset": k_test, "subset_seed": SUBSET_SEED, "channels": _get(cfg, "channels")}
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:24]
    cache_root = _cache_dir(cfg, src if is_dir else src.parent)
    cache_path = cache_root / f"imagefolder-{src.name.split('.')[0]}-{key}.pt" if cache_root else None

    payload = _load_cache(cache_path) if cache_path else None
    cached = payload is not None
    if payload is None:
        if listing is None:
            listing, blobs = _read_archive(src)
        payload = _decode_listing(cfg, src, listing, blobs, k_train, k_test)
        if cache_path is not None:
            _save_cache(cache_path, payload)

    class_names = list(payload["class_names"])
    train_x, test_x = payload["train_x"], payload["test_x"]
    mean, std = tuple(payload["mean"]), tuple(payload["std"])
    c, h, w = train_x.shape[1:]
    info = {"source": "imagefolder", "root": str(src), "archive": not is_dir, "files": [str(src)],
            "full_sizes": dict(payload["full_sizes"]), "train_subset": k_train, "test_subset": k_test,
            "cache": str(cache_path) if cache_path else None, "cached": cached}
    if name == "cifar10_jpeg" or "cifar10-jpeg" in src.name.lower():
        info["note"] = CIFAR10_JPEG_NOTE
    if name == "cifar10_jpeg" and tuple(class_names) != CIFAR10_CLASSES:
        raise DataError("dataset.root", f"{src} does not hold CIFAR-10's classes: found "
                                        f"{', '.join(class_names)}")
    default_augment = "crop_flip" if (c, h, w) == (3, 32, 32) else "flip"
    return _finish(name, cfg, train_x=train_x, train_y=payload["train_y"], test_x=test_x,
                   test_y=payload["test_y"], num_classes=len(class_names), mean=mean, std=std,
                   default_augment=default_augment, class_names=class_names, info=info, subset=False)


def _decode_listing(cfg: Mapping, src: Path, listing: _Listing, blobs: dict[str, bytes],
                    k_train: int | None, k_test: int | None) -> dict:
    train_classes = sorted(listing.classes["train"])
    if not any(listing.classes["train"].values()):
        raise DataError("dataset.root", f"no images found under {src}/train (expected train/<class>/*.jpg "
                                        f"or .png and test/<class>/...)")
    empty = [c for c in train_classes if not listing.classes["train"][c]]
    if empty:
        raise DataError("dataset.root", f"class folder(s) without images under {src}/train: {', '.join(empty)}")
    if not any(listing.classes["test"].values()):
        raise DataError("dataset.root", f"no images found under {src}/test (expected test/<class>/*.jpg "
                                        f"or .png, with the classes of train/)")
    extra = sorted(c for c, files in listing.classes["test"].items() if files and c not in train_classes)
    if extra:
        raise DataError("dataset.root", f"{src}/test has classes that train/ lacks: {', '.join(extra)}")
    index = {c: i for i, c in enumerate(train_classes)}
    channels = _get(cfg, "channels")
    if channels not in (None, 1, 3):
        raise ConfigError("dataset.channels", f"must be 1, 3 or null (from the first image), got {channels!r}")
    mode_name = None if channels is None else ("GRAY" if channels == 1 else "RGB")
    out: dict[str, Any] = {"version": CACHE_VERSION, "class_names": train_classes, "full_sizes": {}}
    selected = {}
    for split, k in (("train", k_train), ("test", k_test)):
        files = [(rel, index[c]) for c in sorted(listing.classes[split]) for rel in sorted(listing.classes[split][c])
                 if c in index]
        y = torch.tensor([lab for _, lab in files], dtype=torch.int64)
        out["full_sizes"][split] = len(files)
        idx = _subset_indices(y, k)
        if idx is not None:
            files = [files[i] for i in idx.tolist()]
            y = y[idx]
        selected[split] = (files, y)
    total = sum(len(f) for f, _ in selected.values())
    progress = _Progress(f"decoding {total} images from {src.name} (once; then cached)", total)
    done = 0
    for split in ("train", "test"):
        files, y = selected[split]

        def reader(rel: str) -> Callable[[], bytes]:
            if rel in blobs:
                return lambda: blobs[rel]
            return lambda: _read_bytes(src / rel)

        items = [(rel, reader(rel)) for rel, _ in files]
        x, mode_name = _decode_all(items, str(src), mode_name, progress, done)
        done += len(items)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    progress.close()
    if out["train_x"].shape[1:] != out["test_x"].shape[1:]:
        raise DataError("dataset.root", f"test images in {src} are {tuple(out['test_x'].shape[1:])} but train "
                                        f"images are {tuple(out['train_x'].shape[1:])}")
    out["mean"], out["std"] = (list(v) for v in _channel_stats(out["train_x"]))
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError("dataset.root", f"cannot read {path}: {e}") from e


# --------------------------------------------------------------------------------------------- registry


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("digits", _load_digits, 10, "image",
                    "scikit-learn's 1,797 8x8 handwritten digits (offline), fixed 75/25 split",
                    default_augment="none"),
        DatasetSpec("synthetic", _load_synthetic, None, "features",
                    "Gaussian features labelled by a hidden linear rule (with an oracle teacher)",
                    mean=(0.0,), std=(1.0,)),
        DatasetSpec("mnist", partial(_load_mnist_like, name="mnist", title="MNIST", cls_name="MNIST",
                                     folder="MNIST", mean=(0.1307,), std=(0.3081,)),
                    10, "image", "MNIST 28x28 digits (torchvision layout: <root>/MNIST/raw)",
                    mean=(0.1307,), std=(0.3081,)),
        DatasetSpec("fashion_mnist", partial(_load_mnist_like, name="fashion_mnist", title="Fashion-MNIST",
                                             cls_name="FashionMNIST", folder="FashionMNIST",
                                             mean=(0.2860,), std=(0.3530,)),
                    10, "image", "Fashion-MNIST 28x28 clothing (torchvision layout: <root>/FashionMNIST/raw)",
                    mean=(0.2860,), std=(0.3530,)),
        DatasetSpec("cifar10", partial(_load_cifar, name="cifar10", title="CIFAR-10", cls_name="CIFAR10",
                                       num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                                       std=(0.2470, 0.2435, 0.2616)),
                    10, "image", "CIFAR-10 32x32 RGB (torchvision layout: <root>/cifar-10-batches-py)",
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), default_augment="crop_flip"),
        DatasetSpec("cifar100", partial(_load_cifar, name="cifar100", title="CIFAR-100", cls_name="CIFAR100",
                                        num_classes=100, mean=(0.5071, 0.4865, 0.4409),
                                        std=(0.2673, 0.2564, 0.2762)),
                    100, "image", "CIFAR-100 32x32 RGB (torchvision layout: <root>/cifar-100-python)",
                    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), default_augment="crop_flip"),
        DatasetSpec("imagefolder", _load_imagefolder, None, "image",
                    "train/<class>/* and test/<class>/* images (folder or tar archive), decoded once and cached",
                    default_augment="crop_flip"),
        DatasetSpec("cifar10_jpeg", partial(_load_imagefolder, name="cifar10_jpeg"), 10, "image",
                    "imagefolder holding CIFAR-10 re-encoded as JPEG; results must say 'CIFAR-10 (JPEG q75 copy)'",
                    default_augment="crop_flip"),
        DatasetSpec("markov", _text._load_markov, None, "tokens",
                    "sequences of a seeded sparse Markov chain (known next-token law: an exact oracle teacher)"),
        DatasetSpec("bytes_text", _text._load_bytes_text, 256, "tokens",
                    "byte-level windows of CPython's own documentation (pydoc_data.topics), offline"),
    )
}


def dataset_names() -> list[str]:
    """The names ``dataset.name`` accepts."""
    return list(DATASETS)


def load_dataset(cfg: Mapping) -> TensorData:
    """Load the dataset the ``dataset`` config section names (see the module docstring for the keys)."""
    if cfg is None or not hasattr(cfg, "get"):
        raise ConfigError("dataset", f"must be a mapping with at least a name, got {cfg!r}")
    name = _get(cfg, "name")
    if not name:
        raise ConfigError("dataset.name", f"is required; one of {', '.join(dataset_names())}")
    spec = DATASETS.get(str(name))
    if spec is None:
        raise ConfigError("dataset.name", f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    for key in ("train_subset", "test_subset"):
        _int(cfg, key, None, minimum=1)  # fail fast, before a long load
    data = spec.loader(cfg)
    data.info.setdefault("dataset", spec.name)
    return data
