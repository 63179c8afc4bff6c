"""The torchvision datasets, read from torchvision's own layout: MNIST, Fashion-MNIST, CIFAR-10/100.

Nothing is downloaded unless ``dataset.download=true``; a missing, truncated or corrupted file is a
one-line :class:`~kdbench.errors.DataError` naming ``dataset.root`` and the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from kdbench.data import keys
from kdbench.data.build import finish
from kdbench.data.core import TensorData
from kdbench.errors import DataError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def load_mnist_like(cfg: Mapping, *, name: str, title: str, cls_name: str, folder: str,
                    mean: tuple[float, ...], std: tuple[float, ...]) -> TensorData:
    import torchvision.datasets as tvd

    root = _tv_root(keys.data_root(cfg), folder)
    download = keys.boolean(cfg, "download", False)
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
    return finish(name, cfg, train_x=train_x, train_y=tr.targets, test_x=test_x, test_y=te.targets,
                  num_classes=10, mean=mean, std=std, default_augment="none",
                  class_names=list(tr.classes), info=info)


def load_cifar(cfg: Mapping, *, name: str, title: str, cls_name: str, num_classes: int,
               mean: tuple[float, ...], std: tuple[float, ...]) -> TensorData:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    cls = getattr(tvd, cls_name)
    root = _tv_root(keys.data_root(cfg), cls.base_folder)
    download = keys.boolean(cfg, "download", False)
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
    return finish(name, cfg, train_x=train_x, train_y=torch.as_tensor(tr.targets), test_x=test_x,
                  test_y=torch.as_tensor(te.targets), num_classes=num_classes, mean=mean, std=std,
                  default_augment="crop_flip", class_names=list(tr.classes), info=info)
