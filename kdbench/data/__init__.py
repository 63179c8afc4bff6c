"""Datasets as in-memory tensors, batch augmentation, and the dataset registry.

A dataset is loaded once into a :class:`TensorData` (uint8 images or float features, int64
labels); :class:`TensorLoader` iterates it in shuffled batches on any device and applies the
augmentation as batched tensor ops. Nothing here knows about models.
"""

from __future__ import annotations

from kdbench.data.core import TensorData, TensorLoader, split_train_val
from kdbench.data.sources import DATASETS, dataset_names, load_dataset

__all__ = ["DATASETS", "TensorData", "TensorLoader", "dataset_names", "load_dataset", "split_train_val"]
