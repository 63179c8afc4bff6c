"""Distillation methods: small objects over the pure losses in :mod:`kdbench.losses`.

A method takes the student's logits, the teacher signal's output and the batch, and returns
``{"loss": scalar, <named terms>...}``. It does not touch data, files or the Trainer. A student
trained from scratch has no method (plain cross-entropy).

Adding a method is one file in this package (a class decorated with :func:`register_method`)
plus one config file in ``conf/distill/`` naming it (``method: <name>`` and its parameters): the
package's modules are discovered on first lookup, so nothing else needs to import the new file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Method", "build_method", "method_names", "method_params", "register_method"]


@runtime_checkable
class Method(Protocol):
    """``method(student_logits, teacher, batch) -> {"loss": ..., term: ...}``."""

    #: False for methods that train on labels only (no teacher signal needed)
    needs_teacher: bool

    def __call__(self, student_logits: Tensor, teacher: Any, batch: Any) -> dict[str, Tensor]: ...


_REGISTRY: dict[str, Callable[..., Method]] = {}
_DISCOVERED = False


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
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def method_params(name: str) -> tuple[str, ...]:
    """The keyword arguments a method takes (the ``distill.*`` keys it reads)."""
    _discover()
    cls = _REGISTRY[name]
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    import inspect

    return tuple(p for p in inspect.signature(cls).parameters if p != "self")


def build_method(name: str, params: Mapping[str, Any]) -> Method:
    """The method ``name`` with its parameters taken from ``params`` (keys it does not take are ignored)."""
    _discover()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(method_names())}")
    wanted = method_params(name)
    return _REGISTRY[name](**{k: v for k, v in params.items() if k in wanted})
