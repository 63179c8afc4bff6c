"""The model zoo behind one entry point, ``build_model(name, num_classes, ...)``.

Models register themselves with :func:`register_model`; the registry knows nothing about
distillation. Every model's ``forward(x)`` returns logits; ``forward(x, return_features=True)``
returns ``(logits, features)`` where the model supports it (for feature-based methods).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    #: input shapes the model accepts, e.g. ``(3, 32, 32)``; ``None`` means any (flattened)
    input_shape: tuple[int, ...] | None
    family: str
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_shape: tuple[int, ...] | None = None, family: str = "misc",
                   description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(num_classes, in_shape, **kw) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, fn, input_shape, family, description or (fn.__doc__ or "").strip())
        return fn

    return deco


def _load_builtin() -> None:
    # imported for their registration side effect
    from kdbench.models import cifar, hf, lm, mlp  # noqa: F401


def model_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_model(name: str, num_classes: int, in_shape: tuple[int, ...] | None = None, **kw) -> nn.Module:
    """Build a registered model with a ``num_classes``-way head for inputs of ``in_shape`` (C, H, W)."""
    spec = get_spec(name)
    if spec.input_shape is not None and in_shape is not None and tuple(in_shape) != spec.input_shape:
        raise ValueError(
            f"model {name!r} expects inputs of shape {spec.input_shape}, the dataset gives {tuple(in_shape)}")
    if spec.input_shape is None and in_shape is None:
        raise ValueError(f"model {name!r} needs in_shape (it sizes its first layer from the input)")
    return spec.builder(num_classes=num_classes, in_shape=tuple(in_shape) if in_shape else spec.input_shape, **kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ModelSpec", "build_model", "count_parameters", "get_spec", "model_names", "register_model"]
