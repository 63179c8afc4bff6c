"""`kdbench capture` and teacher_signal=captured: top-k teacher log-probs, no teacher in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

CNN = ["teacher=mnist_cnn", "teacher.kwargs.width=8", "teacher.recipe.epochs=1", "dataset.augment=jitter",
       "dataset.val_size=200", "trainer.max_epochs=2", "logger=none"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, teachers_dir):
    """One capture (and its JSONL export, ``cap.jsonl`` beside it) for the module's tests, which only read it."""
    from kdbench.capture import main

    tmp = tmp_path_factory.mktemp("capture")
    out = tmp / "cap"
    assert main(["--k", "10", "--tau", "4", "--out", str(out), "--jsonl", str(tmp / "cap.jsonl"), *CNN,
                 f"paths.results_dir={tmp / 'results'}", f"paths.teachers_dir={teachers_dir}",
                 f"paths.data_dir={tmp / 'data'}"]) == 0
    return out


def test_capture_store_and_jsonl_round_trip(store, tmp_path):
    from kdbench.stores import import_jsonl, read_header, read_split

    h = read_header(store)
    assert h["k"] == 10 and h["values"] == "log_probs" and h["capture_tau"] == 4.0
    assert h["views"] == {"train": 25, "val": 1, "test": 1} and h["family"] == "jitter"
    assert h["teacher"]["key"] and h["dataset"]["name"] == "digits"
    idx, logp = read_split(store, "train")
    assert idx.shape == (h["n"]["train"], 25, 10)
    assert np.allclose(np.exp(logp.numpy()).sum(-1), 1.0, atol=1e-5)  # k = C: the whole distribution
    assert (np.diff(logp.numpy(), axis=-1) <= 0).all()  # sorted from the largest
    lines = (store.parent / "cap.jsonl").read_text().splitlines()
    assert "header" in json.loads(lines[0]) and len(lines) == 1 + h["n"]["train"] * 25 + h["n"]["val"] + h["n"]["test"]
    back = import_jsonl(store.parent / "cap.jsonl", tmp_path / "back")
    i2, l2 = read_split(back, "train")
    assert (i2 == idx).all() and np.allclose(l2.numpy(), logp.numpy(), atol=1e-6)


def test_captured_run_needs_no_teacher_and_matches_online_at_k_equal_c(store, compose, monkeypatch, teachers_dir):
    import kdbench.teachers.train as teacher_training
    from kdbench.train import run

    online = run(compose(*CNN, "distill.tau=4", "experiment_name=on", f"paths.teachers_dir={teachers_dir}"))

    def no_teacher(*a, **k):
        raise AssertionError("a captured run must not load a teacher")

    monkeypatch.setattr(teacher_training, "for_run", no_teacher)
    rec = run(compose(*CNN, "distill.tau=4", "teacher_signal=captured", f"teacher_capture.path={store}",
                      "experiment_name=cap"))
    assert rec["status"] == "complete" and rec["teacher_signal"] == "captured"
    assert rec["teacher"]["key"] == online["teacher"]["key"] and rec["teacher"]["capture"] == str(store)
    # k = C with renorm is the dense KD loss: the same training up to float rounding of the stored log-probs
    assert rec["history"][0]["train_loss"] == pytest.approx(online["history"][0]["train_loss"], rel=1e-4)
    assert abs(rec["metrics"]["last"]["test"]["acc"] - online["metrics"]["last"]["test"]["acc"]) < 0.02
    # fidelity from the stored top-1 class: agreement measured, the KL (needs the whole teacher) not claimed
    assert abs(rec["metrics"]["last"]["test"]["agreement"] - online["metrics"]["last"]["test"]["agreement"]) < 0.02
    assert "kl_teacher" not in rec["metrics"]["last"]["test"] and "kl_teacher" in online["metrics"]["last"]["test"]


def test_agreement_with_a_top_k_teacher_is_agreement_with_its_argmax():
    import torch

    from kdbench.metrics import ClassificationMetrics
    from kdbench.signals import TopK

    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(300, 7, generator=g), torch.randn(300, 7, generator=g), torch.randint(0, 7, (300,), generator=g)
    dense, sparse = ClassificationMetrics(7, with_teacher=True), ClassificationMetrics(7, with_teacher=True)
    dense.update(s, y, t)
    top = t.log_softmax(-1).topk(2, dim=-1)
    sparse.update(s, y, TopK(top.indices, top.values, 1.0))
    d, sp = dense.compute(), sparse.compute()
    assert sp["agreement"] == d["agreement"] == pytest.approx(float((s.argmax(-1) == t.argmax(-1)).float().mean()))
    assert 0.05 < d["agreement"] < 0.5 and "kl_teacher" not in sp and sp["acc"] == d["acc"]


