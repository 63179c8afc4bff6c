"""Teachers: the registry (:mod:`~kdbench.teachers.registry`: keys, entries, safe loading, import,
drift), re-exported here, and training a missing one (:mod:`kdbench.teachers.train`: ``for_run``, which
the run imports from there).

Importing this package loads neither Lightning nor the distillation module, and nothing that trains.
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

__all__ = ["META", "WEIGHTS", "dataset_identity", "drift", "entry_complete", "entry_name", "evaluate_on_test",
           "freeze", "get_or_train", "import_published", "key_fields", "load_into", "locate", "oracle",
           "read_meta", "save_entry", "teacher_key"]
