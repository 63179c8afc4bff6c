"""The student's transfer set (dataset.transfer_subset, dataset.train_exclude_classes): the teacher keeps the
whole training split, the student sees the restricted one, validation and test are untouched."""

from __future__ import annotations

import pytest
import torch

from kdbench.data.transfer import transfer_set
from kdbench.errors import ConfigError
from tests.conftest import FAST


def _digits():
    from kdbench.data import load_dataset, split_train_val

    return split_train_val(load_dataset({"name": "digits", "train_subset": None, "test_subset": None}), 200, seed=0)


def test_transfer_set_balances_excludes_and_leaves_val_and_test():
    data = _digits()
    n = data.train_y.numel()
    assert transfer_set(data, {"transfer_subset": None, "train_exclude_classes": []}) is data
    sub = transfer_set(data, {"transfer_subset": 100, "train_exclude_classes": []})
    counts = torch.bincount(sub.train_y, minlength=10)
    assert sub.train_y.numel() == 100 and int(counts.max() - counts.min()) <= 1  # class-balanced
    # each kept row is a row of the full split (same image, same label)
    rows = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(data.train_x, data.train_y, strict=True)}
    assert all(rows[bytes(x.numpy().tobytes())] == int(y) for x, y in zip(sub.train_x, sub.train_y, strict=True))
    ex = transfer_set(data, {"transfer_subset": None, "train_exclude_classes": [3, 7]})
    assert not torch.isin(ex.train_y, torch.tensor([3, 7])).any()
    assert ex.train_y.numel() == n - int(torch.isin(data.train_y, torch.tensor([3, 7])).sum())
    both = transfer_set(data, {"transfer_subset": 80, "train_exclude_classes": [3]})
    c = torch.bincount(both.train_y, minlength=10)
    assert c[3] == 0 and both.train_y.numel() == 80 and int(c[c > 0].max() - c[c > 0].min()) <= 1
    for d in (sub, ex, both):  # val and test are the full splits, every class measured
        assert d.val_x is data.val_x and d.test_x is data.test_x and d.test_y is data.test_y
    assert both.info["transfer"] == {"n_train_full": n, "n_train": 80, "subset": 80, "excluded_classes": [3]}


@pytest.mark.parametrize(("cfg", "says"), [
    ({"train_exclude_classes": [10]}, "dataset.train_exclude_classes: class ids must be integers in [0, 10); got 10"),
    ({"train_exclude_classes": list(range(10))}, "excludes all 10 classes"),
    ({"transfer_subset": 10_000}, "dataset.transfer_subset: 10000 is more than the"),
])
def test_transfer_set_refusals(cfg, says):
    with pytest.raises(ConfigError) as e:
        transfer_set(_digits(), {"transfer_subset": None, "train_exclude_classes": [], **cfg})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_run_trains_the_student_on_the_transfer_set_and_the_teacher_on_everything(compose, teachers_dir):
    from kdbench.train import run

    base = (*FAST, f"paths.teachers_dir={teachers_dir}", "student.kwargs.hidden=[32]")
    full = run(compose(*base))
    rec = run(compose(*base, "dataset.transfer_subset=150", "dataset.train_exclude_classes=[3]"))
    assert rec["dataset_info"]["transfer"]["n_train"] == 150
    assert rec["dataset_info"]["transfer"]["excluded_classes"] == [3]
    assert rec["teacher"]["key"] == full["teacher"]["key"]  # the same teacher, trained on the whole split
    assert rec["run_id"] != full["run_id"]
    assert "transfer" not in full["dataset_info"]
    with pytest.raises(ConfigError, match="a captured store indexes whole"):
        run(compose(*base, "dataset.transfer_subset=150", "teacher_signal=captured",
                    "teacher_capture.path=nowhere"))
