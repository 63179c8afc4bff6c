"""Teachers: the registry (:mod:`~kdbench.teachers.registry`: keys, entries, safe loading, import,
drift) and training a missing one (:mod:`~kdbench.teachers.train`: :func:`for_run`).

Importing this package loads neither Lightning nor the distillation module: :func:`for_run` imports
them when it has a teacher to train.
"""

from __future__ import annotations

from kdbench.teachers.registry import (
    META,
    WEIGHTS,
    dataset_identity,
    drift,
    entry_complete,
    entry_name,
    evaluate_on_test,
    freeze,
    get_or_train,
    import_published,
    key_fields,
    load_into,
    locate,
    oracle,
    read_meta,
    save_entry,
    teacher_key,
)
from kdbench.teachers.train import for_run

__all__ = ["META", "WEIGHTS", "dataset_identity", "drift", "entry_complete", "entry_name", "evaluate_on_test",
           "for_run", "freeze", "get_or_train", "import_published", "key_fields", "load_into", "locate", "oracle",
           "read_meta", "save_entry", "teacher_key"]
