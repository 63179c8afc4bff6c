"""The student's transfer set: the part of the training split a distilled (or scratch) student learns from.

The teacher trains on the whole training split (less the validation hold-out); the student may see less:
``dataset.transfer_subset=k`` keeps a fixed, class-balanced ``k`` examples (KD with scarce labels), and
``dataset.train_exclude_classes=[3]`` removes every example of the listed classes (Hinton et al.'s
omitted-digit experiment). Validation and test splits are never touched, so a student is measured on
every class. With neither key set the data is returned as it is (same object).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from kdbench.data.build import subset_indices
from kdbench.data.core import TensorData

#: the dataset keys that shape the transfer set only (never the teacher's training data)
TRANSFER_KEYS: tuple[str, ...] = ("transfer_subset", "train_exclude_classes")


def restricts(dataset_cfg: Mapping) -> bool:
    """True when the config gives the student less than the teacher's training split."""
    return dataset_cfg.get("transfer_subset") is not None or bool(dataset_cfg.get("train_exclude_classes"))


def check(dataset_cfg: Mapping, num_classes: int) -> None:
    """Refuse a class id outside ``[0, num_classes)`` or a set that excludes every class (before any work)."""
    from kdbench.errors import ConfigError

    excl = list(dataset_cfg.get("train_exclude_classes") or [])
    bad = [c for c in excl if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes]
    if bad:
        raise ConfigError("dataset.train_exclude_classes",
                          f"class ids must be integers in [0, {num_classes}); got {bad[0]!r}")
    if len(set(excl)) >= num_classes:
        raise ConfigError("dataset.train_exclude_classes", f"excludes all {num_classes} classes: nothing to learn from")


def transfer_set(data: TensorData, dataset_cfg: Mapping) -> TensorData:
    """``data`` with its training split restricted as the config asks (see the module docstring).

    Classes are removed first, then the class-balanced subset is taken among the examples left (the same
    fixed ordering as ``train_subset``, independent of the run's seed). ``info["transfer"]`` records what
    the student's training split lacks and how many examples it kept.
    """
    if not restricts(dataset_cfg):
        return data
    from kdbench.errors import ConfigError

    if data.is_tokens:
        key = "transfer_subset" if dataset_cfg.get("transfer_subset") is not None else "train_exclude_classes"
        raise ConfigError(f"dataset.{key}", "is for labelled examples; a token dataset has no classes to balance or "
                                            "exclude (use dataset.train_subset)")
    check(dataset_cfg, data.num_classes)
    y = data.train_y
    keep = torch.arange(y.numel())
    excl = sorted(set(dataset_cfg.get("train_exclude_classes") or []))
    if excl:
        keep = keep[~torch.isin(y, torch.tensor(excl, dtype=y.dtype))]
    k = dataset_cfg.get("transfer_subset")
    if k is not None:
        if int(k) > keep.numel():
            raise ConfigError("dataset.transfer_subset",
                              f"{k} is more than the {keep.numel()} training examples left after the validation "
                              "hold-out" + (" and the excluded classes" if excl else ""))
        idx = subset_indices(y[keep], int(k))
        if idx is not None:
            keep = keep[idx]
    info = {**data.info, "transfer": {"n_train_full": int(y.numel()), "n_train": int(keep.numel()),
                                      "subset": None if k is None else int(k), "excluded_classes": excl}}
    return dataclasses.replace(data, train_x=data.train_x[keep], train_y=y[keep], info=info)
