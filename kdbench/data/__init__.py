"""Datasets as in-memory tensors, batch augmentation, and the dataset registry.

Rooms: ``core`` (TensorData, TensorLoader, Batch), ``augment``, ``registry`` (names -> loaders,
``load_dataset``), the loaders ``bundled`` (synthetic, digits), ``torchvision_sets``, ``imagefolder`` and
``text``, and what the loaders share: ``keys`` (reading the config section) and ``build``.

A dataset is loaded once into a :class:`TensorData` (uint8 images or float features, int64
labels); :class:`TensorLoader` iterates it as shuffled :class:`Batch` objects ``(x, y, idx, view)`` on any
device and applies the augmentation as batched tensor ops, addressed by per-example view codes so
that ``(idx, view)`` reproduces an input exactly. Nothing here knows about models.
"""

from __future__ import annotations

from kdbench.data.core import Batch, TensorData, TensorLoader, split_train_val
from kdbench.data.registry import DATASETS, DatasetSpec, dataset_names, load_dataset, register_dataset

__all__ = ["DATASETS", "Batch", "DatasetSpec", "TensorData", "TensorLoader", "dataset_names", "load_dataset",
           "register_dataset", "split_train_val"]
