"""The teacher registry: a teacher is (architecture, dataset, recipe, seed, precision) -> a checkpoint on disk.

Each entry is a folder ``<teachers_dir>/<name>/`` with ``model.safetensors`` and ``meta.json``
(the key's fields, test metrics, versions). ``meta.json`` is written last and atomically, so an
entry without it is incomplete and is never loaded. Training a missing teacher happens under a
file lock, so parallel sweep jobs that need the same teacher train it once and the rest wait and
reuse it. Loading never unpickles: safetensors for the registry, ``weights_only`` for imports.

Training itself is :mod:`kdbench.teachers.train`; nothing here imports Lightning, the distillation
module or the engine, so signals and commands can read the registry without them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kdbench.errors import TeacherError
from kdbench.files import atomic_write, atomic_write_text
from kdbench.provenance import versions

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
    """An entry's ``meta.json``, refused in one line unless it is an object whose ``arch`` is a name,
    ``num_classes`` an integer >= 2 and ``test`` (when present) a mapping of metric names to numbers."""
    where = entry / META
    try:
        meta = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TeacherError("teacher.checkpoint", f"unreadable teacher metadata {where}: {e}") from None
    if not isinstance(meta, dict):
        raise TeacherError("teacher.checkpoint", f"teacher metadata {where} is a JSON {type(meta).__name__}, not an "
                                                 "object; delete the folder to retrain")
    n, test = meta.get("num_classes"), meta.get("test")
    bad = ("arch" if not isinstance(meta.get("arch"), str) or not meta["arch"] else
           "num_classes" if isinstance(n, bool) or not isinstance(n, int) or n < 2 else
           "test" if test is not None and (not isinstance(test, dict) or any(
               v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in test.values()))
           else None)
    if bad:
        raise TeacherError("teacher.checkpoint", f"teacher metadata {where}: {bad} is {meta.get(bad)!r}, not what a "
                                                 "registry entry holds; delete the folder to retrain")
    return meta


def save_entry(entry: Path, model: nn.Module, meta: dict) -> None:
    """Write weights (temp file + rename) and then ``meta.json`` (the completion marker)."""
    entry.mkdir(parents=True, exist_ok=True)
    # cloned: safetensors refuses tensors that share memory (a language model's tied input/output embeddings)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(entry / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"arch": str(meta.get("arch", ""))}))
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
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise TeacherError("teacher.checkpoint", f"teacher weights {entry / WEIGHTS}: tensor {bad!r} holds NaN or "
                                                 "infinite values; delete the folder to retrain")
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
        log(f"teacher {entry.name}: not found, training it first ({meta_fields.get('recipe', {}).get('epochs', '?')} "
            "epochs; an epoch/ETA line follows each epoch, or Lightning's progress bar)")
        metrics = train(model)
        meta = {**meta_fields, "arch": arch, "num_classes": num_classes, "test": metrics,
                "versions": versions()}
        save_entry(entry, model, meta)
    return freeze(model), meta, True


def dataset_identity(dataset_cfg: dict, data) -> dict:
    """What identifies a teacher's training data: the dataset config minus paths and loader settings."""
    d = dict(dataset_cfg)
    # the transfer keys shape the student's training split only: the teacher learns from all of it
    for k in ("root", "download", "cache_dir", "batch_size", "eval_batch_size", "augment", "transfer_subset",
              "train_exclude_classes"):
        d.pop(k, None)
    d["num_classes"] = data.num_classes
    d["n_train"] = int(data.train_x.shape[0])
    return d


def key_fields(teacher_cfg: dict, dataset_cfg: dict, data, precision: str) -> dict:
    """Everything that changes a trained teacher's weights: architecture, data, recipe, seed, precision.

    Only the recipe and the resolved precision train a teacher: the student run's trainer settings
    (``limit_train_batches``, ``gradient_clip_val``, ...) never reach it. Float32 is the default and is
    left out of the key, so entries registered before precision was part of it keep their names.
    """
    fields = {"arch": teacher_cfg["arch"], "kwargs": teacher_cfg.get("kwargs") or {},
              "dataset": dataset_identity(dataset_cfg, data), "recipe": teacher_cfg["recipe"],
              "seed": int(teacher_cfg["seed"])}
    if precision not in ("32-true", "32"):
        fields["precision"] = precision
    return fields


def oracle(data) -> tuple[nn.Module, dict]:
    """``teacher.arch=oracle``: the data's own exact teacher (markov's true law, synthetic's hidden rule)."""
    if data.is_tokens:
        from kdbench.data.text import markov_oracle

        return freeze(markov_oracle(data)), {"arch": "oracle", "key": "oracle-markov", "name": "oracle (true law)"}
    from kdbench.data.bundled import oracle_teacher

    return freeze(oracle_teacher(data)), {"arch": "oracle", "key": "oracle", "name": "oracle"}


