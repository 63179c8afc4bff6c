"""Distillation methods: small objects over the pure losses in :mod:`kdbench.losses`.

A method takes the student's logits, the teacher signal's output and the batch, and returns
``{"loss": scalar, <named terms>...}``. It does not touch data, files or the Trainer. A student
trained from scratch has no method (plain cross-entropy).

Adding a method is one file in this package (a class decorated with :func:`register_method`)
plus one config file in ``conf/distill/`` naming it (``method: <name>`` and its parameters): the
package's modules are discovered on first lookup, so nothing else needs to import the new file.

A method declares what each parameter may be (``tau: float = param(4.0, N(0, lo_open=True))``, the
vocabulary of :mod:`kdbench.kinds`; a parameter without one may be any value of its default's kind)
and :func:`build_method` checks them, once, as it builds the method: a bad value is a one-line
ConfigError naming ``distill.<key>``, before any work (``config.validate`` builds it too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from kdbench.kinds import N, Spec, like

__all__ = ["HARNESS_KEYS", "Method", "build_method", "feature_terms", "method_names", "method_params", "method_specs",
           "register_method", "teacher_reads"]

#: ``distill.*`` keys the harness reads itself (every other key is a parameter of the method)
HARNESS_KEYS = ("variant", "method", "enabled", "teacher_train_mode", "teacher_grad")
#: a softmax temperature: any finite number > 0
TAU = N(0, lo_open=True)


@runtime_checkable
class Method(Protocol):
    """``method(student_logits, teacher, batch) -> {"loss": ..., term: ...}``."""

    #: False for methods that train on labels only (no teacher signal needed)
    needs_teacher: bool
    # optional ``reads``: the teacher outputs the method can read, a subset of ("dense", "topk")
    # (kdbench.signals.CAPABILITIES); dense logits only when absent (see :func:`teacher_reads`)

    def __call__(self, student_logits: Tensor, teacher: Any, batch: Any) -> dict[str, Tensor]: ...


_REGISTRY: dict[str, Callable[..., Method]] = {}


def feature_terms(student_logits: Tensor, batch: Any, ce_weight: float, **weighted: tuple[float, Tensor]) -> dict:
    """A feature method's terms: ``ce_weight * CE(student, y)`` plus each ``name=(weight, term)``; the
    returned dict holds the loss, ``ce`` and every unweighted term (what the run logs)."""
    import torch.nn.functional as F

    logits = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
    ce = F.cross_entropy(logits, batch.y)
    loss = ce_weight * ce
    for w, term in weighted.values():
        loss = loss + w * term
    return {"loss": loss, "ce": ce, **{k: term for k, (_, term) in weighted.items()}}


def teacher_reads(method: Any) -> frozenset[str]:
    """The forms of teacher output ``method`` can read (``dense`` logits, ``topk`` log-probs): its ``reads``
    attribute, else dense logits only (a method that reads top-k says so)."""
    return frozenset(getattr(method, "reads", ("dense",)))


def register_method(name: str):
    """Class decorator: make a method available as ``distill.method=<name>``."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = cls
        cls.method_name = name
        return cls

    return deco


def _discover() -> None:
    from kdbench.plugins import import_submodules

    import_submodules(__name__, __path__)


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def method_params(name: str) -> tuple[str, ...]:
    """The keyword arguments a method takes (the ``distill.*`` keys it reads)."""
    _discover()
    cls = _REGISTRY[name]
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)
    import inspect

    return tuple(p for p in inspect.signature(cls).parameters if p != "self")


def method_defaults(name: str) -> dict[str, Any]:
    """Each parameter's default (those without one are left out)."""
    import inspect

    _discover()
    sig = inspect.signature(_REGISTRY[name])
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def method_specs(name: str) -> dict[str, Spec]:
    """What each parameter of method ``name`` may be: its declared :class:`~kdbench.kinds.Spec`, or the
    kind of its default."""
    import inspect

    _discover()
    cls = _REGISTRY[name]
    declared = {f.name: f.metadata["spec"] for f in dataclasses.fields(cls) if f.init and "spec" in f.metadata} \
        if dataclasses.is_dataclass(cls) else {}
    sig = inspect.signature(cls).parameters
    return {k: declared.get(k) or like(sig[k].default if k in sig else None) for k in method_params(name)}


def unused_keys(name: str, params: Mapping[str, Any]) -> list[str]:
    """The ``distill.*`` keys that method ``name`` does not read (a shared recipe's ``alpha`` under DKD).

    A key that no registered method reads is a typo: a one-line ConfigError naming it.
    """
    from kdbench.errors import ConfigError

    _discover()
    if name not in _REGISTRY:
        raise ConfigError("distill.method", f"unknown method {name!r}; allowed: none, {', '.join(method_names())}")
    wanted = method_params(name)
    known = {k for m in _REGISTRY for k in method_params(m)}
    for k in params:
        if k not in wanted and k not in HARNESS_KEYS and k not in known:
            raise ConfigError(f"distill.{k}", f"is not a parameter of method {name!r} (nor of any method); its "
                                              f"parameters: {', '.join(wanted)}")
    return [k for k in params if k not in wanted and k not in HARNESS_KEYS]


def build_method(name: str, params: Mapping[str, Any]) -> Method:
    """The method ``name`` from the ``distill`` config (keys it does not read are left out; see
    :func:`unused_keys`), its parameters checked against :func:`method_specs` (one-line ConfigErrors)."""
    unused_keys(name, params)
    specs = method_specs(name)
    kwargs = {k: specs[k].check(f"distill.{k}", v) for k, v in params.items() if k in specs}
    return _REGISTRY[name](**kwargs)
