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
written last, and memory-mapped when read. Opening it verifies it: ``meta.json`` against the run's plan,
every array's size, dtype and shape always, and its SHA-256 (recorded when built) once after any change
to the file (``verified.json`` remembers the checked size, mtime and inode); a broken cache (truncated,
garbage ``meta.json``, another plan, a changed value) is rebuilt under the build lock, and a teacher that
gives a non-finite logit while it is built is refused, naming the row. ``float32`` storage (the default for a float32 run) makes
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
from kdbench.errors import WRITE_ERRNOS, ConfigError, TeacherError
from kdbench.files import atomic_write_text
from kdbench.signals import SPLITS, register_signal, table_for
from kdbench.signals.online import NonFiniteWatch

log = logging.getLogger("kdbench")

DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.uint16),
          "float16": (torch.float16, np.float16)}
META = "meta.json"
#: the arrays' (size, mtime, inode) when their checksums were last checked: what "checked once" remembers
STAMP = "verified.json"
#: the plan's fields that ``meta.json`` must repeat
PLAN_KEYS = ("family", "views", "n_train", "n_val", "n_test", "num_classes", "dtype")


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
    cap_gb = float((conf.get("teacher_cache") or {}).get("max_gb", 16))
    gib = p["bytes"] / 2**30
    if gib > cap_gb:
        raise ConfigError("teacher_cache.max_gb", f"the cached teacher would need {gib:.2f} GiB ({p['formula']} "
                                                  f"for training, plus val/test), over the cap of {cap_gb:g} GiB; "
                                                  "raise it, store bfloat16 (teacher_cache.dtype), or use online")


