"""The teacher registry: a teacher is (architecture, dataset, recipe, seed) -> a checkpoint on disk.

Each entry is a folder ``<teachers_dir>/<name>/`` with ``model.safetensors`` and ``meta.json``
(the key's fields, test metrics, versions). ``meta.json`` is written last and atomically, so an
entry without it is incomplete and is never loaded. Training a missing teacher happens under a
file lock, so parallel sweep jobs that need the same teacher train it once and the rest wait and
reuse it. Loading never unpickles: safetensors for the registry, ``weights_only`` for imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kdbench.errors import TeacherError
from kdbench.records import atomic_write_text

META = "meta.json"
WEIGHTS = "model.safetensors"


def teacher_key(fields: dict[str, Any]) -> str:
    """A short stable hash of the teacher's identity (architecture, dataset, recipe, seed)."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def entry_name(arch: str, dataset: str, seed: int, key: str) -> str:
    return f"{dataset}-{arch}-s{seed}-{key}"


def entry_complete(entry: Path) -> bool:
    return (entry / META).is_file() and (entry / WEIGHTS).is_file()


def read_meta(entry: Path) -> dict:
    try:
        return json.loads((entry / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TeacherError("teacher.checkpoint", f"unreadable teacher metadata {entry / META}: {e}") from None


def save_entry(entry: Path, model: nn.Module, meta: dict) -> None:
    """Write weights (temp file + rename) and then ``meta.json`` (the completion marker)."""
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=entry)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"arch": str(meta.get("arch", ""))})
        os.replace(tmp, entry / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(entry / META, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def load_into(model: nn.Module, entry: Path, arch: str, num_classes: int) -> dict:
    """Load a registry entry into ``model`` after checking architecture and class count."""
    meta = read_meta(entry)
    if meta.get("arch") != arch:
        raise TeacherError("teacher.arch", f"checkpoint {entry} is a {meta.get('arch')!r}, the config asks for {arch!r}")
    if int(meta.get("num_classes", -1)) != num_classes:
        raise TeacherError("teacher", f"checkpoint {entry} has {meta.get('num_classes')} classes, "
                                      f"the dataset has {num_classes}")
    try:
        state = load_file(str(entry / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise TeacherError("teacher.checkpoint", f"corrupted teacher weights {entry / WEIGHTS}: {e}; "
                                                 "delete the folder to retrain") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise TeacherError("teacher.arch", f"checkpoint {entry} does not fit architecture {arch!r}: "
                                           f"{' '.join(first)[:300]}") from None
    return meta


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def get_or_train(entry: Path, build: Callable[[], nn.Module], arch: str, num_classes: int,
                 train: Callable[[nn.Module], dict] | None, meta_fields: dict,
                 log: Callable[[str], None] = print) -> tuple[nn.Module, dict, bool]:
    """Return ``(frozen teacher, meta, trained_now)``; train and register it first if it is missing.

    ``train(model) -> metrics`` is called at most once per entry across concurrent processes.
    ``train=None`` means training is disabled: a missing teacher is then an error.
    """
    model = build()
    if entry_complete(entry):
        return freeze(model), load_into(model, entry, arch, num_classes), False
    if train is None:
        raise TeacherError("teacher.train_if_missing",
                           f"no teacher at {entry} and training is disabled; set teacher.train_if_missing=true "
                           "or import one with `kdbench teacher import`")
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        if entry_complete(entry):  # another job trained it while we waited
            log(f"teacher {entry.name}: trained by another job, reusing it")
            return freeze(model), load_into(model, entry, arch, num_classes), False
        log(f"teacher {entry.name}: not found, training it first")
        metrics = train(model)
        meta = {**meta_fields, "arch": arch, "num_classes": num_classes, "test": metrics,
                "versions": versions()}
        save_entry(entry, model, meta)
    return freeze(model), meta, True


def versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "wandb", "pandas"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    try:
        from kdbench import __version__

        out["kdbench"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return out
