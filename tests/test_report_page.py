"""The study page and its figures (issue 24 #10-11, issue 23 #8): the teacher named and measured, only the
config keys that differ, bars from a stated baseline with the table's intervals, teacher reference lines,
count labels clear of the titles, legends clear of the curves, small multiples, user strings as plain text."""

from __future__ import annotations

import math
import re

import pytest

from kdbench import report
from kdbench.records import write_record
from kdbench.report import plots
from kdbench.report.html import compact_table, config_differences, page_title, render_html

TEACHER = {"key": "k1", "name": "digits-mlp-s0-k1", "arch": "mlp"}
#: variant -> top-1 last of seeds 0, 1, 2
ACC = {"scratch": [0.80, 0.82, 0.81], "kd": [0.86, 0.85, 0.87], "reverse_kl": [0.84, 0.83, 0.85],
       "kd_tail": [0.83, 0.84, 0.82], "dkd": [0.78, 0.80, 0.79], "dist": [0.85, 0.86, 0.84]}


def _bins(acc: float, count: float) -> dict:
    edges = [i / 10 for i in range(11)]
    return {"edges": edges, "confidence": [0.95 if i == 9 else 0.55 if i == 5 else 0.0 for i in range(10)],
            "accuracy": [acc if i == 9 else 0.5 if i == 5 else 0.0 for i in range(10)],
            "count": [count if i == 9 else 40.0 if i == 5 else 0.0 for i in range(10)]}


def _distill(variant: str) -> dict:
    if variant == "scratch":
        return {"method": "none", "enabled": False, "alpha": 1.0, "variant": variant}
    if variant == "dkd":
        return {"method": "dkd", "enabled": True, "dkd_beta": 8.0, "tau": 4.0, "variant": variant}
    if variant == "dist":
        return {"method": "dist", "enabled": True, "dist_beta": 1.0, "tau": 1.0, "variant": variant}
    d = {"method": "kd", "enabled": True, "alpha": 0.1, "tau": 4.0, "jsd_beta": 0.5, "skew_lambda": 0.1,
         "kl": "reverse" if variant == "reverse_kl" else "forward", "variant": variant}
    if variant == "kd_tail":
        d["topk_mode"] = "tail"  # a `+distill.topk_mode=tail` of this variant only
    return d


def record(variant: str, seed: int, *, teacher: dict | None = None, bin_acc: float = 0.9, bin_count: float = 60.0,
           exp: str = "page", config: dict | None = None) -> dict:
    acc = ACC.get(variant, ACC["kd"])[seed]
    labels_only = variant == "scratch"
    d = _distill(variant) if variant in ACC else dict(_distill("kd"), variant=variant)
    cfg = {"seed": seed, "distill": d, "teacher_signal": "none" if labels_only else "cached",
           "teacher_cache": {"dtype": "auto"}, "teacher_capture": {"k": None}, "paths": {"runs_dir": f"/x/{seed}"},
           "student": {"arch": "mlp_tiny"}}
    if not labels_only:
        cfg["teacher"] = {"arch": "mlp", "seed": 0}
    cfg.update(config or {})
    test = {"acc": acc, "ece": 0.02 + 0.01 * seed, "nll": 1 - acc, "brier": (1 - acc) / 2}
    if not labels_only:
        test |= {"agreement": acc + 0.05, "kl_teacher": 0.1}
    t = None if labels_only else dict(teacher or TEACHER, test={"acc": 0.93, "ece": 0.015})
    return {"run_id": f"{variant}-s{seed}", "experiment": exp, "variant": variant, "seed": seed, "status": "complete",
            "error": None, "config": cfg, "overrides": [], "dataset": "digits", "teacher_arch": None if labels_only else "mlp",
            "student_arch": "mlp_tiny", "distill": d, "teacher": t,
            "metrics": {"last": {"epoch": 2, "val": {"acc": acc}, "test": test},
                        "best": {"epoch": 2, "val": {"acc": acc}, "test": test}},
            "history": [{"epoch": e, "val_acc": acc - 0.04 * (2 - e)} for e in range(3)],
            "reliability": {"last": _bins(bin_acc, bin_count), "best": _bins(bin_acc, bin_count)}}


