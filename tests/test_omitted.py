"""Issue 29 part 2: per-class test accuracy (metrics.per_class_acc) and the omitted-class study (a class left out
of the transfer set, its bias raised by an amount chosen on validation)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdbench.metrics import ClassificationMetrics
from kdbench.studies import omitted
from tests.conftest import FAST


def test_per_class_accuracy_is_each_class_recall_and_nan_for_an_absent_class():
    logits = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 3.0]])
    y = torch.tensor([0, 1, 1, 2, 2])  # class 3 has no example
    m = ClassificationMetrics(4, per_class=True)
    m.update(logits[:2], y[:2])
    m.update(logits[2:], y[2:])
    out = m.compute()
    assert [out[f"acc_class_{c}"] for c in range(3)] == pytest.approx([1.0, 0.5, 0.5])
    assert math.isnan(out["acc_class_3"])  # never a 0 the class did not earn
    assert out["acc"] == pytest.approx(3 / 5)
    m.reset()
    m.update(logits[:1], y[:1])
    again = m.compute()
    assert again["acc_class_0"] == 1.0 and math.isnan(again["acc_class_1"])  # the counts were reset too


def test_metrics_without_per_class_have_no_class_keys():
    m = ClassificationMetrics(3)
    m.update(torch.eye(3), torch.arange(3))
    assert not [k for k in m.compute() if k.startswith("acc_class_")]


def test_choose_bias_is_the_middle_of_the_first_minimum_run_and_errors_match_a_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 5, generator=g)
    y = torch.randint(0, 5, (400,), generator=g)
    logits[y == 3, 3] -= 2.0  # a class the model under-predicts, as a student that never saw it
    b, err = omitted.choose_bias(logits, y, 3)
    by_loop = []
    for v in omitted.GRID:  # independent count
        z = logits.clone()
        z[:, 3] += v
        by_loop.append(sum(int(z[i].argmax()) != int(y[i]) for i in range(len(y))))
    low = min(by_loop)
    assert err == low == by_loop[omitted.GRID.index(b)]
    first = by_loop.index(low)
    run_end = first
    while run_end + 1 < len(by_loop) and by_loop[run_end + 1] == low:
        run_end += 1
    assert omitted.GRID.index(b) == (first + run_end) // 2
    assert b > 0 and low < by_loop[0]  # the correction helps the under-predicted class
    e, e3 = omitted.errors(logits, y, 3, 0.0)
    assert e == by_loop[0] and e3 == int(((logits.argmax(-1) != y) & (y == 3)).sum())


def test_omitted_class_runs_record_per_class_accuracy_and_the_study_tabulates_them(compose, teachers_dir, tmp_path,
                                                                                    capsys):
    """Real runs on digits without 3s (KD and scratch, one seed), their records' per-class accuracy against the
    overall accuracy they make up, then the study: errors equal the record's, the bias comes from validation."""
    from kdbench.train import run

    res = tmp_path / "results"
    base = (*FAST, f"paths.teachers_dir={teachers_dir}", "student.kwargs.hidden=[32]", "experiment_name=om",
            "dataset.train_exclude_classes=[3]", "metrics.per_class_acc=true")
    recs = [run(compose(*base, f"distill={d}", results=res)) for d in ("kd", "none")]
    from kdbench.runner import load_data

    test_y = load_data(recs[0]["config"]["dataset"]).test_y
    counts = torch.bincount(test_y, minlength=10)
    for rec in recs:
        t = rec["metrics"]["last"]["test"]
        per = [t[f"acc_class_{c}"] for c in range(10)]
        # the overall accuracy is the class-count-weighted mean of the per-class ones
        assert sum(float(n) * a for n, a in zip(counts, per)) / float(counts.sum()) == pytest.approx(t["acc"], abs=1e-5)
        assert rec["dataset_info"]["transfer"]["excluded_classes"] == [3]
    from kdbench import report

    summary, display = report.build_table(res / "runs", "om")  # a column per class, from the records
    assert [f"top-1 on class {c}, last (%)" for c in range(10)] == [h for h in display.table.columns if "on class" in h]
    kd_row = list(summary.table["variant"]).index("kd")
    assert summary.table["last_test_acc_class_3_mean"].iloc[kd_row] == pytest.approx(recs[0]["metrics"]["last"]["test"]
                                                                                      ["acc_class_3"])
    out = tmp_path / "o" / "omitted3.csv"
    assert omitted.main(["--experiment", "om", "--results", str(res), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(omitted.COLUMNS) and len(lines) == 3
    rows = [dict(zip(omitted.COLUMNS, ln.split(","), strict=True)) for ln in lines[1:]]
    assert [r["model"] for r in rows] == ["distilled", "scratch"]
    n3 = int(counts[3])
    for r, rec in zip(rows, recs, strict=True):
        t = rec["metrics"]["last"]["test"]
        assert abs(int(r["errors"]) - round((1 - t["acc"]) * len(test_y))) <= 1
        assert abs(int(r["errors_on_3"]) - round((1 - t["acc_class_3"]) * n3)) <= 1
        assert 0 <= float(r["bias"]) <= omitted.GRID[-1]
        assert int(r["errors_on_3_adjusted"]) <= n3
    assert "Hinton et al. 2015" in (out.with_suffix(".md")).read_text()
    # a checkpoint that is not the record's weights is refused, not tabulated
    ck = res / "checkpoints" / "om" / recs[1]["run_id"] / "last.ckpt"
    state = torch.load(ck, map_location="cpu", weights_only=True)
    state["state_dict"] = {k: torch.zeros_like(v) if k.startswith("student.") else v
                           for k, v in state["state_dict"].items()}
    torch.save(state, ck)
    assert omitted.main(["--experiment", "om", "--results", str(res), "--out", str(out)]) == 2
    assert "not the weights the record measured" in capsys.readouterr().err
    assert json.loads((res / "runs" / "om" / f"{recs[1]['run_id']}.json").read_text())["status"] == "complete"


def test_per_class_acc_is_refused_on_token_data(compose):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    with pytest.raises(ConfigError) as e:
        run(compose("dataset=markov", "dataset.n_train=40", "dataset.n_test=20", "dataset.val_size=10",
                    "student=lm_student", "distill=none", "metrics.per_class_acc=true", "trainer.max_epochs=1"))
    assert str(e.value).startswith("metrics.per_class_acc") and "\n" not in str(e.value)


def test_per_class_acc_true_is_its_own_run_id_and_false_keeps_the_old_ones(compose):
    from kdbench.config import resolve
    from kdbench.identity import run_id_of

    plain = run_id_of(resolve(compose()))
    assert run_id_of(resolve(compose("metrics.per_class_acc=false"))) == plain
    assert run_id_of(resolve(compose("metrics.per_class_acc=true"))) != plain


def test_a_transfer_set_of_two_classes_raises_every_omitted_class_by_one_bias(compose, teachers_dir, tmp_path):
    """The paper's 'only 7s and 8s': one b added to the eight omitted classes (= lowering 7 and 8); errors on the
    omitted classes equal the record's per-class accuracies weighted by their test counts."""
    from kdbench.runner import load_data
    from kdbench.train import run

    res = tmp_path / "results"
    rec = run(compose(*FAST, f"paths.teachers_dir={teachers_dir}", "student.kwargs.hidden=[32]",
                      "experiment_name=o78", "dataset.train_exclude_classes=[0,1,2,3,4,5,6,9]",
                      "metrics.per_class_acc=true", results=res))
    out = tmp_path / "o" / "only78.csv"
    assert omitted.main(["--experiment", "o78", "--results", str(res), "--only", "7,8", "--out", str(out)]) == 0
    header, row = out.read_text().splitlines()
    assert header == ",".join(omitted.COLUMNS_MANY)
    r = dict(zip(omitted.COLUMNS_MANY, row.split(","), strict=True))
    counts = torch.bincount(load_data(rec["config"]["dataset"]).test_y, minlength=10)
    t = rec["metrics"]["last"]["test"]
    want = sum((1 - t[f"acc_class_{c}"]) * int(counts[c]) for c in (0, 1, 2, 3, 4, 5, 6, 9))
    assert abs(int(r["errors_on_omitted"]) - want) <= 8
    assert "only 7s and 8s" in out.with_suffix(".md").read_text()
    assert omitted.main(["--experiment", "o78", "--results", str(res), "--only", "7,x"]) == 2
