"""`kdbench capture` and teacher_signal=captured: top-k teacher log-probs, no teacher in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

CNN = ["teacher=mnist_cnn", "teacher.kwargs.width=8", "teacher.recipe.epochs=1", "dataset.augment=jitter",
       "dataset.val_size=200", "trainer.max_epochs=2", "logger=none"]


@pytest.fixture
def store(tmp_path):
    from kdbench.capture import main

    res = tmp_path / "results"
    out = tmp_path / "cap"
    assert main(["--k", "10", "--tau", "4", "--out", str(out), "--jsonl", str(tmp_path / "cap.jsonl"),
                 *CNN, f"paths.results_dir={res}", f"paths.data_dir={tmp_path / 'data'}"]) == 0
    return out


def test_capture_store_and_jsonl_round_trip(store, tmp_path):
    from kdbench.capture import import_jsonl, read_header, read_split

    h = read_header(store)
    assert h["k"] == 10 and h["values"] == "log_probs" and h["capture_tau"] == 4.0
    assert h["views"] == {"train": 25, "val": 1, "test": 1} and h["family"] == "jitter"
    assert h["teacher"]["key"] and h["dataset"]["name"] == "digits"
    idx, logp = read_split(store, "train")
    assert idx.shape == (h["n"]["train"], 25, 10)
    assert np.allclose(np.exp(logp.numpy()).sum(-1), 1.0, atol=1e-5)  # k = C: the whole distribution
    assert (np.diff(logp.numpy(), axis=-1) <= 0).all()  # sorted from the largest
    lines = (tmp_path / "cap.jsonl").read_text().splitlines()
    assert "header" in json.loads(lines[0]) and len(lines) == 1 + h["n"]["train"] * 25 + h["n"]["val"] + h["n"]["test"]
    back = import_jsonl(tmp_path / "cap.jsonl", tmp_path / "back")
    i2, l2 = read_split(back, "train")
    assert (i2 == idx).all() and np.allclose(l2.numpy(), logp.numpy(), atol=1e-6)


def test_captured_run_needs_no_teacher_and_matches_online_at_k_equal_c(store, compose, monkeypatch):
    import kdbench.teachers as teachers
    from kdbench.train import run

    online = run(compose(*CNN, "distill.tau=4", "experiment_name=on"))

    def no_teacher(*a, **k):
        raise AssertionError("a captured run must not load a teacher")

    monkeypatch.setattr(teachers, "for_run", no_teacher)
    rec = run(compose(*CNN, "distill.tau=4", "teacher_signal=captured", f"teacher_capture.path={store}",
                      "experiment_name=cap"))
    assert rec["status"] == "complete" and rec["teacher_signal"] == "captured"
    assert rec["teacher"]["key"] == online["teacher"]["key"] and rec["teacher"]["capture"] == str(store)
    # k = C with renorm is the dense KD loss: the same training up to float rounding of the stored log-probs
    assert rec["history"][0]["train_loss"] == pytest.approx(online["history"][0]["train_loss"], rel=1e-4)
    assert abs(rec["metrics"]["last"]["test"]["acc"] - online["metrics"]["last"]["test"]["acc"]) < 0.02


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