def runs(variants, **kw) -> list[dict]:
    return [record(v, s, **kw) for v in variants for s in range(3)]


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# -------------------------------------------------------------------------------------------- the page


def test_the_config_table_lists_only_keys_that_differ():
    keys, diffs = config_differences(runs(["scratch", "kd", "reverse_kl", "kd_tail", "dkd", "dist"]))
    # alpha 0.1 / jsd_beta / skew_lambda in every KD row, a DKD-only key, the cache keys, scratch's alpha 1.0
    # and its teacher signal, paths and seeds: none is a difference
    assert keys == ["distill.kl", "distill.method", "distill.tau", "distill.topk_mode"]
    assert diffs["scratch"] == {"distill.kl": "—", "distill.method": "none", "distill.tau": "—", "distill.topk_mode": "—"}
    assert diffs["kd_tail"]["distill.topk_mode"] == "tail" and diffs["kd"]["distill.topk_mode"] == "—"
    assert diffs["reverse_kl"]["distill.kl"] == "reverse" and (diffs["dkd"]["distill.tau"], diffs["dist"]["distill.tau"]) \
        == ("4.0", "1.0")
    # one variant whose runs disagree: listed with both values
    recs = runs(["kd"])
    recs[0]["config"]["student"]["arch"] = "mlp_wide"
    keys, diffs = config_differences(recs)
    assert keys == ["student.arch"] and diffs["kd"]["student.arch"] == "mlp_tiny | mlp_wide"


def test_the_teacher_is_the_registrys_and_runs_that_changed_it_are_named():
    recs = runs(["scratch", "kd"])
    for r in recs[3:]:
        r["teacher"]["registry_test"] = {"acc": 0.95, "ece": 0.01}  # the registry's figures win over re-measured ones
    [t] = plots.teachers_of(recs)
    assert (t["arch"], t["name"], t["runs"]) == ("mlp", "digits-mlp-s0-k1", 3)
    assert t["acc"] == pytest.approx(0.95) and t["ece"] == pytest.approx(0.01)
    grad = runs(["kd"]) + [record("teacher_grad", s) for s in range(3)]
    for r in grad[3:]:
        r["distill"]["teacher_grad"] = True
        r["teacher"]["test"] = {"acc": 0.60 + 0.01 * r["seed"], "ece": 0.3}  # re-measured after the run trained it
    [t] = plots.teachers_of(grad)
    assert t["acc"] == pytest.approx(0.93) and sorted(t["changed"]) == ["teacher_grad"]
    assert t["changed"]["teacher_grad"] == pytest.approx([0.60, 0.61, 0.62])
    captured = runs(["kd"])
    for r in captured:
        r["teacher"].pop("test")
    assert math.isnan(plots.teachers_of(captured)[0]["acc"])
    assert page_title("page", recs) == "page: teacher mlp → student mlp_tiny on digits"
    assert page_title("page", runs(["scratch"])) == "page: student mlp_tiny on digits"


def _write(tmp_path, recs, exp="page"):
    d = tmp_path / "results" / "runs" / exp
    for r in recs:
        write_record(d / f"{r['run_id']}.json", r)
    return report.make_report(tmp_path / "results" / "runs", exp)


def test_the_page_names_the_teacher_and_shows_the_compact_columns_first(tmp_path):
    recs = runs(["scratch", "kd", "dkd"])
    d = tmp_path / "runs" / "page"
    for r in recs:
        write_record(d / f"{r['run_id']}.json", r)
    _, display = report.build_table(tmp_path / "runs", "page")
    text = render_html("page", display, caption="page", plots={}, out_dir=tmp_path,
                       records=[(d / f"{r['run_id']}.json", r) for r in recs])
    assert "<h1>page: teacher mlp → student mlp_tiny on digits</h1>" in text
    assert 'id="teacher"' in text and "test top-1 93.00 %, ECE 0.0150; 6 runs distilled from it" in text
    head = text.split('<table id="results"', 1)[1].split("</thead>", 1)[0]
    cols = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", head)
    assert cols == ["variant", "n", "top-1 last (%)", "Δ vs scratch (pp)", "ECE last", "agreement last (%)"]
    ref = text.split('<tbody class="reference">', 1)[1].split("</tbody>", 1)[0]
    assert "teacher: mlp" in ref and ">93.00<" in ref and ">0.0150<" in ref
    full = text.split('<details id="all-columns">', 1)[1].split("</details>", 1)[0]
    assert 'id="results-full"' in full and "top-1 best-epoch (%)" in full and "Δ vs KD (pp)" in full


