"""Safe reading of published teacher checkpoints (RepDistiller / mdistiller ``ckpt_epoch_240.pth``).

Checkpoints are read with ``torch.load(..., weights_only=True)`` only: tensors, plain containers and
numbers load; anything whose unpickling would call arbitrary Python (a pickled ``nn.Module``, a
custom class, an ``os.system`` payload) is refused *before* it runs. Every failure is a
:class:`~kdbench.errors.TeacherError` with a one-line message.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn

from kdbench.errors import TeacherError

__all__ = ["DEFAULT_KEY", "check_state_dict", "infer_num_classes", "read_state_dict"]

#: the config key named in errors unless the caller passes another
DEFAULT_KEY = "teacher.checkpoint"

#: where the published formats keep the weights, tried in this order
_CONTAINER_KEYS = ("model", "state_dict")
_SHOW = 3  # how many key names an error lists

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's explanations run to paragraphs)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    sentence = lines[0].split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 120 else sentence[:117] + "..."


def _names_a_real_object(dotted: str) -> bool:
    """False for a ``torch.*`` global that does not exist (a name cut short by truncation).

    Only modules that are already imported are inspected; nothing is imported here.
    """
    module, _, attr = dotted.rpartition(".")
    loaded = sys.modules.get(module)
    if module.split(".")[0] != "torch" or loaded is None:
        return True  # cannot tell without importing it: treat it as a real (refused) object
    return hasattr(loaded, attr)


def _explain_unpickling(path: str, exc: pickle.UnpicklingError) -> str:
    """Tell a refused pickled object apart from bytes that are not a (complete) checkpoint."""
    inner = [str(e) for e in (exc, exc.__context__, exc.__cause__) if e is not None]
    names = [m for text in inner for m in _GLOBAL_RE.findall(text)]
    try:  # zip checkpoints can list every non-allowlisted global without unpickling anything
        names += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        pass
    garbled = [n for n in names if not _names_a_real_object(n)]
    names = list(dict.fromkeys(n for n in names if n not in garbled))
    if names:
        shown = ", ".join(names[:_SHOW]) + (", ..." if len(names) > _SHOW else "")
        return (f"refused to load {path}: it carries pickled Python objects ({shown}) whose loading could "
                f"run arbitrary code; re-save it as a plain state_dict "
                f"(torch.save({{'model': model.state_dict()}}, path)) from a trusted environment")
    detail = (f"garbled pickle stream (names a non-existent {garbled[0]})" if garbled
              else _first_line(exc.__context__ or exc))
    return f"{path} is not a readable torch checkpoint (truncated or corrupted): {detail}"


def _load(path: str, key: str) -> object:
    if not os.path.exists(path):
        raise TeacherError(key, f"checkpoint file not found: {path}")
    if not os.path.isfile(path):
        raise TeacherError(key, f"checkpoint path is not a file: {path}")
    if os.path.getsize(path) == 0:
        raise TeacherError(key, f"checkpoint file is empty: {path}")
    try:
        with warnings.catch_warnings():
            # old (pre-zip) checkpoints use pickle protocol 4; the weights-only unpickler warns about it
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            # RepDistiller's *_last.pth carries its argparse.Namespace ("opt"): exactly that class is
            # allowed (a plain record of options; it runs no code), nothing else
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TeacherError(key, _explain_unpickling(path, exc)) from None
    except (OSError, MemoryError) as exc:
        raise TeacherError(key, f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    except Exception as exc:  # zip/storage errors, EOFError, KeyError on garbage, ...
        raise TeacherError(
            key, f"{path} is not a readable torch checkpoint (truncated or corrupted): "
                 f"{type(exc).__name__}: {_first_line(exc)}") from None


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def take_submodule(sd: dict[str, torch.Tensor], submodule: str | None, path: str, key: str) -> dict[str, torch.Tensor]:
    """The ``student.`` or ``teacher.`` part of a distillation run's checkpoint (mdistiller saves the
    whole distiller: ``module.student.*`` and ``module.teacher.*``)."""
    parts = sorted({k.split(".", 1)[0] for k in sd if "." in k} & {"student", "teacher"})
    if submodule is None:
        if parts and all(k.split(".", 1)[0] in ("student", "teacher") for k in sd):
            raise TeacherError(key, f"{path} is a distillation run's checkpoint (it holds {' and '.join(parts)} "
                                    f"weights): choose one with --submodule {'|'.join(parts)}")
        return sd
    prefix = submodule + "."
    picked = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not picked:
        raise TeacherError("--submodule", f"{path} has no {submodule!r} weights (it holds: "
                                          f"{', '.join(parts) or 'one model, no sub-models'})")
    return picked


def read_state_dict(path: str | os.PathLike, key: str = DEFAULT_KEY,
                    submodule: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's weights as ``{name: tensor}`` on the CPU, safely.

    Accepts the RepDistiller / mdistiller format (``{"model": state_dict, "epoch": ..., "accuracy":
    ..., "optimizer": ...}``), ``{"state_dict": ...}`` and a bare state_dict; strips a
    ``module.`` (DataParallel) prefix; drops every non-tensor entry. ``key`` is the config key named
    in a :class:`TeacherError`.
    """
    path = os.fspath(path)
    obj = _load(path, key)
    if not isinstance(obj, Mapping):
        raise TeacherError(key, f"{path} holds a {type(obj).__name__}, not a dict of weights (a state_dict)")
    container = obj
    for name in _CONTAINER_KEYS:
        inner = obj.get(name)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            container = inner
            break
    sd = {str(k): v for k, v in container.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(map(str, list(obj)[:8])) or "none"
        raise TeacherError(key, f"{path} contains no weights: no state_dict under 'model' or 'state_dict' "
                                f"and no tensors at the top level (keys: {keys})")
    return take_submodule(_strip_prefix(sd), submodule, path, key)


def infer_num_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Output size of the last linear layer (the last 2-D ``*weight``), or ``None`` if there is none."""
    for name in reversed(list(state_dict)):
        t = state_dict[name]
        if name.endswith("weight") and isinstance(t, torch.Tensor) and t.ndim == 2:
            return int(t.shape[0])
    return None


def _listing(what: str, names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW]) + (", ..." if len(names) > _SHOW else "")
    return f"{what} {len(names)} key{'s' if len(names) != 1 else ''} ({shown})"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str,
                     key: str = DEFAULT_KEY) -> None:
    """Load ``state_dict`` into ``model`` with ``strict=True``; explain any mismatch in one line."""
    own = model.state_dict()
    # BatchNorm accepts a missing num_batches_tracked from old checkpoints: leave that to torch
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]

    if not missing and not unexpected and mismatched:
        ck_classes, model_classes = infer_num_classes(state_dict), infer_num_classes(own)
        head = {k for k in own if own[k].shape[:1] == (model_classes,) and k.rpartition(".")[0] in
                {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}}
        if ck_classes != model_classes and set(mismatched) <= head:
            raise TeacherError(key, f"checkpoint for {arch!r} has {ck_classes} classes, "
                                    f"the dataset has {model_classes}")
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if unexpected:
            parts.append(_listing("unexpected", unexpected))
        if mismatched:
            shown = ", ".join(f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
                              for k in mismatched[:_SHOW])
            parts.append(f"{len(mismatched)} shape mismatch{'es' if len(mismatched) != 1 else ''} ({shown}"
                         f"{', ...' if len(mismatched) > _SHOW else ''})")
        raise TeacherError(key, f"checkpoint does not match architecture {arch!r}: {'; '.join(parts)}")
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        raise TeacherError(key, f"checkpoint does not match architecture {arch!r}: {_first_line(exc)}") from None