@pytest.mark.parametrize("override, key, fragment", [
    ("teacher_capture.k=3", "teacher_capture.k", "holds top-10"),
    ("dataset.val_size=100", "teacher_capture.path", "other data"),
    ("dataset.augment=crop_flip", "teacher_capture.path", "162 views"),
])
def test_a_capture_that_does_not_match_the_run_is_refused_before_any_work(store, compose, tmp_path, override,
                                                                           key, fragment):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    results = tmp_path / "r2"
    with pytest.raises(ConfigError) as e:
        run(compose(*CNN, "teacher_signal=captured", f"teacher_capture.path={store}", override, results=results))
    assert e.value.key == key and fragment in str(e.value)
    assert not (results / "runs").exists() and not (results / "teachers").exists()


def test_capture_into_a_folder_that_holds_it_keeps_it_and_refuses_to_overwrite_another(store, tmp_path, capsys,
                                                                                      teachers_dir):
    from kdbench.capture import main

    args = [*CNN, f"paths.results_dir={tmp_path / 'results'}", f"paths.teachers_dir={teachers_dir}",
            f"paths.data_dir={tmp_path / 'data'}"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.iterdir()}
    assert main(["--k", "10", "--tau", "4", "--out", str(store), *args]) == 0
    out = capsys.readouterr().out
    assert "already holds this capture" in out and "written" not in out  # kept, and it says only that
    assert main(["--k", "3", "--tau", "4", "--out", str(store), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err and "k 10 (asked 3)" in err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.iterdir()} == before


def _row(field, value):
    """Edit the first example row of a JSONL capture: set ``field``'s first entry to ``value``."""
    def edit(lines):
        o = json.loads(lines[1])
        o[field][0] = value
        return [lines[0], json.dumps(o), *lines[2:]]

    return edit


@pytest.mark.parametrize("edit, fragment", [
    (lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]], "truncated"),
    (lambda lines: [*lines[:2], lines[2].replace('"indices": [', '"indices": [3, ', 1), *lines[3:]], "header says k=10"),
    (_row("indices", 10), "class ids must be integers in [0, 10)"),
    (_row("indices", -1), "class ids must be integers in [0, 10)"),
    (_row("log_probs", float("nan")), "finite and <= 0"),
    (_row("log_probs", 0.5), "finite and <= 0"),
])
def test_bad_jsonl_captures_are_refused_with_one_line_and_nothing_written(store, tmp_path, edit, fragment):
    from kdbench.errors import ConfigError
    from kdbench.stores import import_jsonl

    lines = (store.parent / "cap.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(ConfigError) as e:
        import_jsonl(bad, tmp_path / "imported")
    assert fragment in str(e.value) and "\n" not in str(e.value) and str(bad) in str(e.value)
    assert not (tmp_path / "imported").exists()


def test_a_captured_run_without_a_validation_split_validates_on_the_test_capture(compose, tmp_path, teachers_dir):
    """val_size 0 (as for CIFAR): the validation loop runs on the test set and reads the test capture."""
    from kdbench.capture import main
    from kdbench.stores import read_split
    from kdbench.train import run

    args = [a for a in CNN if not a.startswith("dataset.val_size")] + ["dataset.val_size=0", "trainer.max_epochs=1"]
    out = tmp_path / "cap0"
    assert main(["--k", "3", "--out", str(out), *args, f"paths.results_dir={tmp_path / 'results'}",
                 f"paths.teachers_dir={teachers_dir}", f"paths.data_dir={tmp_path / 'data'}"]) == 0
    rec = run(compose(*args, "teacher_signal=captured", f"teacher_capture.path={out}"))
    assert rec["status"] == "complete"
    idx, _ = read_split(out, "test")
    assert idx.shape[0] == rec["dataset_info"]["sizes"]["test"]
    assert 0 <= rec["history"][-1]["val_agreement"] <= 1


def test_a_store_replaced_at_the_same_path_is_not_the_recorded_runs(store, compose, tmp_path, capsys):
    """The record names the store it read (k, capture tau, checksums); a complete run is skipped only while
    that store is still the one at its path, else refused in one line (the record stays as it is)."""
    import shutil

    from kdbench.errors import ConfigError
    from kdbench.stores import read_header, store_identity
    from kdbench.train import run

    mine = tmp_path / "cap"
    shutil.copytree(store, mine)
    args = (*CNN, "trainer.max_epochs=1", "distill.tau=4", "teacher_signal=captured", f"teacher_capture.path={mine}")
    rec = run(compose(*args))
    assert rec["teacher"]["store"] == store_identity(read_header(store)) and rec["teacher"]["store"]["k"] == 10
    assert run(compose(*args))["run_id"] == rec["run_id"]  # unchanged store: skipped as complete
    assert "already complete" in capsys.readouterr().out
    h = json.loads((mine / "header.json").read_text())
    (mine / "header.json").write_text(json.dumps({**h, "capture_tau": 2.0}))  # another capture, same path
    with pytest.raises(ConfigError) as e:
        run(compose(*args))
    assert e.value.key == "teacher_capture.path" and f"is not the store run {rec['run_id']} was trained on" in str(e.value)
    assert json.loads(open(rec["record_path"]).read())["status"] == "complete"  # nothing overwritten