def test_user_strings_are_plain_text_in_every_plot_and_the_page(tmp_path):
    """A variant and a config value such as ``a$\\frac{$b`` crashed mathtext after the tables were written."""
    odd = "a$\\frac{$b"
    recs = runs(["scratch", "kd"]) + [record(odd, s, config={"student": {"arch": "mlp_tiny", "tag": f"{odd}{s % 2}"}})
                                      for s in range(3)]
    for r in recs[-3:]:
        r["run_id"] = f"odd-s{r['seed']}"
    out = _write(tmp_path, recs)
    assert set(out["plots"]) == {"reliability", "learning_curves", "seed_bars", "acc_vs_ece"}
    assert all(p.stat().st_size > 5000 for p in out["plots"].values())
    text = out["tables"]["html"].read_text()
    assert "a$\\frac{$b" in text and "<h1>" in text
    assert plots.plain(odd) == "a\\$\\frac{\\$b"


# -------------------------------------------------------------------------------------------- the figures


def _texts(fig):
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def test_reliability_bin_counts_never_overlap_the_titles():
    # a nearly full top bin with a long count: drawn inside the axes, its label ran into the title
    fig = plots.reliability_figure(runs(["scratch", "kd"], bin_acc=0.995, bin_count=123456.0))
    texts = _texts(fig)
    r = fig.canvas.get_renderer()
    counts = [t for t in texts if t.get_text() in {"370368", "120"}]  # pooled over 3 seeds
    titles = [ax.title for ax in fig.axes if ax.get_title()] + [fig._suptitle]
    assert len(counts) == 4 and len(titles) == 3
    for c in counts:
        for t in titles:
            assert not _boxes_overlap(c.get_window_extent(r), t.get_window_extent(r)), (c.get_text(), t.get_text())


def test_learning_curves_legend_beside_the_curves_and_small_multiples_for_many_variants():
    few = plots.learning_curves_figure(runs(["scratch", "kd", "reverse_kl"]))
    r = few.canvas.get_renderer()
    [ax] = few.axes
    leg = ax.get_legend()
    few.canvas.draw()
    assert not _boxes_overlap(leg.get_window_extent(r), ax.get_window_extent(r))
    assert [t.get_text() for t in leg.get_texts()][-1] == "teacher mlp, test top-1 93.00 %"
    assert any(abs(line.get_ydata()[0] - 93.0) < 1e-9 for line in ax.get_lines())  # the teacher's line
    many = plots.learning_curves_figure(runs(["scratch", "kd", "reverse_kl", "kd_tail", "dkd", "dist"]))
    panels = [a for a in many.axes if a.get_visible()]
    assert len(panels) == 5 > plots.SMALL_MULTIPLES_AFTER  # one per distilled variant
    assert [a.get_title() for a in panels] == ["kd (n=3)", "dist (n=3)", "dkd (n=3)", "kd_tail (n=3)", "reverse_kl (n=3)"]
    for a in panels:
        labels = [line.get_label() for line in a.get_lines()]
        assert labels[:2] == ["scratch", "variant"]  # each panel: its variant against scratch
        assert a.get_legend() is None
    many.canvas.draw()
    [fleg] = many.legends
    for a in panels:
        assert not _boxes_overlap(fleg.get_window_extent(many.canvas.get_renderer()), a.get_window_extent())


