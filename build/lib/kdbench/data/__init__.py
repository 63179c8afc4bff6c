"""Datasets as in-memory tensors, batch augmentation, and the dataset registry.

A dataset is loaded once into a :class:`TensorData` (uint8 images or float features, int64
labels); :class:`TensorLoader` iterates it as shuffled :class:`Batch` objects ``(x, y, idx, view)`` on any
device and applies the augmentation as batched tensor ops, addressed by per-example view codes so
that ``(idx, view)`` reproduces an input exactly. Nothing here knows about models.
"""

from __future__ import annotations

from kdbench.data.core import Batch, TensorData, TensorLoader, split_train_val
from kdbench.data.sources import DATASETS, dataset_names, load_dataset

__all__ = ["DATASETS", "Batch", "TensorData", "TensorLoader", "dataset_names", "load_dataset", "split_train_val"]
