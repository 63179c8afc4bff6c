"""Tests for kdbench.report: numbers recomputed with ``statistics``, formulas on hand values, files written."""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdbench import report
from kdbench.records import write_record

EXP = "ablation"
TEACHER_ACC = 0.98
#: variant -> last test accuracy of seeds 0, 1, 2 (means: scratch 0.90, kd 0.95, no_tau2 0.93)
ACC = {"scratch": [0.89, 0.90, 0.91], "kd": [0.94, 0.95, 0.965], "no_tau2": [0.925, 0.93, 0.935]}
#: variant -> ECE of seeds 0, 1, 2: no_tau2 is the best calibrated
ECE = {"scratch": [0.040, 0.050, 0.045], "kd": [0.030, 0.020, 0.025], "no_tau2": [0.010, 0.015, 0.012]}


def metrics_of(variant: str, seed: int) -> dict:
    """Known per-run values; every metric differs between runs so the stds are non-trivial."""
    acc, ece = ACC[variant][seed % 3], ECE[variant][seed % 3]
    test = {"acc": acc, "ece": ece, "mce": 2 * ece, "nll": 1.0 - acc + 0.01 * seed, "brier": (1.0 - acc) / 2 + 0.001 * seed}
    if variant != "scratch":
        test |= {"agreement": acc + 0.01, "kl_teacher": 0.1 * (1.0 - acc) + 0.002 * seed}
    best = dict(test, acc=acc + 0.003 * (seed + 1), ece=ece + 0.001)
    return {"last": {"epoch": 2, "val": {"acc": acc}, "test": test},
            "best": {"epoch": 1, "val": {"acc": acc + 0.01}, "test": best}}


def reliability(acc: float, seed: int) -> dict:
    edges = [i / 15 for i in range(16)]
    count = [0.0] * 15
    conf = [0.0] * 15
    accs = [0.0] * 15
    for b, n in ((12, 10.0 + seed), (14, 90.0)):
        count[b] = n
        conf[b] = (edges[b] + edges[b + 1]) / 2
        accs[b] = min(1.0, acc + 0.01 * (b - 13))
    return {"edges": edges, "confidence": conf, "accuracy": accs, "count": count}


def record(variant: str, seed: int, *, exp: str = EXP, alpha: float = 0.5, tau: float = 4.0,
           status: str = "complete", error: str | None = None) -> dict:
    enabled = variant != "scratch"
    m = metrics_of(variant, seed)
    acc = m["last"]["test"]["acc"]
    return {
        "run_id": f"{exp}-{variant}-a{alpha}-t{tau}-s{seed}-{status}", "experiment": exp, "variant": variant,
        "seed": seed, "status": status, "error": error, "config": {}, "overrides": [], "dataset": "digits",
        "teacher_arch": "mlp" if enabled else None, "student_arch": "mlp_tiny",
        "distill": {"variant": variant, "enabled": enabled, "alpha": alpha if enabled else 1.0, "tau": tau,
                    "kl": "forward", "tau_squared": variant != "no_tau2"},
        "metrics": m,
        "teacher": {"key": "t1", "arch": "mlp", "test": {"acc": TEACHER_ACC, "ece": 0.02}} if enabled else None,
        "history": [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_acc": acc - 0.05 * (2 - e), "val_ece": 0.05,
                     "val_nll": 0.3, "lr": 0.1} for e in range(3)],
        "reliability": {"last": reliability(acc, seed), "best": reliability(acc, seed)},
    }


@pytest.fixture
def results(tmp_path) -> Path:
    """<tmp>/results/runs/ablation: scratch, kd, no_tau2 x 3 seeds, plus one failed kd run (with bogus metrics)."""
    res = tmp_path / "results"
    runs = res / "runs" / EXP
    for v in ACC:
        for s in range(3):
            write_record(runs / f"{v}-{s}.json", record(v, s))
    bad = record("kd", 7, status="failed", error="RuntimeError: CUDA out of memory\n  File 'x.py', line 3")
    bad["metrics"]["last"]["test"]["acc"] = 0.10  # must not enter the means
    write_record(runs / "kd-7.json", bad)
    return res


def table(results: Path):
    return report.build_table(results / "runs", EXP)


def row(summary, **sel) -> dict:
    """The one row of a summary (a :class:`report.Summary` or its table) matching ``sel``."""
    m = getattr(summary, "table", summary)
    for k, v in sel.items():
        m = m[m[k] == v]
    assert len(m) == 1, sel
    return m.iloc[0].to_dict()


# --------------------------------------------------------------------------------------------


