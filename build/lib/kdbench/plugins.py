"""Registries filled by discovery: import every public submodule of a package once."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

_DONE: set[str] = set()


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import ``package``'s public submodules (their registration decorators run); once per package."""
    if package in _DONE:
        return
    _DONE.add(package)
    for info in pkgutil.iter_modules(list(path)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