def locate(teacher_cfg: dict, dataset_cfg: dict, data, precision: str, teachers_dir: Path) -> tuple[Path, dict]:
    """The entry a teacher config names and its key fields (with ``key``): ``teacher.checkpoint`` (a folder,
    or an entry name under ``teachers_dir``, which must be complete), else the key's own folder."""
    fields = key_fields(teacher_cfg, dataset_cfg, data, precision)
    key = teacher_key(fields)
    checkpoint = teacher_cfg.get("checkpoint")
    if checkpoint:
        entry = Path(str(checkpoint))
        if not entry.is_dir():
            entry = teachers_dir / str(checkpoint)
        if not entry_complete(entry):
            raise TeacherError("teacher.checkpoint", f"no registry entry at {entry} (expected {META} and {WEIGHTS})")
    else:
        entry = teachers_dir / entry_name(teacher_cfg["arch"], dataset_cfg["name"], int(teacher_cfg["seed"]), key)
        if entry_complete(entry) and read_meta(entry).get("key", key) != key:  # a folder copied or renamed by hand
            raise TeacherError("teacher", f"registry entry {entry} holds the teacher of key "
                                          f"{read_meta(entry).get('key')!r}, not this config's {key!r}; delete the "
                                          "folder to retrain (or name it with teacher.checkpoint=)")
    return entry, {**fields, "key": key}


def import_published(path: str | os.PathLike, arch: str, dataset: dict, teachers_dir: str | os.PathLike,
                     evaluate: bool = True, log: Callable[[str], None] = print, submodule: str | None = None) -> Path:
    """Register a RepDistiller/mdistiller teacher checkpoint (``.pth``) as a registry entry.

    The file is read with ``torch.load(weights_only=True)`` only (a checkpoint that needs arbitrary
    unpickling is refused), checked against ``arch`` and the dataset's class count with a strict
    load, optionally evaluated on the dataset's test split when its files are present, and stored
    as safetensors + ``meta.json``. Use it with ``teacher.checkpoint=<entry name>``.
    """
    from kdbench.data import DATASETS
    from kdbench.errors import DataError
    from kdbench.models import build_model, get_spec
    from kdbench.models.checkpoints import check_state_dict, infer_num_classes, read_state_dict

    src = Path(path)
    try:
        get_spec(arch)
    except KeyError as e:
        raise TeacherError("--arch", str(e).strip("'\"")) from None
    state = read_state_dict(src, key="PATH", submodule=submodule)
    n_ckpt = infer_num_classes(state)
    name = dataset.get("name")
    known = DATASETS[name].num_classes if name in DATASETS else None  # None: known only once loaded
    n_data = n_ckpt if known is None else known
    if n_ckpt is not None and n_data is not None and n_ckpt != n_data:
        raise TeacherError("--dataset", f"checkpoint has {n_ckpt} classes, dataset {name!r} has {n_data}")
    num_classes = int(n_data or n_ckpt)
    spec = get_spec(arch)
    model = build_model(arch, num_classes, spec.input_shape or (1, 28, 28))
    check_state_dict(model, state, arch, key="--arch")
    check_finite(state, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    metrics: dict = {}
    note = None if evaluate else "not evaluated: --no-eval"
    if evaluate:
        try:
            metrics = evaluate_on_test(model, dataset)
        except DataError as e:  # named by the command's own option, not the config key
            msg = e.message.replace("set dataset.root", "pass --root").replace("dataset.download=true", "download it")
            note = f"not evaluated: --root: {msg}"
    entry = Path(teachers_dir) / f"{name}-{arch}-imported-{digest[:10]}"
    meta = {"arch": arch, "num_classes": num_classes, "dataset": {"name": name}, "key": f"imported-{digest[:10]}",
            "source": str(src.resolve()), "sha256": digest, "test": metrics, "note": note, "imported": True,
            "versions": versions()}
    save_entry(entry, model, meta)
    return entry


def check_finite(state: dict, src: Path, key: str = "PATH") -> None:
    """Refuse weights holding NaN or infinity (one line naming the first such tensor) before they are registered."""
    for name, t in state.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise TeacherError(key, f"{src}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                                        f"{t.numel()}; weights that are not finite are never registered")


@torch.no_grad()
def evaluate_on_test(model: nn.Module, dataset: dict, batch_size: int = 500) -> dict:
    """Test-set metrics of ``model`` (eval mode) on the dataset described by ``dataset`` (a config dict)."""
    from kdbench.data import TensorLoader, load_dataset
    from kdbench.metrics import ClassificationMetrics

    data = load_dataset(dataset)
    model.eval()
    metrics = ClassificationMetrics(data.num_classes)
    for batch in TensorLoader(data.test_x, data.test_y, batch_size, mean=data.mean, std=data.std):
        metrics.update(model(batch[0]), batch[1])
    return metrics.compute()


def drift(registered: dict | None, measured: dict | None, n_test: int) -> str | None:
    """A warning when the teacher's test accuracy measured in this run differs from the one stored
    in its registry entry by more than 0.1 % of the test set (and at least 3 images): the stored
    weights are then not the ones those metrics describe (an entry written by older code, a
    hand-edited file) or the test data differ. None when they agree or either is missing."""
    a, b = (registered or {}).get("acc"), (measured or {}).get("acc")
    if a is None or b is None or n_test <= 0:
        return None
    diff = round(abs(float(a) - float(b)) * n_test)
    if diff < 3 or diff <= 0.001 * n_test:
        return None
    return (f"measured test accuracy {100 * float(b):.2f}% differs from the registry's {100 * float(a):.2f}% "
            f"by {diff} of {n_test} test images: the stored weights or the test data are not the ones the "
            "entry's metrics describe (re-register the teacher, or check the dataset)")