def test_summary_equals_statistics_of_the_records(results):
    summary, display = table(results)
    assert list(summary.table["variant"]) == ["scratch", "kd", "no_tau2"]
    for v in ACC:
        r = row(summary, variant=v)
        assert r["n"] == 3
        assert r["n_failed"] == (1 if v == "kd" else 0)
        for name, key, which in (("last_test_acc", "acc", "last"), ("best_test_acc", "acc", "best"),
                                 ("last_test_ece", "ece", "last"), ("last_test_nll", "nll", "last"),
                                 ("last_test_brier", "brier", "last")):
            vals = [metrics_of(v, s)[which]["test"][key] for s in range(3)]
            assert r[f"{name}_mean"] == pytest.approx(statistics.mean(vals), abs=1e-12)
            assert r[f"{name}_std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
    assert math.isnan(row(summary, variant="scratch")["last_test_agreement_mean"])
    kd_agree = [metrics_of("kd", s)["last"]["test"]["agreement"] for s in range(3)]
    assert row(summary, variant="kd")["last_test_agreement_mean"] == pytest.approx(statistics.mean(kd_agree))

    # the display cell is the same numbers, in %, 2 decimals
    d = display.table.set_index("variant")
    m, s = statistics.mean(ACC["kd"]) * 100, statistics.stdev(ACC["kd"]) * 100
    assert d.loc["kd", "top-1 last (%)"] == f"{m:.2f} ± {s:.2f}"
    e = ECE["no_tau2"]
    assert d.loc["no_tau2", "ECE last"] == f"{statistics.mean(e):.4f} ± {statistics.stdev(e):.4f}"
    assert d.loc["kd", "n"] == "3" and d.loc["kd", "failed"] == "1" and d.loc["scratch", "failed"] == "0"
    assert "top-1 best-epoch (%)" in display.table.columns


def test_single_seed_has_no_spread_and_no_interval(tmp_path):
    """One seed: the spread is "n/a" (not "± 0.00") and the deltas come without an interval."""
    write_record(tmp_path / "runs" / "one" / "a.json", record("kd", 0, exp="one"))
    summary, display = report.build_table(tmp_path / "runs", "one")
    assert summary.table.loc[0, "n"] == 1 and math.isnan(summary.table.loc[0, "last_test_acc_std"])
    assert display.table.loc[0, "top-1 last (%)"] == f"{ACC['kd'][0] * 100:.2f} ± n/a"
    assert display.table.loc[0, "ECE last"] == f"{ECE['kd'][0]:.4f} ± n/a"

    # two variants of one seed each: the same seed pairs, but one difference has no spread
    runs = tmp_path / "runs" / "one2"
    for v in ("scratch", "kd", "no_tau2"):
        write_record(runs / f"{v}.json", record(v, 0, exp="one2"))
    out = report.make_report(tmp_path / "runs", "one2", out_dir=tmp_path / "o")
    summary, d = out["summary"], out["display"].table.set_index("variant")
    r = row(summary, variant="no_tau2")
    assert r["delta_vs_kd"] == pytest.approx((ACC["no_tau2"][0] - ACC["kd"][0]) * 100)
    assert math.isnan(r["delta_vs_kd_lo"]) and math.isnan(r["delta_vs_kd_hi"]) and r["delta_vs_kd_paired"]
    assert d.loc["no_tau2", "Δ vs KD (pp)"] == f"{(ACC['no_tau2'][0] - ACC['kd'][0]) * 100:+.2f} [n/a]"
    assert d.loc["kd", "Δ vs scratch (pp)"] == f"{(ACC['kd'][0] - ACC['scratch'][0]) * 100:+.2f} [n/a]"
    assert d.loc["kd", "Δ vs KD (pp)"] == "+0.00"  # the reference itself
    assert "± 0.00" not in out["markdown"] and "n/a: one seed" in out["markdown"]
    # no interval, so nothing can be shown to be best
    _, rows = _tex_rows(out["tables"]["tex"].read_text())
    assert not any("\\textbf" in c for r in rows for c in r)


def test_deltas_and_teacher_quality_kept(results):
    summary, display = table(results)
    kd, sc, nt = (statistics.mean(ACC[v]) for v in ("kd", "scratch", "no_tau2"))
    r = row(summary, variant="no_tau2")
    assert r["delta_vs_kd"] == pytest.approx((nt - kd) * 100)
    assert r["delta_vs_scratch"] == pytest.approx((nt - sc) * 100)
    assert r["teacher_kept"] == pytest.approx((nt - sc) / (TEACHER_ACC - sc) * 100)
    assert row(summary, variant="kd")["delta_vs_kd"] == pytest.approx(0.0)
    assert row(summary, variant="scratch")["teacher_kept"] == pytest.approx(0.0)
    assert summary.teacher_acc == pytest.approx(TEACHER_ACC)

    # hand-computed: scratch 90, kd 95, teacher 98 -> kd keeps 5/8 = 62.5 % of the teacher's lead
    hand_df = pd.DataFrame({"variant": ["scratch", "kd", "x"], "n": [3, 3, 3],
                            "last_test_acc_mean": [0.90, 0.95, 0.93], "teacher_test_acc_mean": [math.nan, 0.98, 0.98]})
    hand = report.Summary(hand_df, group_cols=["variant"])
    out = report.add_deltas(hand).table
    assert list(out["teacher_kept"]) == pytest.approx([0.0, 62.5, 37.5])
    assert list(out["delta_vs_kd"]) == pytest.approx([-5.0, 0.0, -2.0])
    assert list(out["delta_vs_scratch"]) == pytest.approx([0.0, 5.0, 3.0])
    # the seed's question in NLL: scratch 0.40, kd 0.30, teacher 0.20 -> kd keeps 50 % of the NLL gap
    hand_nll = report.Summary(hand_df.assign(last_test_nll_mean=[0.40, 0.30, 0.35],
                                             teacher_test_nll_mean=[math.nan, 0.20, 0.20]), group_cols=["variant"])
    assert list(report.add_deltas(hand_nll).table["teacher_kept_nll"]) == pytest.approx([0.0, 50.0, 25.0])
    # an explicit teacher accuracy, given in % (published numbers) or as a fraction
    assert report.add_deltas(hand, teacher_acc=100.0).table["teacher_kept"][1] == pytest.approx(50.0)
    assert report.add_deltas(hand, teacher_acc=1.0).table["teacher_kept"][1] == pytest.approx(50.0)
    # no baseline group -> NaN, not a wrong number
    assert report.add_deltas(hand, baseline="nope").table["delta_vs_kd"].isna().all()

    # a hand-made summary has no per-seed values: deltas without an interval (the reference row
    # differs from itself by exactly 0)
    assert list(out["delta_vs_kd_paired"]) == [False, True, False]
    assert out["delta_vs_kd_lo"][[0, 2]].isna().all() and out["delta_vs_kd_hi"][[0, 2]].isna().all()
    assert out["delta_vs_kd_lo"][1] == out["delta_vs_kd_hi"][1] == 0.0

    d = display.table.set_index("variant")
    lo, hi = r["delta_vs_kd_lo"], r["delta_vs_kd_hi"]
    assert d.loc["no_tau2", "Δ vs KD (pp)"] == f"{(nt - kd) * 100:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    assert d.loc["kd", "Δ vs KD (pp)"] == "+0.00" and d.loc["scratch", "Δ vs scratch (pp)"] == "+0.00"
    assert d.loc["kd", "teacher kept (%)"] == f"{(kd - sc) / (TEACHER_ACC - sc) * 100:.1f}"


def _tex_rows(tex: str) -> tuple[list[str], list[list[str]]]:
    lines = tex.splitlines()
    top, mid, bot = lines.index("\\toprule"), lines.index("\\midrule"), lines.index("\\bottomrule")
    def cells(s):
        return [c.strip() for c in s.rstrip("\\ ").split(" & ")]
    return cells(lines[top + 1]), [cells(s) for s in lines[mid + 1:bot]]


def test_tables_written_with_protocol_bold_best_and_csv_round_trip(results, tmp_path):
    summary, display = table(results)
    paths = report.write_tables(display, tmp_path / "out", "ablation: digits")
    assert {p.name for p in paths.values()} == {"table.md", "table.tex", "table_paper.tex", "table.csv"}

    md = paths["md"].read_text()
    assert report.PROTOCOL_NOTE in md
    assert "top-1 last (%)" in md and "top-1 best-epoch (%)" in md
    m, s = statistics.mean(ACC["kd"]) * 100, statistics.stdev(ACC["kd"]) * 100
    assert f"{m:.2f} ± {s:.2f}" in md

    tex = paths["tex"].read_text()
    assert "\\toprule" in tex and "\\caption{" in tex and "CRD protocol" in tex
    header, rows = _tex_rows(tex)
    by_variant = {r[0].replace("\\_", "_"): r for r in rows}
    acc_j = header.index("top-1 last (\\%)")
    ece_j = header.index("ECE last")
    kl_j = header.index("KL(T$\\|$S) last")
    # max accuracy, and its paired intervals against scratch and no_tau2 exclude 0: earned
    assert by_variant["kd"][acc_j] == f"\\textbf{{{m:.2f} $\\pm$ {s:.2f}}}"
    assert sum(r[acc_j].startswith("\\textbf") for r in rows) == 1
    # no_tau2 has the lowest mean ECE, but its interval against kd contains 0: nothing bold
    e_nt, e_kd = ECE["no_tau2"], ECE["kd"]
    assert statistics.mean(e_nt) == min(statistics.mean(e) for e in ECE.values())
    diffs = [a - b for a, b in zip(e_nt, e_kd)]
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert statistics.mean(diffs) - half < 0 < statistics.mean(diffs) + half
    assert not any(r[ece_j].startswith("\\textbf") for r in rows)
    assert by_variant["kd"][kl_j].startswith("\\textbf{")  # min KL among the distilled students, earned
    assert by_variant["scratch"][kl_j] == "--"  # no teacher: no KL, never bold
    assert report.BOLD_RULE in tex.replace("\\%", "%")

    back = report.read_summary_csv(paths["csv"])
    # every column but those no run filled (the records hold no KL to a true law): those are not written
    written = [c for c in summary.table.columns if not summary.table[c].isna().all()]
    assert list(back.columns) == written and "teacher_test_kl_to_true_mean" not in written
    assert len(back) == len(summary.table) == 3
    pd.testing.assert_frame_equal(back, summary.table[written], check_dtype=False, check_exact=True)


def test_failed_runs_listed_and_excluded(results, tmp_path):
    summary, display = table(results)
    assert row(summary, variant="kd")["last_test_acc_mean"] == pytest.approx(statistics.mean(ACC["kd"]))
    md = report.write_tables(display, tmp_path / "o", "cap")["md"].read_text()
    section = md.split("## Failed runs", 1)[1]
    assert "ablation-kd-a0.5-t4.0-s7-failed" in section
    assert "RuntimeError: CUDA out of memory" in section and "line 3" not in section
    assert "| failed" in md  # the count column


def test_make_report_writes_plots_without_tau_curve(results):
    out = report.make_report(results / "runs", EXP)
    assert out["out_dir"] == results / EXP
    assert set(out["plots"]) == {"reliability", "learning_curves", "seed_bars", "acc_vs_ece"}  # tau fixed: no tau curve
    assert not (results / EXP / "tau_curves.png").exists()
    for p in out["plots"].values():
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (results / EXP / "table.md").read_text() == out["markdown"]


def test_pooled_reliability_and_ece():
    recs = [record("kd", s) for s in range(3)]
    p = report.pool_reliability(r["reliability"]["last"] for r in recs)
    bins = [r["reliability"]["last"] for r in recs]
    n12 = sum(b["count"][12] for b in bins)
    assert p["count"][12] == n12 == 33.0
    assert p["accuracy"][12] == pytest.approx(sum(b["count"][12] * b["accuracy"][12] for b in bins) / n12)
    total = sum(p["count"])
    ece = sum(c * abs(a - f) for c, a, f in zip(p["count"], p["accuracy"], p["confidence"])) / total
    assert p["ece"] == pytest.approx(ece)


def test_grid_experiment_groups_by_alpha_tau_and_plots_tau_curves(tmp_path):
    runs = tmp_path / "results" / "runs" / "grid"
    for a in (0.1, 0.9):
        for t in (1.0, 4.0, 8.0):
            for s in range(2):
                write_record(runs / f"a{a}-t{t}-s{s}.json", record("kd", s, exp="grid", alpha=a, tau=t))
    out = report.make_report(tmp_path / "results" / "runs", "grid")
    summary = out["summary"].table
    assert list(summary.columns[:3]) == ["variant", "distill_alpha", "distill_tau"]
    assert len(summary) == 6 and set(summary["n"]) == {2}
    assert list(out["display"].table.columns[:3]) == ["variant", "α", "τ"]
    assert "tau_curves" in out["plots"] and out["plots"]["tau_curves"].stat().st_size > 5000
    assert report.plot_tau_curves([record("kd", s) for s in range(2)], tmp_path / "x.png") is None


def test_main_missing_experiment_exits_2_and_writes_nothing(results, capsys):
    before = sorted(p for p in results.parent.rglob("*"))
    rc = report.main(["--experiment", "nope", "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err == f"kdbench-report: error: no run records for experiment 'nope' under {results / 'runs'} (found: {EXP})"
    assert sorted(p for p in results.parent.rglob("*")) == before

    rc = report.main(["--experiment", "nope", "--results", str(results.parent / "missing")])
    assert rc == 2 and "(found: none)" in capsys.readouterr().err
    assert not (results.parent / "missing").exists()


def test_main_writes_tables_and_prints_the_compact_table(results, capsys):
    assert report.main(["--experiment", EXP, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    # the compact table (issue 24.7), not the markdown: teacher first, one line per group, then the paths
    assert "top-1 last (%)" in out and "## Failed runs" not in out and "|" not in out
    assert [ln.split()[0] for ln in out.splitlines() if ln.split()[:1] in (["teacher"], *([v] for v in ACC))] == \
        ["teacher", "scratch", "kd", "no_tau2"]
    assert "1 run did not complete" in out
    assert f"full table: {results / EXP / 'table.md'}" in out and f"page:       {results / EXP / 'index.html'}" in out
    assert (results / EXP / "table.tex").exists() and (results / EXP / "reliability.png").exists()
    assert report.main(["-e", EXP, "--records", str(results / "runs"), "--out", str(results / "o"),
                        "--no-print"]) == 0
    assert capsys.readouterr().out == "" and (results / "o" / "table.csv").exists()


def test_from_wandb_offline_is_a_clear_error(results, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = report.main(["--experiment", EXP, "--from-wandb", "me/kdbench", "--out", str(results / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("kdbench-report: error: ") and "WANDB_MODE=online" in err
    assert not (results / "w").exists()


def test_wandb_logging_uses_report_job_and_finishes(results, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    seen = {}
    real_init = wandb.init

    def spy(**kw):
        run = real_init(**kw)
        seen.update(kw)
        finish = run.finish

        def finished(*a, **k):
            seen["finished"] = seen.get("finished", 0) + 1
            return finish(*a, **k)

        run.finish = finished
        return run

    monkeypatch.setattr(wandb, "init", spy)
    out = report.make_report(results / "runs", EXP, out_dir=results / "wb", wandb_log=True)
    assert seen["job_type"] == "report" and seen["group"] == EXP and seen["mode"] == "disabled"
    assert seen["finished"] == 1  # the report's W&B run was closed, once
    assert (results / "wb" / "table.md").exists() and set(out["plots"]) == {"reliability", "learning_curves", "seed_bars", "acc_vs_ece"}


def test_only_failed_runs_still_make_a_table(tmp_path):
    runs = tmp_path / "runs" / "bad"
    for s in range(2):
        write_record(runs / f"{s}.json", record("kd", s, exp="bad", status="diverged", error="loss is NaN"))
    out = report.make_report(tmp_path / "runs", "bad", out_dir=tmp_path / "o")
    assert out["summary"].table.loc[0, "n"] == 0 and out["summary"].table.loc[0, "n_failed"] == 2
    assert out["display"].table.loc[0, "top-1 last (%)"] == "—" and out["plots"] == {}
    assert "loss is NaN" in out["markdown"]


def test_runs_that_differ_in_config_are_never_averaged_together(tmp_path):
    """A sweep over student widths inside one experiment: one row per (variant, width), and each
    width's KD row is compared with the scratch row of the same width."""
    runs = tmp_path / "results" / "runs" / "widths"
    accs = {("kd", 16): [0.90, 0.91, 0.92], ("scratch", 16): [0.85, 0.86, 0.87],
            ("kd", 64): [0.96, 0.97, 0.95], ("scratch", 64): [0.94, 0.93, 0.95]}
    for (variant, width), vals in accs.items():
        for seed, acc in enumerate(vals):
            rec = record(variant, seed, exp="widths")
            rec["run_id"] = f"{variant}-w{width}-s{seed}"
            # teacher.seed follows the seed (seed-derived, not a column); the width is the swept key
            rec["config"] = {"seed": seed, "teacher": {"seed": seed, "arch": "mlp"},
                             "student": {"arch": "mlp", "kwargs": {"hidden": [width]}},
                             "paths": {"results_dir": f"/somewhere/{seed}"}}
            rec["metrics"]["last"]["test"]["acc"] = acc
            write_record(runs / f"{rec['run_id']}.json", rec)
    summary, display = report.build_table(tmp_path / "results" / "runs", "widths")
    assert list(summary.group_cols) == ["variant", "student.kwargs.hidden"]
    assert "student.kwargs.hidden" in display.table.columns and "teacher.seed" not in summary.table.columns
    rows = {(r["variant"], r["student.kwargs.hidden"]): r for r in summary.table.to_dict("records")}
    assert sorted(rows) == [("kd", "[16]"), ("kd", "[64]"), ("scratch", "[16]"), ("scratch", "[64]")]
    for (variant, width), vals in accs.items():
        row = rows[(variant, f"[{width}]")]
        assert row["n"] == 3
        assert row["last_test_acc_mean"] == pytest.approx(statistics.mean(vals), abs=1e-12)
        assert row["last_test_acc_std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
    for width in (16, 64):
        kd, sc = statistics.mean(accs[("kd", width)]), statistics.mean(accs[("scratch", width)])
        row = rows[("kd", f"[{width}]")]
        assert row["delta_vs_scratch"] == pytest.approx((kd - sc) * 100, abs=1e-9)
        assert row["teacher_kept"] == pytest.approx((kd - sc) / (TEACHER_ACC - sc) * 100, abs=1e-9)
    # a table-wide scratch baseline is undefined when each width has its own; the one teacher is shared
    assert math.isnan(summary.scratch_acc) and summary.teacher_acc == TEACHER_ACC
    out = report.make_report(tmp_path / "results" / "runs", "widths")
    assert "student.kwargs.hidden" in out["markdown"] and (out["out_dir"] / "reliability.png").exists()


# --------------------------------------------------------------------------------------------
# Honest comparisons: 95 % intervals of the deltas over seeds, bold only when earned
# --------------------------------------------------------------------------------------------


def _acc_runs(root: Path, exp: str, accs: dict[str, dict[int, float]]) -> Path:
    """Records of ``exp`` under ``root/runs`` with the given top-1 last per variant and seed."""
    for variant, by_seed in accs.items():
        for seed, acc in by_seed.items():
            rec = record(variant if variant in ACC else "kd", seed, exp=exp)
            rec["variant"], rec["run_id"] = variant, f"{exp}-{variant}-s{seed}"
            rec["metrics"]["last"]["test"]["acc"] = acc
            write_record(root / "runs" / exp / f"{rec['run_id']}.json", rec)
    return root / "runs"


def _bold_cells(out: dict) -> dict[tuple[str, str], bool]:
    """``{(variant, header): bold}`` from ``table.tex`` of a :func:`report.make_report` result."""
    header, rows = _tex_rows(out["tables"]["tex"].read_text())
    return {(r[0].replace("\\_", "_"), h): c.startswith("\\textbf{") for r in rows for h, c in zip(header, r)}


def test_t_quantiles_match_the_tables():
    assert report.t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert report.t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert report.t_quantile(4) == pytest.approx(2.776, abs=1e-3)
    assert report.t_quantile(30) == pytest.approx(2.042, abs=1e-3)
    assert math.isnan(report.t_quantile(0)) and math.isnan(report.t_quantile(math.nan))


def test_paired_interval_of_three_seeds_by_hand(tmp_path):
    """x beats kd by 0.1, 0.3 and 0.5 pp on seeds 0, 1, 2: mean 0.3, sd 0.2, t_{0.975,2} = 4.303."""
    kd = {0: 0.90, 1: 0.92, 2: 0.94}
    x = {s: a + d for (s, a), d in zip(kd.items(), (0.001, 0.003, 0.005))}
    out = report.make_report(_acc_runs(tmp_path, "paired", {"kd": kd, "x": x}), "paired", out_dir=tmp_path / "o")
    r = row(out["summary"], variant="x")
    half = 4.303 * 0.2 / math.sqrt(3)
    assert r["delta_vs_kd"] == pytest.approx(0.3, abs=1e-9)
    assert r["delta_vs_kd_paired"]
    assert (r["delta_vs_kd_lo"], r["delta_vs_kd_hi"]) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-4)
    assert out["display"].table.set_index("variant").loc["x", "Δ vs KD (pp)"] == "+0.30 [-0.20, +0.80]"
    # the same numbers unpaired (Welch, sd 2 pp on each side) would be far wider: pairing is what was used
    welch = report.diff_interval(((s, v) for s, v in x.items()), ((s + 10, v) for s, v in kd.items()))
    assert not welch.paired and welch.hi - welch.lo > 5 * (2 * half) / 100
    # x has the best mean top-1 but its interval against kd contains 0: not bold
    assert r["last_test_acc_mean"] > row(out["summary"], variant="kd")["last_test_acc_mean"]
    assert not _bold_cells(out)[("x", "top-1 last (\\%)")]
    assert not any(report.best_mask(out["display"])[i][2] for i in range(2))

    # the CSV carries the interval as separate columns, next to the delta
    back = report.read_summary_csv(out["tables"]["csv"])
    cols = list(back.columns)
    j = cols.index("delta_vs_kd")
    assert cols[j:j + 5] == ["delta_vs_kd", "delta_vs_kd_lo", "delta_vs_kd_hi", "delta_vs_kd_paired",
                             "delta_vs_scratch_paired"]
    b = back.set_index("variant")
    assert b.loc["x", "delta_vs_kd_lo"] == r["delta_vs_kd_lo"] and b.loc["x", "delta_vs_kd_hi"] == r["delta_vs_kd_hi"]
    assert bool(b.loc["x", "delta_vs_kd_paired"]) is True
    # no scratch group: its delta columns are empty in every row, so they are not written
    assert "delta_vs_scratch" not in b.columns and "delta_vs_scratch_lo" not in b.columns


def test_welch_interval_when_the_seeds_do_not_pair(tmp_path):
    """kd ran seeds 0-2, x seeds 3-5: Welch. Equal sds (1 pp) and n = 3 give df = 4 (t = 2.776)."""
    kd = {0: 0.94, 1: 0.95, 2: 0.96}
    x = {3: 0.90, 4: 0.91, 5: 0.92}
    out = report.make_report(_acc_runs(tmp_path, "welch", {"kd": kd, "x": x}), "welch", out_dir=tmp_path / "o")
    r = row(out["summary"], variant="x")
    half = 2.776 * math.sqrt(1.0 ** 2 / 3 + 1.0 ** 2 / 3)
    assert r["delta_vs_kd"] == pytest.approx(-4.0, abs=1e-9) and not r["delta_vs_kd_paired"]
    assert (r["delta_vs_kd_lo"], r["delta_vs_kd_hi"]) == pytest.approx((-4.0 - half, -4.0 + half), abs=1e-3)
    assert out["display"].table.set_index("variant").loc["x", "Δ vs KD (pp)"] == \
        f"-4.00 [{-4.0 - half:+.2f}, {-4.0 + half:+.2f}]"
    # ... and kd is bold: its Welch interval against x excludes 0
    assert _bold_cells(out)[("kd", "top-1 last (\\%)")]


def test_intervals_agree_with_scipy_t_tests():
    """Paired = ``ttest_rel``, unpaired (seeds partly shared, a seed twice, unequal n) = Welch ``ttest_ind``."""
    from scipy import stats

    a = [0.91, 0.935, 0.92, 0.95]
    b = [0.90, 0.93, 0.905, 0.92]
    iv = report.diff_interval(enumerate(a), enumerate(b))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert iv.paired and iv.n == 4 and (iv.lo, iv.hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
    for sa, sb in (([0, 1, 2, 3], [0, 1, 2]), ([0, 1, 2, 2], [0, 1, 2, 3]), ([0, 1, 2, 3], [4, 5, 6])):
        xb = b[:len(sb)]
        iv = report.diff_interval(zip(sa, a), zip(sb, xb))
        ci = stats.ttest_ind(a, xb, equal_var=False).confidence_interval(0.95)
        assert not iv.paired and (iv.lo, iv.hi) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert iv.diff == pytest.approx(statistics.mean(a) - statistics.mean(xb), abs=1e-15)
    # one value on a side (unpaired), or one pair: a difference, no interval
    for iv in (report.diff_interval([(0, 0.9)], [(1, 0.8), (2, 0.85)]), report.diff_interval([(0, 0.9)], [(0, 0.8)])):
        assert iv.diff == pytest.approx(0.9 - statistics.mean([0.8, 0.85]) if not iv.paired else 0.1)
        assert math.isnan(iv.lo) and math.isnan(iv.hi) and not report.stats.excludes_zero(iv)


def test_bold_only_when_earned_against_every_row(tmp_path):
    """best beats kd clearly but 'close' only by noise: nothing bold; without 'close', best is bold.
    A tie for the best value: nothing bold."""
    kd = {0: 0.90, 1: 0.92, 2: 0.94}
    best = {s: a + d for (s, a), d in zip(kd.items(), (0.010, 0.011, 0.012))}  # +1.0, +1.1, +1.2 pp
    close = {s: a - d for (s, a), d in zip(best.items(), (0.004, -0.002, 0.001))}  # noise around best
    h = "top-1 last (\\%)"
    out = report.make_report(_acc_runs(tmp_path / "a", "e", {"kd": kd, "best": best}), "e", out_dir=tmp_path / "oa")
    assert _bold_cells(out)[("best", h)] and not _bold_cells(out)[("kd", h)]
    r = row(out["summary"], variant="best")
    assert r["delta_vs_kd_lo"] > 0  # the earned cell's interval, as shown in the Δ column
    out = report.make_report(_acc_runs(tmp_path / "b", "e", {"kd": kd, "best": best, "close": close}), "e",
                             out_dir=tmp_path / "ob")
    bold = _bold_cells(out)
    assert not any(bold[(v, h)] for v in ("kd", "best", "close"))
    iv = report.compare_rows(out["summary"], 1, 2)  # best - close
    assert iv.paired and iv.lo < 0 < iv.hi
    low = {s: a - d for (s, a), d in zip(kd.items(), (0.010, 0.011, 0.012))}
    out = report.make_report(_acc_runs(tmp_path / "c", "e", {"kd": kd, "twin": dict(kd), "low": low}), "e",
                             out_dir=tmp_path / "oc")
    assert not any(_bold_cells(out)[(v, h)] for v in ("kd", "twin", "low"))
    assert _bold_cells(out)[("low", "ECE last")] is False  # ECE is the same for every row: a tie too


def test_rows_are_compared_within_their_configuration_only(tmp_path):
    """Two student widths: kd-64 has the best top-1 and clearly beats scratch-64; kd-16 is within noise
    of it but is another configuration, so it does not take kd-64's bold away."""
    runs = tmp_path / "results" / "runs" / "w"
    kd16 = [0.90, 0.91, 0.92]
    accs = {("kd", 16): kd16, ("scratch", 16): [0.85, 0.86, 0.87],
            ("kd", 64): [a + d for a, d in zip(kd16, (0.004, -0.002, 0.003))], ("scratch", 64): [0.85, 0.855, 0.87]}
    for (variant, width), vals in accs.items():
        for seed, acc in enumerate(vals):
            rec = record(variant, seed, exp="w")
            rec["run_id"] = f"{variant}-w{width}-s{seed}"
            rec["config"] = {"seed": seed, "student": {"arch": "mlp", "kwargs": {"hidden": [width]}}}
            rec["metrics"]["last"]["test"]["acc"] = acc
            write_record(runs / f"{rec['run_id']}.json", rec)
    out = report.make_report(tmp_path / "results" / "runs", "w", out_dir=tmp_path / "o")
    summary = out["summary"]
    keys = [(v, w) for v, w in zip(summary.table["variant"], summary.table["student.kwargs.hidden"])]
    j = list(out["display"].table.columns).index("top-1 last (%)")
    mask = report.best_mask(out["display"])
    assert [k for k, m in zip(keys, mask) if m[j]] == [("kd", "[64]")]
    i64, i16 = keys.index(("kd", "[64]")), keys.index(("kd", "[16]"))
    assert report.compare_rows(summary, i64, i16).lo < 0  # across configurations: noise, not compared
    # each width's deltas are paired with the scratch row of that width
    for width in (16, 64):
        r = summary.table.iloc[keys.index(("kd", f"[{width}]"))]
        d = [(a - b) * 100 for a, b in zip(accs[("kd", width)], accs[("scratch", width)])]
        half = 4.303 * statistics.stdev(d) / math.sqrt(3)
        assert r["delta_vs_scratch_paired"]
        assert (r["delta_vs_scratch_lo"], r["delta_vs_scratch_hi"]) == pytest.approx(
            (statistics.mean(d) - half, statistics.mean(d) + half), abs=1e-3)


# --------------------------------------------------------------------------------------------
# Published numbers of a teacher -> student pair (config.pair.published.<dataset>)
# --------------------------------------------------------------------------------------------

PAIR = {"name": "resnet32x4_resnet8x4", "teacher_arch": "resnet32x4", "student_arch": "resnet8x4", "lr": 0.05,
        "published": {"cifar100": {"teacher": 79.42, "scratch": 72.5, "kd": 73.33, "dkd": 76.32,
                                   "source": "Tian et al. 2020 (CRD) Table 1",
                                   "protocol": "240 epochs, lr 0.05 x0.1 at 150/180/210"}}}


def _pair_results(root: Path, dataset: str, pair: dict | None) -> Path:
    """The ``results`` fixture's runs (scratch, kd, no_tau2 x 3 seeds, one failed kd), on ``dataset``,
    with ``config.pair = pair`` when given."""
    runs = root / "runs" / EXP
    recs = [record(v, s) for v in ACC for s in range(3)]
    recs.append(record("kd", 7, status="failed", error="RuntimeError: boom"))
    for rec in recs:
        rec["dataset"] = dataset
        if pair is not None:
            rec["config"] = {"seed": rec["seed"], "pair": pair}
        write_record(runs / f"{rec['run_id']}.json", rec)
    return root


def test_published_column_from_the_pair_config(tmp_path):
    res = _pair_results(tmp_path / "results", "cifar100", PAIR)
    out = report.make_report(res / "runs", EXP)
    summary, display = out["summary"], out["display"].table.set_index("variant")
    # the number of the row's variant, in %; blank where the pair publishes none (no_tau2)
    assert display["published top-1 (%)"].to_dict() == {"scratch": "72.50", "kd": "73.33", "no_tau2": ""}
    pub = dict(zip(summary.table["variant"], summary.table["published_top1_pct"]))
    assert pub["scratch"] == 72.5 and pub["kd"] == 73.33 and math.isnan(pub["no_tau2"])
    assert list(out["display"].table.columns[:5]) == ["variant", "n", "top-1 last (%)", "top-1 best-epoch (%)",
                                                     "published top-1 (%)"]
    # our numbers are untouched by it: the deltas and the bold cells still come from the runs
    assert row(summary, variant="kd")["last_test_acc_mean"] == pytest.approx(statistics.mean(ACC["kd"]))
    # the teacher's published accuracy next to ours; source and protocol named
    md = out["markdown"]
    assert f"Teacher top-1: {100 * TEACHER_ACC:.2f}% (published: 79.42%)." in md
    assert "Tian et al. 2020 (CRD) Table 1" in md and "240 epochs, lr 0.05 x0.1 at 150/180/210" in md
    tex = out["tables"]["tex"].read_text()
    header, rows = _tex_rows(tex)
    j = header.index("published top-1 (\\%)")
    assert {r[0]: r[j] for r in rows} == {"scratch": "72.50", "kd": "73.33", "no\\_tau2": ""}
    caption = tex.split("\\caption{", 1)[1].split("}\n", 1)[0]
    assert "Tian et al. 2020 (CRD) Table 1" in caption and "teacher 79.42" in caption
    back = report.read_summary_csv(out["tables"]["csv"])
    assert back["published_top1_pct"].tolist()[:2] == [72.5, 73.33] and math.isnan(back["published_top1_pct"][2])


def test_tables_without_published_numbers_are_unchanged(tmp_path):
    """No pair, or a pair with no published block for the records' dataset: the same bytes."""
    files = {}
    for name, dataset, pair in (("plain", "cifar10", None), ("pair", "cifar10", PAIR)):
        res = _pair_results(tmp_path / name, dataset, pair)
        out = report.make_report(res / "runs", EXP)
        assert "published top-1 (%)" not in out["display"].table.columns
        assert "published_top1_pct" not in out["summary"].table.columns
        files[name] = {k: p.read_bytes() for k, p in out["tables"].items()}
    assert files["plain"] == files["pair"]
    assert b"published" not in files["pair"]["md"] + files["pair"]["tex"] + files["pair"]["csv"]


# --------------------------------------------------------------------------------------------
# Writing: concurrent reports, planted symlinks
# --------------------------------------------------------------------------------------------


def _report_process(barrier, args: list[str]) -> None:
    barrier.wait(timeout=60)  # all start together
    sys.exit(report.main(args))


def test_concurrent_reports_of_one_experiment_all_succeed(results):
    """Two sweeps ending together each run ``python -m kdbench.report``: every one exits 0 and the
    files are complete (atomic writes through private mkstemp files, no shared temporary name).
    Three report processes (forked: no start-up cost) build the same experiment at once."""
    import multiprocessing

    summary, _ = table(results)  # imports everything once, before the fork
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        pytest.skip("needs the fork start method")
    args = ["--experiment", EXP, "--results", str(results), "--no-print"]
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_report_process, args=(barrier, args)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    out_dir = results / EXP
    written = [c for c in summary.table.columns if not summary.table[c].isna().all()]
    pd.testing.assert_frame_equal(report.read_summary_csv(out_dir / "table.csv"), summary.table[written],
                                  check_dtype=False, check_exact=True)
    md = (out_dir / "table.md").read_text()
    assert md.endswith("\n") and "## Failed runs" in md and "top-1 last (%)" in md
    assert (out_dir / "table.tex").read_text().rstrip().endswith("\\end{table}")
    for name in ("reliability.png", "learning_curves.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["acc_vs_ece.png", "index.html", "learning_curves.png",
                                                         "reliability.png", "seed_bars.png", "table.csv", "table.md",
                                                         "table.tex", "table_paper.tex"]  # no temporary file left


def test_symlinks_planted_at_old_temporary_names_are_never_followed(results, tmp_path):
    """The old writer saved plots to ``.<name>.tmp.png`` beside the target: a symlink planted there
    redirected the write to any file. Now the link and its target stay as they were."""
    out_dir = results / EXP
    out_dir.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = [f".{n}.png.tmp.png" for n in ("reliability", "learning_curves", "tau_curves")]
    names += [f".table.{e}.tmp" for e in ("md", "tex", "csv")]
    for n in names:
        (out_dir / n).symlink_to(victim)
    out = report.make_report(results / "runs", EXP)
    assert set(out["plots"]) == {"reliability", "learning_curves", "seed_bars", "acc_vs_ece"}
    assert victim.read_text() == "precious"
    for n in names:
        assert (out_dir / n).is_symlink() and os.readlink(out_dir / n) == str(victim)
    for p in out["plots"].values():
        assert not p.is_symlink() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unreadable_record_is_listed_and_warned_not_silently_dropped(results, capsys):
    path = results / "runs" / EXP / "kd-1.json"
    path.write_text(path.read_text()[:200])  # truncated (a copy cut short, a full disk)
    assert report.main(["--experiment", EXP, "--results", str(results)]) == 0
    err = capsys.readouterr().err
    section = (results / EXP / "table.md").read_text().split("## Failed runs", 1)[1]
    assert "unreadable" in section and str(path) in section
    assert f"warning: {EXP}: unreadable record left out of the table: {path}" in err
    summary, _ = table(results)
    assert row(summary, variant="kd")["n"] == 2  # the two readable kd runs, not three


def test_a_copied_record_counts_once_and_a_disagreeing_copy_is_named(results, capsys):
    src = results / "runs" / EXP / "kd-0.json"
    (results / "runs" / EXP / "backup").mkdir()
    (results / "runs" / EXP / "backup" / "kd-0.json").write_text(src.read_text())
    summary, _ = table(results)
    assert row(summary, variant="kd")["n"] == 3
    assert row(summary, variant="kd")["last_test_acc_mean"] == pytest.approx(statistics.mean(ACC["kd"]))
    rec = record("kd", 0)
    rec["metrics"]["last"]["test"]["acc"] = 0.5  # the copy says something else: the record at its own place wins
    write_record(results / "runs" / EXP / "backup" / "kd-0.json", rec)
    assert report.main(["--experiment", EXP, "--results", str(results), "--no-print"]) == 0
    err = capsys.readouterr().err
    assert "DISAGREES" in err and "backup" in err
    assert row(table(results)[0], variant="kd")["last_test_acc_mean"] == pytest.approx(statistics.mean(ACC["kd"]))


def test_the_paper_table_is_compact_booktabs_with_the_protocol_in_its_caption(results, tmp_path):
    _, display = table(results)
    paths = report.write_tables(display, tmp_path / "o", "ablation: mlp → mlp_tiny on digits")
    tex = paths["paper"].read_text()
    header, rows = _tex_rows(tex)
    assert header[0] == "variant" and len(header) <= 8 < len(display.table.columns)
    assert "top-1 last (\\%)" in header and "ECE last" in header and "$\\Delta$ vs KD (pp)" in header
    assert all("[" not in cell for row in rows for cell in row)  # intervals stay in the full table
    assert "\\toprule" in tex and "\\bottomrule" in tex and "CRD protocol" in tex
    kd = [r for r in rows if r[0] == "kd"][0]
    assert f"{100 * statistics.mean(ACC['kd']):.2f} $\\pm$" in kd[header.index("top-1 last (\\%)")]


def test_the_generic_report_never_overwrites_a_studys_own_tables(results, capsys):
    from kdbench.report.build import STUDY_MARKER

    study = results / EXP
    study.mkdir()
    (study / STUDY_MARKER).write_text("hinton: rendered by its study\n")
    (study / "table.md").write_text("the study's own table\n")
    assert report.main(["--all", "--results", str(results), "--no-print"]) == 0
    assert (study / "table.md").read_text() == "the study's own table\n"
    assert (study / "generic" / "table.md").is_file() and "generic" in capsys.readouterr().err


def test_a_key_that_does_not_apply_to_a_run_is_not_its_config_column_value():
    """An online run's config still holds teacher_capture.* (the composed defaults); it computed without
    them, so its row shows them missing rather than the captured runs' k (issue 12's token study)."""
    from kdbench.report.frame import config_columns

    def rec(rid, signal, k):
        return {"run_id": rid, "variant": "kd", "seed": 0,
                "config": {"teacher_signal": signal, "teacher_capture": {"k": k, "path": f"cap-k{k}"},
                           "distill": {"variant": "kd"}}}

    cols = config_columns([rec("a", "online", 1), rec("b", "captured", 1), rec("c", "captured", 8)])
    assert cols["teacher_capture.k"] == {"a": None, "b": 1, "c": 8}  # no value for the online run "a"
    assert cols["teacher_signal"] == {"a": "online", "b": "captured", "c": "captured"}


def test_the_report_passes_frame_summary_and_display_as_dataclasses(results, monkeypatch):
    """What travels between the report's steps is explicit (no DataFrame.attrs): the W&B report run's
    config reads the run ids and group columns from the Display."""
    import wandb

    frame = report.load_experiment(results / "runs", EXP)
    assert isinstance(frame, report.Frame) and len(frame.records) == len(frame.df) == 10
    assert frame.unreadable == [] and frame.duplicates == []
    summary, display = table(results)
    assert isinstance(summary, report.Summary) and isinstance(display, report.Display)
    assert summary.group_cols == display.group_cols == ["variant"] and summary.sample_cols == ["variant"]
    assert [s for s, _ in summary.samples[("kd",)]["last_test_acc"]] == [0, 1, 2]
    assert display.experiment == EXP and display.caption == "ablation: mlp → mlp_tiny on digits"
    assert [f["run_id"] for f in display.failed] == ["ablation-kd-a0.5-t4.0-s7-failed"]
    assert not any(df.attrs for df in (frame.df, summary.table, display.table))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    seen = {}
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or real_init(**kw))
    report.make_report(results / "runs", EXP, out_dir=results / "wb", wandb_log=True)
    assert seen["config"]["run_ids"] == sorted(frame.df["run_id"]) and seen["config"]["group_cols"] == ["variant"]
