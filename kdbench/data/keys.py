"""Reading the ``dataset`` config section (a dict or an OmegaConf DictConfig) inside the loaders.

:func:`kdbench.data.load_dataset` is also called with plain dicts (benches, ``kdbench teacher import``),
without the schema in front of it, so a loader reads each key it needs through these helpers: a bad
value is a one-line :class:`~kdbench.errors.ConfigError` naming ``dataset.<key>``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench.errors import ConfigError


def get(cfg: Mapping, key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` when it is missing or null."""
    try:
        value = cfg.get(key, default)
    except Exception:  # noqa: BLE001 - struct DictConfigs and odd mappings
        value = default
    return default if value is None else value


def integer(cfg: Mapping, key: str, default: int | None, minimum: int = 0) -> int | None:
    """An integer ``>= minimum`` (None only where ``default`` is None and the key is unset)."""
    value = get(cfg, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"dataset.{key}", f"must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"dataset.{key}", f"must be >= {minimum}, got {value!r}")
    return int(value)


def number(cfg: Mapping, key: str, default: float, lo: float, hi: float = math.inf,
           open_lo: bool = False, open_hi: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (either end open on request)."""
    value = get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"dataset.{key}", f"must be a number, got {value!r}")
    bad_lo = value <= lo if open_lo else value < lo
    bad_hi = value >= hi if open_hi else value > hi
    if bad_lo or bad_hi:
        lo_b, hi_b = "(" if open_lo else "[", ")" if open_hi else "]"
        raise ConfigError(f"dataset.{key}", f"must be in {lo_b}{lo}, {hi}{hi_b}, got {value!r}")
    return float(value)


def boolean(cfg: Mapping, key: str, default: bool) -> bool:
    value = get(cfg, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"dataset.{key}", f"must be true or false, got {value!r}")
    return value


def subset(cfg: Mapping, split: str) -> int | None:
    """``dataset.<split>_subset``: keep that many examples (None: all)."""
    return integer(cfg, f"{split}_subset", None, minimum=1)


def data_root(cfg: Mapping) -> Path:
    """``dataset.root``, or ``$KDBENCH_DATA_ROOT``, or ``./data``."""
    root = get(cfg, "root") or os.environ.get("KDBENCH_DATA_ROOT") or "data"
    return Path(str(root)).expanduser().absolute()