def cache_fields(teacher_key: str, conf: dict, data, p: dict) -> dict:
    """What a cache is of (its key hashes them; ``meta.json`` repeats them, as JSON data)."""
    from kdbench.teachers import dataset_identity

    fields = {"teacher": teacher_key, "dataset": dataset_identity(conf["dataset"], data), "family": p["family"],
              "views": p["views"], "dtype": p["dtype"], "precision": conf["trainer"].get("precision"),
              "channels_last": bool(conf["trainer"].get("channels_last")) and data.is_image,
              "val": [conf["dataset"].get("val_size"), conf["dataset"].get("split_seed")]}
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def cache_key(teacher_key: str, conf: dict, data, p: dict) -> str:
    fields = cache_fields(teacher_key, conf, data, p)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def weights_digest(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's parameters and buffers (names, dtypes, shapes, bytes): a cache is of these
    weights, and one built from others (an entry retrained or re-imported under the same key) is rebuilt."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def splits_of(p: dict) -> dict[str, tuple[tuple[int, int, int], np.dtype]]:
    """The arrays a cache of plan ``p`` holds: ``{split: (shape, numpy dtype)}``."""
    views = {"train": int(p["views"]), "val": 1, "test": 1}
    return {s: ((int(p[f"n_{s}"]), views[s], int(p["num_classes"])), np.dtype(DTYPES[p["dtype"]][1]))
            for s in SPLITS if s != "val" or int(p.get("n_val") or 0) > 0}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify(folder: Path, p: dict, fields: dict | None = None, weights: str | None = None) -> str | None:
    """Why the cache in ``folder`` is not a sound cache of plan ``p`` (and of ``fields``), or None.

    Always: ``meta.json`` readable, for this plan and these fields, every array there with the size its
    meta records, its dtype and shape. Once after any change to an array file: its SHA-256 against the
    one recorded when it was built (the check is remembered in ``verified.json``)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{META} is missing"
    except (OSError, ValueError) as e:
        return f"{META} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if not isinstance(meta, dict):
        return f"{META} is not a mapping (a JSON {type(meta).__name__})"
    for k in PLAN_KEYS:
        if meta.get(k) != p[k]:
            return f"{META} says {k}={meta.get(k)!r}, the run needs {p[k]!r}"
    if fields is not None and meta.get("fields") != fields:
        theirs = meta.get("fields") if isinstance(meta.get("fields"), dict) else {}
        differ = sorted(k for k in set(theirs) | set(fields) if theirs.get(k) != fields.get(k))
        return f"it was built for other {', '.join(differ) or 'fields'} than this run's"
    if weights is not None and meta.get("weights_sha256") != weights:
        return "it was built from other teacher weights (the entry was retrained or replaced)"
    arrays = meta.get("arrays")
    if not isinstance(arrays, dict):
        return f"{META} records no checksums (built by an earlier kdbench)"
    stamp = _read_json(folder / STAMP)
    stamp = stamp if isinstance(stamp, dict) else {}
    checked = dict(stamp)
    for name, (shape, dtype) in splits_of(p).items():
        path, rec = folder / f"{name}.npy", arrays.get(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or not isinstance(rec.get("bytes"), int):
            return f"{META} records no size and checksum for {name}.npy"
        if not path.is_file():
            return f"{name}.npy is missing"
        size = path.stat().st_size
        if size != rec["bytes"]:
            return f"{name}.npy is {size} bytes, {META} says {rec['bytes']} (truncated or replaced)"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:  # a garbage header, an object array (pickles are never loaded)
            return f"{name}.npy is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        if arr.dtype != dtype or tuple(arr.shape) != shape:
            return f"{name}.npy is {arr.dtype} {tuple(arr.shape)}, the run needs {dtype} {shape}"
        del arr
        now = [*_stat(path), rec["sha256"]]
        if stamp.get(name) != now:
            if _sha256(path) != rec["sha256"]:
                return f"{name}.npy does not match its checksum (its values changed after it was built)"
            checked[name] = now
    if checked != stamp:
        try:
            atomic_write_text(folder / STAMP, json.dumps(checked) + "\n")
        except OSError:  # a read-only registry: checked again next time
            pass
    return None


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
def build(folder: Path, teacher: nn.Module, conf: dict, data, p: dict, *, fields: dict | None = None,
          weights: str | None = None, who: str = "the teacher") -> None:
    """Run the teacher once per (training image, view), and once per validation / test image; a non-finite
    logit refuses the cache (TeacherError naming ``who`` and the row) and leaves nothing behind."""
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
    try:
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
                    _refuse_non_finite(out, name, start, v, who)
                    store[start:start + len(idx), v] = out.to(tdt).cpu().view(
                        torch.uint16 if p["dtype"] == "bfloat16" else tdt).numpy()
                    done += 1
                    progress.update(done)
            store.flush()
            del store
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    arrays = {name: {"shape": [int(x.shape[0]), views, int(p["num_classes"])], "dtype": str(np.dtype(ndt)),
                     "bytes": (tmp / f"{name}.npy").stat().st_size, "sha256": _sha256(tmp / f"{name}.npy")}
              for name, x, _, _, views in splits}
    # checked as written (renaming the folder keeps each file's size, mtime and inode)
    stamp = {n: [*_stat(tmp / f"{n}.npy"), a["sha256"]] for n, a in arrays.items()}
    (tmp / STAMP).write_text(json.dumps(stamp) + "\n")
    (tmp / META).write_text(json.dumps({**p, "fields": fields, "weights_sha256": weights, "arrays": arrays,
                                        "built_s": round(time.time() - progress.t0, 1)}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _refuse_non_finite(out: Tensor, split: str, start: int, view: int, who: str) -> None:
    """A non-finite logit while building is the teacher's fault: refused with its row (one host read per
    batch of a one-off build)."""
    bad = ~torch.isfinite(out).flatten(1).all(1)
    if bool(bad.any()):
        row = start + int(bad.nonzero()[0, 0])
        where = f"{split} row {row}" + (f" (view {view})" if split == "train" else "")
        raise TeacherError("teacher", f"{who} gives a non-finite logit (NaN/Inf) for {where} while its logits are "
                                      "cached: its weights or that input are bad; nothing was cached")


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
        listed = meta.get("arrays")  # the arrays it was built with: a stray file beside them is not read
        self.tables = {s: _open(folder, s, meta["dtype"]) for s in SPLITS
                       if (s in listed if isinstance(listed, dict) else (folder / f"{s}.npy").exists())}
        self.device = torch.device("cpu")
        self.resident = False  # the tables are in the device's memory (looked up there, no copy per batch)
        self.watch = NonFiniteWatch(f"the teacher cache {folder}", "the file changed after it was verified "
                                    "(it is checked again, and rebuilt, by the next run)")

    def check_finite(self) -> None:
        """Raise TeacherError if a logit looked up so far was not finite; the cache is then re-verified (and
        rebuilt) by the next run."""
        try:
            self.watch.check()
        except TeacherError:
            (self.folder / STAMP).unlink(missing_ok=True)
            raise

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
        out = table[idx, view].to(self.device, non_blocking=True).float()
        self.watch.see(out, batch, split)
        return out


def _not_a_folder(path: Path, what: str) -> None:
    """Refuse, in one line, a file (or a link to one) where the cache needs ``what``."""
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        kind = "a broken symbolic link" if not path.exists() else "a file"
        raise ConfigError("teacher_signal", f"{path} is {kind} where the teacher cache's {what} should be: "
                                            "move it away (kdbench does not delete it), or use teacher_signal=online")


@register_signal("cached", preflight=preflight)
def _cached(*, teacher: nn.Module | None, conf: dict, data, teacher_meta: dict | None = None, **_) -> CachedSignal:
    from filelock import FileLock

    if teacher is None or not teacher_meta or not teacher_meta.get("path"):
        raise ConfigError("teacher_signal", "cached needs a registry teacher (not oracle or none)")
    preflight(conf, data)
    p = plan(conf, data)
    fields = cache_fields(str(teacher_meta.get("key")), conf, data, p)
    parent = Path(teacher_meta["path"]) / "cache"
    folder = parent / cache_key(str(teacher_meta.get("key")), conf, data, p)
    lock = Path(str(folder) + ".lock")
    _not_a_folder(parent, "folder")
    _not_a_folder(folder, "folder")
    if lock.is_dir():
        raise ConfigError("teacher_signal", f"{lock} is a folder where the teacher cache's lock file should be: "
                                            "move it away (kdbench does not delete it)")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            weights = weights_digest(teacher)
            why = verify(folder, p, fields, weights) if folder.exists() else None
            if why is not None or not folder.exists():
                _rebuild(folder, teacher, conf, data, p, fields, weights, teacher_meta, why)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise ConfigError("teacher_signal", f"could not write the teacher cache at {e.filename or folder}: "
                                            f"{e.strerror or e}; no run record was written (fix the folder or "
                                            "free space, or use teacher_signal=online)") from None
    return CachedSignal(folder, json.loads((folder / META).read_text()),
                        on_device=(conf.get("teacher_cache") or {}).get("on_device", "auto"))


def _rebuild(folder: Path, teacher: nn.Module, conf: dict, data, p: dict, fields: dict, weights: str,
             teacher_meta: dict, why: str | None) -> None:
    """Build the cache (under its lock): a first time, or again when :func:`verify` found it broken (``why``)."""
    free = shutil.disk_usage(folder.parent).free
    if p["bytes"] > free:
        raise ConfigError("teacher_signal", f"the cached teacher needs {p['bytes'] / 2**30:.2f} GiB "
                                            f"({p['formula']}), the disk at {folder.parent} has "
                                            f"{free / 2**30:.2f} GiB free")
    if why is not None:
        log.warning("teacher cache %s is broken (%s): rebuilding it", folder, why)
        print(f"kdbench: warning: teacher cache {folder} is broken ({why}): rebuilding it", file=sys.stderr)
    for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # a build killed half-way (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    log.info("teacher cache %s: building (%s)", folder, p["formula"])
    build(folder, teacher, conf, data, p, fields=fields, weights=weights,
          who=f"teacher {teacher_meta.get('name') or teacher_meta.get('key')}")
