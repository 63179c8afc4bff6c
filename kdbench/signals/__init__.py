"""Teacher signals: a batch in, what a distillation method needs from the teacher out.

A signal hides where the teacher's outputs come from. ``online`` runs the frozen teacher on the
batch (today's behaviour); ``none`` is for students trained from scratch. Later signals
(``cached`` by (idx, view), ``captured`` top-k from a file) drop in behind the same call, so the
LightningModule never changes for them.

The teacher is not a submodule of the student's LightningModule: Lightning never moves it,
never switches it to train mode, never writes it into the student's checkpoints (the registry
holds it). It runs under :func:`torch.inference_mode` unless an ablation trains it.

Adding a signal is one file in this package: a factory registered with :func:`register_signal`
(``factory(*, teacher, conf, data) -> TeacherSignal``; ``conf`` is the run's resolved config),
discovered on first lookup like the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

#: the splits a signal serves (``signal(batch, split)``), in the order they are stored
SPLITS = ("train", "val", "test")


class TopK(NamedTuple):
    """A sparse teacher signal: the k largest classes per position and their log-probabilities at
    temperature ``tau`` (the temperature they were captured at)."""

    indices: Tensor
    log_probs: Tensor
    tau: float = 1.0


#: what a signal returns for a batch: dense logits ``[..., C]``, top-k, or None (no teacher)
TeacherOutput = Tensor | TopK | None


@runtime_checkable
class TeacherSignal(Protocol):
    """``signal(batch, split)`` -> the teacher's output for that batch (``split``: train | val | test)."""

    kind: str

    def to(self, device: torch.device) -> TeacherSignal: ...

    def __call__(self, batch, split: str) -> TeacherOutput: ...


class NoSignal:
    """No teacher at all (a student trained from scratch): no forward pass, nothing returned."""

    kind = "none"
    trainable_parameters: list = []

    def to(self, device: torch.device) -> NoSignal:
        return self

    def __call__(self, batch, split: str) -> None:
        return None


_REGISTRY: dict[str, Callable[..., TeacherSignal]] = {"none": lambda **_: NoSignal()}
_PREFLIGHT: dict[str, Callable[[dict, Any], None]] = {}
_NO_TEACHER: set[str] = {"none"}
_GIVES: dict[str, frozenset[str]] = {"none": frozenset()}


def table_for(tables: dict, split: str):
    """The stored table a batch of ``split`` reads. A dataset without a validation split (``val_size: 0``,
    e.g. CIFAR) is validated on its test set (:func:`kdbench.engine.make_loaders`), so ``val`` reads the
    test table then."""
    if split == "val" and "val" not in tables:
        split = "test"
    return tables[split]


#: what a teacher signal can give a method: ``dense`` logits per row, ``topk`` log-probs (signals.TopK), the
#: teacher's intermediate ``features``, and the teacher ``model`` itself in memory (a gradient through it, its
#: train mode)
CAPABILITIES = ("dense", "topk", "features", "model")


def register_signal(name: str, *, preflight: Callable[[dict, Any], None] | None = None, needs_teacher: bool = True,
                    gives: tuple[str, ...] = ("dense",)):
    """Decorator for a factory ``(*, teacher, conf, data, teacher_meta) -> TeacherSignal``:
    ``teacher_signal=<name>``. ``preflight(conf, data)`` runs before any work (before the teacher is
    trained or loaded) and raises a one-line ConfigError for a run that cannot work. ``gives``: which of
    :data:`CAPABILITIES` the signal gives (a method's needs are checked against it before any work)."""
    unknown = set(gives) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"signal {name!r}: unknown capabilities {sorted(unknown)}; allowed: {', '.join(CAPABILITIES)}")

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a teacher signal named {name!r} is already registered")
        _REGISTRY[name] = factory
        if preflight is not None:
            _PREFLIGHT[name] = preflight
        if not needs_teacher:
            _NO_TEACHER.add(name)
        _GIVES[name] = frozenset(gives)
        return factory

    return deco


def gives(kind: str) -> frozenset[str]:
    """What teacher signal ``kind`` can give a method (:data:`CAPABILITIES`)."""
    _discover()
    return _GIVES.get(kind, frozenset())


def gives_features(kind: str) -> bool:
    """True for signals that can give a feature method the teacher's intermediate features (``online``)."""
    return "features" in gives(kind)


def needs_teacher(kind: str) -> bool:
    """False for signals that never load a teacher (``none``, ``captured``)."""
    _discover()
    return kind not in _NO_TEACHER


def preflight_signal(kind: str, conf: dict, data: Any) -> None:
    _discover()
    check = _PREFLIGHT.get(kind)
    if check is not None:
        check(conf, data)


def _discover() -> None:
    from kdbench.plugins import import_submodules

    import_submodules(__name__, __path__)


def signal_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def build_signal(kind: str, *, teacher: Any = None, conf: dict | None = None, data: Any = None,
                 teacher_meta: dict | None = None) -> TeacherSignal:
    """The signal ``kind`` for a run (``none`` needs nothing; ``online`` the teacher; ``cached`` its entry too)."""
    _discover()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown teacher signal {kind!r}; valid: {', '.join(signal_names())}")
    return _REGISTRY[kind](teacher=teacher, conf=conf or {}, data=data, teacher_meta=teacher_meta)