def test_seed_bars_start_at_the_scratch_mean_with_the_tables_intervals(tmp_path):
    from matplotlib.patches import Rectangle

    recs = runs(["scratch", "kd", "dkd"])
    fig = plots.seed_bars_figure(recs)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    # the table's numbers, computed by the report (an independent path: records on disk -> build_table)
    d = tmp_path / "r" / "page"
    for r in recs:
        write_record(d / f"{r['run_id']}.json", r)
    summary, _ = report.build_table(tmp_path / "r", "page")
    table = summary.table.set_index("variant")
    assert [b.get_y() for b in bars] == [0.0, 0.0, 0.0]
    for b, v in zip(bars, ["scratch", "kd", "dkd"]):
        assert b.get_height() == pytest.approx(table.loc[v, "delta_vs_scratch"], abs=1e-9)
    scratch = table.loc["scratch", "last_test_acc_mean"] * 100
    assert f"({scratch:.2f} %)" in ax.get_title()
    teacher = [line for line in ax.get_lines() if line.get_label().startswith("teacher")]
    assert teacher and teacher[0].get_ydata()[0] == pytest.approx(93.0 - scratch)
    caps = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    seg = caps[0].lines[2][0].get_segments()[0]  # kd's interval, as in the table
    assert (seg[0][1], seg[1][1]) == pytest.approx((table.loc["kd", "delta_vs_scratch_lo"],
                                                    table.loc["kd", "delta_vs_scratch_hi"]), abs=1e-9)
    # no scratch row: no bars at all (dots and means, whose axis need not start at 0)
    dots = plots.seed_bars_figure(runs(["kd", "dkd"]))
    assert not [p for p in dots.axes[0].patches if isinstance(p, Rectangle)]
    assert "no bars" in dots.axes[0].get_title()


def test_the_compact_table_and_the_plot_labels_keep_only_the_config_columns_that_tell_rows_apart(tmp_path):
    """A capture's k and its path vary together: the page's first table and the figures show k, not the path."""
    recs = []
    for k in (1, 8):
        for mode in ("renorm", "tail"):
            for s in range(2):
                r = record("kd", s, config={"teacher_signal": "captured",
                                            "teacher_capture": {"k": k, "path": f"results/captures/digits-k{k}"}})
                r["config"]["distill"] = dict(r["config"]["distill"], topk_mode=mode)
                r["run_id"] = f"kd-k{k}-{mode}-s{s}"
                recs.append(r)
    d = tmp_path / "runs" / "page"
    for r in recs:
        write_record(d / f"{r['run_id']}.json", r)
    _, display = report.build_table(tmp_path / "runs", "page")
    assert {"teacher_capture.path", "teacher_capture.k", "distill.topk_mode"} <= set(display.table.columns)
    table, n_left = compact_table(display)
    assert list(table.columns)[:n_left] == ["variant", "topk_mode", "k"]
    assert list(table.columns)[n_left:] == ["n", "top-1 last (%)", "ECE last", "agreement last (%)"]
    assert sorted(zip(table["topk_mode"], table["k"])) == [("renorm", "1"), ("renorm", "8"), ("tail", "1"), ("tail", "8")]
    gcols = display.group_cols
    keys = [tuple(row) for row in display.summary.table[gcols].itertuples(index=False, name=None)]
    assert sorted(plots.group_labels(keys, gcols).values()) == [
        "kd topk_mode=renorm k=1", "kd topk_mode=renorm k=8", "kd topk_mode=tail k=1", "kd topk_mode=tail k=8"]
    # a bare "kd" beside "kd k=1" says what it has; a path alone is shortened to its last part
    labels = plots.group_labels([("kd", 1, "online"), ("kd", None, "captured"), ("scratch", None, None)],
                                ["variant", "teacher_capture.k", "teacher_signal"])
    assert list(labels.values()) == ["kd k=1", "kd teacher_signal=captured", "scratch"]
    assert plots.group_labels([("kd", "a/b/x1"), ("kd", "a/b/x2")], ["variant", "p"]) == {
        ("kd", "a/b/x1"): "kd p=x1", ("kd", "a/b/x2"): "kd p=x2"}
