"""Image folders: a ``train/<class>/*`` + ``test/<class>/*`` tree, or a tar archive of one.

Images are decoded once (only the selected subset when ``train_subset``/``test_subset`` are set) into
uint8 tensors and cached as a ``.pt``; archives are read in memory, never extracted. ``cifar10_jpeg``
is an image folder that must hold CIFAR-10's classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from kdbench.data import keys
from kdbench.data.build import SUBSET_SEED, Progress, channel_stats, finish, subset_indices
from kdbench.data.core import TensorData
from kdbench.errors import ConfigError, DataError

#: bump when the decoded-image cache format changes
CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG_NOTE = "CIFAR-10 (JPEG q75 copy)"


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
    progress = Progress(f"reading {path.name}", path.stat().st_size, scale=1e6, unit=" MB")
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
    explicit = keys.get(cfg, "cache_dir") or os.environ.get("KDBENCH_CACHE_DIR")
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
                progress: Progress, done: int = 0):
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


def load_imagefolder(cfg: Mapping, *, name: str = "imagefolder") -> TensorData:
    """An image-folder tree (``train/<class>/*``, ``test/<class>/*``) or a tar archive of one.

    Images are decoded once (only the selected subset when ``train_subset``/``test_subset`` are set) into
    uint8 tensors and cached as a ``.pt`` keyed by the source (archive path + size + mtime, or every
    file's path + size + mtime for a folder) and the subset sizes. Archives are read in memory, never
    extracted; one with an absolute or ``..`` member is refused.
    """
    if not keys.get(cfg, "root"):
        raise ConfigError("dataset.root", f"{name} needs dataset.root: a folder holding train/ and test/ "
                                          f"class folders, or a .tar.gz/.tgz/.tar archive of one")
    src = Path(str(keys.get(cfg, "root"))).expanduser().absolute()
    if not src.exists():
        raise DataError("dataset.root", f"{src} does not exist (expected a folder holding train/ and test/ "
                                        f"class folders, or a .tar.gz archive of one)")
    k_train, k_test = keys.subset(cfg, "train"), keys.subset(cfg, "test")
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
               "test_subset": k_test, "subset_seed": SUBSET_SEED, "channels": keys.get(cfg, "channels")}
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
    return finish(name, cfg, train_x=train_x, train_y=payload["train_y"], test_x=test_x,
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
    channels = keys.get(cfg, "channels")
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
        idx = subset_indices(y, k)
        if idx is not None:
            files = [files[i] for i in idx.tolist()]
            y = y[idx]
        selected[split] = (files, y)
    total = sum(len(f) for f, _ in selected.values())
    progress = Progress(f"decoding {total} images from {src.name} (once; then cached)", total)
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
    out["mean"], out["std"] = (list(v) for v in channel_stats(out["train_x"]))
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError("dataset.root", f"cannot read {path}: {e}") from e
