"""The token study's 'teacher kept' table (kdbench/studies/tokens.py), from run records."""

from __future__ import annotations

import pandas as pd
import pytest

from kdbench.records import write_record
from kdbench.studies import tokens


def _rec(rid, variant, seed, nll, signal="online", k=None, mode=None, kl="forward"):
    distill = {"variant": variant, "kl": kl, **({"topk_mode": mode} if mode else {})}
    return {"run_id": rid, "experiment": "tok", "variant": variant, "seed": seed, "status": "complete",
            "config": {"teacher_signal": "none" if variant == "scratch" else signal, "distill": distill,
                       "teacher_capture": {"k": k}},
            "metrics": {"last": {"test": {"nll": nll, "ppl": 2.718 ** nll, "ece": 0.01, "kl_to_true": nll - 0.9}}},
            "teacher": None if variant == "scratch" else {"test": {"nll": 1.0, "kl_to_true": 0.1}},
            "dataset_info": {"entropy_rate_nats": 0.9}}


def test_teacher_kept_is_measured_against_the_one_scratch_group_and_the_teachers_nll(tmp_path):
    runs = tmp_path / "results" / "runs" / "tok"
    for s, (a, b, c, d) in enumerate([(2.0, 1.5, 1.2, 3.0), (2.2, 1.5, 1.2, 3.0)]):
        write_record(runs / f"sc{s}.json", _rec(f"sc{s}", "scratch", s, a))
        write_record(runs / f"on{s}.json", _rec(f"on{s}", "kd", s, b))
        write_record(runs / f"k8{s}.json", _rec(f"k8{s}", "kd", s, c, "captured", 8, "tail"))
        write_record(runs / f"r1{s}.json", _rec(f"r1{s}", "reverse_kl", s, d, "captured", 1, "renorm", "reverse"))
    assert tokens.main(["--experiment", "tok", "--results", str(tmp_path / "results")]) == 0
    kept = pd.read_csv(tmp_path / "results" / "tok" / "kept.csv").set_index("arm")
    scratch = 2.1  # mean of the two scratch seeds; the teacher's NLL is 1.0
    assert kept.loc["scratch (labels only)", "teacher_kept_nll"] == pytest.approx(0.0)
    assert kept.loc["forward KL, online teacher", "teacher_kept_nll"] == pytest.approx((scratch - 1.5) / 1.1 * 100)
    assert kept.loc["forward KL, captured top-8, tail", "teacher_kept_nll"] == pytest.approx((scratch - 1.2) / 1.1 * 100)
    assert kept.loc["reverse KL, captured top-1, renorm", "teacher_kept_nll"] < 0  # worse than scratch
    assert kept.loc["forward KL, online teacher", "n"] == 2
    md = (tmp_path / "results" / "tok" / "kept.md").read_text()
    assert "KL(true ‖ T) 0.1000" in md and "entropy rate" in md


def test_two_temperatures_are_two_arms_never_averaged(tmp_path):
    """hf_corpus ran the same arms at tau = 2 and tau = 1: one row each, labelled with tau (one tau: no label)."""
    runs = tmp_path / "results" / "runs" / "tok"
    for s in range(2):
        write_record(runs / f"sc{s}.json", _rec(f"sc{s}", "scratch", s, 2.0))
        for tau, nll in ((2.0, 1.8), (1.0, 1.4)):
            r = _rec(f"on{tau:g}{s}", "kd", s, nll)
            r["config"]["distill"]["tau"] = tau
            write_record(runs / f"on{tau:g}{s}.json", r)
    assert tokens.main(["--experiment", "tok", "--results", str(tmp_path / "results")]) == 0
    kept = pd.read_csv(tmp_path / "results" / "tok" / "kept.csv").set_index("arm")
    assert kept.loc["forward KL, online teacher, τ = 2", "nll"] == pytest.approx(1.8)
    assert kept.loc["forward KL, online teacher, τ = 1", "nll"] == pytest.approx(1.4)
    assert list(kept["n"]) == [2, 2, 2]
