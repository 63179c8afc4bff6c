"""The Hinton et al. (2015) MNIST table, built from synthetic run records (fast, no training)."""

from __future__ import annotations

import json
import math
import os
import statistics

import pandas as pd
import pytest

from kdbench.records import write_record
from kdbench.studies import hinton

N_TEST = 10_000
SEEDS = (0, 1, 2)
# accuracies chosen so that (1 - acc) * 10000 is not an integer in float arithmetic
TEACHER_ACC = {0: 0.99330001, 1: 0.99291234, 2: 0.99349999}
SCRATCH_ACC = {0: 0.98540002, 1: 0.98466, 2: 0.98612}
KD_ACC = {0: 0.99260002, 1: 0.99211, 2: 0.99188}
TAU_ACC = {1.0: 0.9862, 2.0: 0.9881, 4.0: 0.99, 8.0: 0.9921, 20.0: KD_ACC[0]}


def _config(seed: int) -> dict:
    return {"teacher": {"seed": seed, "recipe": {"epochs": 15, "batch_size": 128, "augment": "jitter",
                                                 "optim": {"lr": 0.02, "momentum": 0.9, "nesterov": True},
                                                 "sched": {"name": "cosine"}}},
            "trainer": {"max_epochs": 15}, "optim": {"lr": 0.02, "momentum": 0.9, "nesterov": True,
                                                     "weight_decay": 0.0},
            "sched": {"name": "cosine"}, "dataset": {"val_size": 5000, "batch_size": 128, "augment": "none"}}


def _record(run_id: str, variant: str, seed: int, acc: float, tau: float | None = None, status: str = "complete",
            teacher_acc: float | None = None, finished_at: str = "2026-01-01T00:00:00+00:00") -> dict:
    test = {"acc": acc, "ece": 0.01 + seed / 1000, "nll": 0.05, "mce": 0.3, "brier": 0.02}
    rec = {"run_id": run_id, "experiment": "hinton_mnist", "variant": variant, "seed": seed, "status": status,
           "error": None, "config": _config(seed), "dataset": "mnist",
           "dataset_info": {"sizes": {"train": 60000, "test": N_TEST}, "val_size": 5000},
           "distill": {"alpha": 0.1 if variant == "kd" else 1.0, "tau": tau if tau is not None else 4.0},
           "metrics": {}, "teacher": None, "history": [], "device": "cpu (x86_64, 2 cores)",
           "wall_time_s": 600.0 + seed, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": finished_at}
    if status == "complete":
        if variant == "kd":
            test |= {"agreement": 0.995, "kl_teacher": 0.02}
        rec["metrics"] = {"last": {"epoch": 14, "test": test}, "best": {"epoch": 13, "test": test}}
    if variant == "kd":
        tacc = TEACHER_ACC[seed] if teacher_acc is None else teacher_acc
        rec["teacher"] = {"key": f"key{seed}", "name": f"mnist-hinton_teacher-s{seed}-key{seed}",
                          "arch": "hinton_teacher", "test": {"acc": tacc, "ece": 0.005, "nll": 0.03}}
    return rec


@pytest.fixture
def results(tmp_path):
    runs = tmp_path / "results" / "runs" / "hinton_mnist"
    for s in SEEDS:
        write_record(runs / f"scratch-s{s}.json", _record(f"scratch-s{s}", "scratch", s, SCRATCH_ACC[s]))
        write_record(runs / f"kd-s{s}.json", _record(f"kd-s{s}", "kd", s, KD_ACC[s], tau=20.0))
    for t, acc in TAU_ACC.items():
        if t != 20.0:  # the tau=20 run of seed 0 is the grid's own run (same run id)
            write_record(runs / f"kd-tau{t:g}.json", _record(f"kd-tau{t:g}", "kd", 0, acc, tau=t))
    for s in SEEDS:  # the teachers' registry entries
        entry = tmp_path / "results" / "teachers" / f"mnist-hinton_teacher-s{s}-key{s}"
        entry.mkdir(parents=True)
        (entry / "meta.json").write_text(json.dumps({"key": f"key{s}", "test": {"acc": TEACHER_ACC[s]}}))
    return tmp_path / "results"


def _errors(accs):
    errs = [round((1 - a) * N_TEST) for a in accs]
    return statistics.mean(errs), statistics.stdev(errs), errs


def test_errors_are_counts_out_of_10000_mean_std_over_seeds(results):
    table = hinton.build_hinton_table(results / "runs" / "hinton_mnist").set_index("model")
    assert list(table.index) == [hinton.ROW_TEACHER, hinton.ROW_SCRATCH, hinton.ROW_KD]
    for row, accs in ((hinton.ROW_TEACHER, TEACHER_ACC), (hinton.ROW_SCRATCH, SCRATCH_ACC), (hinton.ROW_KD, KD_ACC)):
        mean, std, errs = _errors([accs[s] for s in SEEDS])
        assert table.loc[row, "errors_mean"] == pytest.approx(mean)
        assert table.loc[row, "errors_std"] == pytest.approx(std)
        assert table.loc[row, "n_seeds"] == 3
        assert table.loc[row, "errors_per_seed"] == " / ".join(str(e) for e in errs)
    assert round((1 - TEACHER_ACC[0]) * N_TEST) == 67  # rounding, not truncation: 66.9999 -> 67
    assert table["published_errors"].to_dict() == {hinton.ROW_TEACHER: 67, hinton.ROW_SCRATCH: 146,
                                                   hinton.ROW_KD: 74}
    # agreement / KL with the teacher: measured for the distilled student only
    assert table.loc[hinton.ROW_KD, "agreement"] == pytest.approx(0.995)
    assert math.isnan(table.loc[hinton.ROW_SCRATCH, "agreement"])
    assert math.isnan(table.loc[hinton.ROW_TEACHER, "kl_to_teacher"])


def test_teacher_deduplicated_by_key(results):
    # seed 0's teacher appears in 5 records (grid + tau sweep) but counts once; a second record
    # carrying the same key with another acc must not be a fourth teacher
    runs = results / "runs" / "hinton_mnist"
    write_record(runs / "kd-s0-running.json", _record("kd-s0-running", "kd", 0, 0.5, tau=3.0, status="running",
                                                      teacher_acc=0.90))
    table = hinton.build_hinton_table(runs).set_index("model")
    assert table.loc[hinton.ROW_TEACHER, "n_seeds"] == 3
    assert table.loc[hinton.ROW_TEACHER, "seeds"] == "0 1 2"
    assert table.loc[hinton.ROW_TEACHER, "errors_mean"] == pytest.approx(
        _errors([TEACHER_ACC[s] for s in SEEDS])[0])


def test_rerun_replaces_older_record_and_incomplete_runs_are_flagged(results):
    runs = results / "runs" / "hinton_mnist"
    write_record(runs / "scratch-s1-rerun.json", _record("scratch-s1-rerun", "scratch", 1, 0.9800,
                                                         finished_at="2026-02-01T00:00:00+00:00"))
    write_record(runs / "scratch-s3.json", _record("scratch-s3", "scratch", 3, 0.5, status="running"))
    study = hinton.collect(runs)
    row = study.table.set_index("model").loc[hinton.ROW_SCRATCH]
    assert row["n_seeds"] == 3
    assert row["errors_mean"] == pytest.approx(_errors([SCRATCH_ACC[0], 0.98, SCRATCH_ACC[2]])[0])
    assert not study.partial and any("running" in p for p in study.problems)


def test_partial_grid_is_marked(results):
    runs = results / "runs" / "hinton_mnist"
    (runs / "scratch-s2.json").unlink()
    (runs / "kd-tau8.json").unlink()
    study = hinton.collect(runs)
    assert study.partial
    assert study.table.set_index("model").loc[hinton.ROW_SCRATCH, "n_seeds"] == 2
    out = results / "hinton_mnist"
    hinton.write_outputs(study, out)
    assert "PARTIAL" in (out / "table.md").read_text()


def test_cli_writes_table_csv_tex_plot_and_copies(results, capsys):
    assert hinton.main(["--results", str(results)]) == 0
    out = results / "hinton_mnist"
    csv = pd.read_csv(out / "table.csv")
    assert {"model", "published_errors", "errors_mean", "errors_std", "n_seeds"} <= set(csv.columns)
    assert csv["published_errors"].tolist() == [67, 146, 74]
    assert csv["errors_mean"].iloc[2] == pytest.approx(_errors([KD_ACC[s] for s in SEEDS])[0])
    png = out / "tau_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    tau = pd.read_csv(out / "tau_table.csv")
    assert tau["tau"].tolist() == [1.0, 2.0, 4.0, 8.0, 20.0]
    assert tau["errors"].tolist() == [round((1 - TAU_ACC[t]) * N_TEST) for t in tau["tau"]]
    md = (out / "table.md").read_text()
    assert "LAST-epoch" in md and "PARTIAL" not in md and "| 67 |" in md
    assert "\\begin{table}" in (out / "table.tex").read_text()
    assert len(list((out / "records").glob("*.json"))) == 10
    assert sorted(p.parent.name for p in (out / "teachers").glob("*/meta.json")) == [
        f"mnist-hinton_teacher-s{s}-key{s}" for s in SEEDS]
    # the frozen copy rebuilds the same table
    assert hinton.main(["--results", str(results), "--records", str(out / "records"),
                        "--out", str(results / "again")]) == 0
    assert pd.read_csv(results / "again" / "table.csv").equals(csv)


def test_no_records_is_a_one_line_error_exit_2(tmp_path, capsys):
    assert hinton.main(["--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no hinton_mnist run records" in err


def test_rendered_through_the_report_package(results):
    """The study's cells come from the report's formatters and its tables from the report's renderers."""
    from kdbench import report

    study = hinton.collect(results / "runs" / "hinton_mnist")
    disp = hinton.display_table(study.table).set_index("model")
    t = study.table.set_index("model")
    for name in hinton.ROWS:
        assert disp.loc[name, "errors (mean ± std)"] == report.fmt_mean_std(
            t.loc[name, "errors_mean"], t.loc[name, "errors_std"], 1.0, 1, missing="n/a", no_std="omit")
        assert disp.loc[name, "test acc (%)"] == report.fmt_value(t.loc[name, "test_acc"], 100.0, 2, missing="n/a")
    assert disp.loc[hinton.ROW_SCRATCH, "agreement with teacher (%)"] == "n/a"
    table = hinton.display_table(study.table)
    assert report.markdown_table(table, compact=True) in hinton.render_markdown(study)
    tex = hinton.render_latex(study)
    assert tex.startswith("\\begin{table}[t]") and "\\label{tab:hinton-mnist}" in tex
    assert "errors (mean $\\pm$ std)" in tex and "KL(teacher$\\|$student)" in tex and "±" not in tex


def test_symlinks_planted_in_the_output_folder_are_never_followed(results, tmp_path):
    out = results / "hinton_mnist"
    (out / "records").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = [out / ".tau_curve.png.tmp.png", out / ".table.md.tmp"]
    for p in planted:
        p.symlink_to(victim)
    (out / "records" / "kd-s0.json").symlink_to(victim)  # a copied record's own name
    assert hinton.main(["--results", str(results)]) == 0
    assert victim.read_text() == "precious"
    assert all(p.is_symlink() and os.readlink(p) == str(victim) for p in planted)
    assert (out / "tau_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    copied = out / "records" / "kd-s0.json"
    assert not copied.is_symlink() and json.loads(copied.read_text())["run_id"] == "kd-s0"


def test_diagnose_without_weights_keeps_the_diagnostics_already_there(results, capsys):
    out = results / "hinton_mnist"
    # no checkpoints, no registry weights: a fresh folder gets the "nothing to re-evaluate" note...
    assert hinton.main(["--results", str(results), "--diagnose"]) == 0
    assert "No seed had both" in (out / "diagnostics.md").read_text()
    # ...but committed diagnostics (made where the weights were) are kept, not replaced by that note
    (out / "diagnostics.md").write_text("# Diagnostics: committed\n")
    (out / "diagnostics.csv").write_text("seed\n0\n")
    assert hinton.main(["--results", str(results), "--diagnose"]) == 0
    assert (out / "diagnostics.md").read_text() == "# Diagnostics: committed\n"
    assert (out / "diagnostics.csv").read_text() == "seed\n0\n"
    assert "kept" in capsys.readouterr().err


def test_the_long_teacher_rerun_gets_its_own_table_targets_and_the_short_rows_beside_it(results, capsys):
    """Issue 15 part 2: one long-trained teacher shared by the three seeds; the gap closed and the targets
    (teacher <= 75, distilled <= 90 errors, gap >= 80 %) are computed from its records."""
    long_runs = results / "runs" / hinton.LONG_EXPERIMENT
    t_acc, kd = 0.9930, {0: 0.9915, 1: 0.9909, 2: 0.9912}   # teacher 70 errors; students 85, 91, 88
    for s in SEEDS:
        sc = _record(f"scratch-s{s}", "scratch", s, SCRATCH_ACC[s])
        k = _record(f"kd-s{s}", "kd", s, kd[s], tau=20.0)
        k["teacher"] = {"key": "long", "name": "mnist-hinton_teacher-s0-long", "test": {"acc": t_acc}}
        k["config"]["teacher"] = {**k["config"]["teacher"], "seed": 0, "recipe": {
            **k["config"]["teacher"]["recipe"], "epochs": 200, "optim": {"lr": 0.05}}}
        for r in (sc, k):
            r["experiment"] = hinton.LONG_EXPERIMENT
            write_record(long_runs / f"{r['run_id']}.json", r)
    assert hinton.main(["--results", str(results)]) == 0
    out = results / "hinton_mnist"
    md = (out / "table.md").read_text()
    scratch_mean = statistics.mean(round((1 - SCRATCH_ACC[s]) * N_TEST) for s in SEEDS)
    gap = (scratch_mean - 88) / (scratch_mean - 70)
    assert f"Gap closed by distillation at the long teacher: {100 * gap:.0f}%" in md
    assert "- teacher errors: 70.0 (target ≤ 75): MET" in md
    assert "- distilled student errors: 88.0 (target ≤ 90): MET" in md
    assert "(long teacher: 200 epochs, lr 0.05)" in md and "(short teacher: 15 epochs, lr 0.02)" in md
    assert md.index("long teacher") < md.index("## Short teacher")  # the new table comes first
    long_csv = pd.read_csv(out / "long_teacher.csv").set_index("model")
    assert long_csv.loc[hinton.ROW_TEACHER, "n_seeds"] == 1 and long_csv.loc[hinton.ROW_KD, "errors_mean"] == 88
    assert len(list((out / "records_long").glob("*.json"))) == 6
    # rebuilt from the frozen copies alone (no runs folder): the same page
    import shutil

    shutil.rmtree(results / "runs")
    assert hinton.main(["--results", str(results), "--records", str(out / "records")]) == 0
    assert (out / "table.md").read_text() == md


def test_the_paper_regime_rerun_goes_above_the_long_teacher_with_its_own_targets(results):
    """Issue 29 part 1: a third regime (its own experiment, 60-epoch students on 59,000 images) gets its own
    section, csv and frozen records, above the long-teacher one, and is rebuilt from the frozen copy."""
    for exp, t_acc, kd, epochs in ((hinton.LONG_EXPERIMENT, 0.9922, 0.9862, 200),
                                   (hinton.PAPER_EXPERIMENT, 0.9927, 0.9918, 300)):
        for s in SEEDS:
            sc = _record(f"scratch-s{s}", "scratch", s, SCRATCH_ACC[s])
            k = _record(f"kd-s{s}", "kd", s, kd, tau=20.0)
            k["teacher"] = {"key": exp, "name": f"mnist-hinton_teacher-s0-{exp}", "test": {"acc": t_acc}}
            k["config"]["teacher"] = {**k["config"]["teacher"], "seed": 0, "recipe": {
                **k["config"]["teacher"]["recipe"], "epochs": epochs, "optim": {"lr": 0.05}}}
            for r in (sc, k):
                r["experiment"] = exp
                if exp == hinton.PAPER_EXPERIMENT:
                    r["config"]["trainer"] = {**r["config"].get("trainer", {}), "max_epochs": 60}
                    r["dataset_info"] = {"sizes": {"train": 60000, "test": N_TEST}, "val_size": 1000}
                write_record(results / "runs" / exp / f"{r['run_id']}.json", r)
    assert hinton.main(["--results", str(results)]) == 0
    out = results / "hinton_mnist"
    md = (out / "table.md").read_text()
    assert md.index(f"({hinton.PAPER_EXPERIMENT})") < md.index(f"({hinton.LONG_EXPERIMENT})") < md.index("## Short")
    assert "(paper regime: 300 epochs, lr 0.05)" in md and "(long teacher: 200 epochs, lr 0.05)" in md
    assert "the students train 60 epochs (the short table's: 15) on 59,000 images (validation 1,000)" in md
    assert "Targets (issue 29):" in md and "- teacher errors: 73.0 (target ≤ 75): MET" in md
    assert "- distilled student errors: 82.0 (target ≤ 90): MET" in md
    paper = pd.read_csv(out / "paper_regime.csv").set_index("model")
    assert paper.loc[hinton.ROW_KD, "errors_mean"] == 82
    assert len(list((out / "records_paper").glob("*.json"))) == 6
    import shutil

    shutil.rmtree(results / "runs")
    assert hinton.main(["--results", str(results), "--records", str(out / "records")]) == 0
    assert (out / "table.md").read_text() == md


def test_machine_sizes_and_published_numbers_come_from_records_and_one_source(results):
    """No number typed into the text: the machine is the records' device and host, the image counts their
    ``dataset_info`` (and the diagnostics' own counts), the published numbers :mod:`kdbench.studies.published`."""
    from kdbench.studies.published import HINTON_2015

    runs = results / "runs" / "hinton_mnist"
    for p in runs.glob("*.json"):
        r = json.loads(p.read_text())
        r |= {"device": "NVIDIA H100 80GB HBM3", "host": "node7"}
        r["dataset_info"]["sizes"]["train"] = 50_000
        write_record(p, r)
    study = hinton.collect(runs)
    note = hinton.protocol_note(study)
    assert "Machine: NVIDIA H100 80GB HBM3, host node7 (the records' device and host)" in note
    assert "CPU" not in note and "trained on 45,000 images (5,000 of the 50,000 held out" in note
    md = hinton.render_markdown(study)
    assert f"(published: {100 * HINTON_2015.gap_closed:.0f}%)" in md and HINTON_2015.source in md
    assert f"{HINTON_2015.kd_errors} errors at T = {HINTON_2015.kd_tau:g}" in md
    assert study.table.set_index("model")["published_errors"].tolist() == [
        HINTON_2015.teacher_errors, HINTON_2015.scratch_errors, HINTON_2015.kd_errors]
    rows = [{k: 0 for k in ("seed", "teacher_train_errors", "kd_train_errors", "scratch_train_errors",
                            "kd_copies_teacher_train_mistakes", "teacher_test_errors", "kd_test_errors",
                            "kd_test_errors_shared_with_teacher", "scratch_test_errors",
                            "scratch_test_errors_shared_with_teacher", "kd_agreement_with_teacher_test",
                            "scratch_agreement_with_teacher_test")} | {"n_train": 45_000, "n_test": 2_000}]
    text = hinton.render_diagnostics(rows)
    assert "on the 45,000 training images" in text and "on the 2,000 test images" in text and "55,000" not in text


def test_the_omitted3_csv_becomes_a_section_of_the_table(results):
    """Issue 29 part 2: omitted3.csv (written by kdbench.studies.omitted, which needs the checkpoints) is kept
    as a section of table.md, means over seeds beside the paper's 206/133 -> 109/14."""
    from kdbench.studies import omitted

    out = results / "hinton_mnist"
    out.mkdir(parents=True, exist_ok=True)
    rows = [("distilled", 0, 170, 70, 1.5, 130, 20), ("distilled", 1, 150, 50, 2.5, 120, 10),
            ("scratch", 0, 1150, 1010, 13.0, 1130, 950)]
    (out / "omitted3.csv").write_text("\n".join([",".join(omitted.COLUMNS)] + [",".join(map(str, r)) for r in rows])
                                      + "\n")
    assert hinton.main(["--results", str(results)]) == 0
    md = (out / "table.md").read_text()
    section = md[md.index("## hinton_omitted3: the omitted 3"):]
    assert "| distilled (mean of 2 seeds)   | 160.0 ± 14.1 | 60.0 ± 14.1" in section
    assert "| distilled, Hinton et al. 2015 | 206" in section and "| distilled s1 | 150" in section


def test_teacher_kept_is_paired_by_seed_with_a_t_interval(results):
    """Issue 29 part 3: per seed (scratch_s - distilled_s) / (scratch_s - teacher_s), in errors and in NLL, mean
    and 95 % t-interval over seeds, against a hand computation."""
    from kdbench.report.stats import t_quantile

    study = hinton.collect(results / "runs" / "hinton_mnist")
    err = lambda a: round((1 - a) * N_TEST)  # noqa: E731
    per = [(err(SCRATCH_ACC[s]) - err(KD_ACC[s])) / (err(SCRATCH_ACC[s]) - err(TEACHER_ACC[s])) for s in SEEDS]
    m, sd = statistics.mean(per), statistics.stdev(per)
    half = t_quantile(len(per) - 1) * sd / math.sqrt(len(per))
    got = hinton.teacher_kept(study)
    assert got["errors"] == pytest.approx((m, m - half, m + half, 3))
    assert got["nll"][0] == pytest.approx(0.0)  # every student's NLL is 0.05 in the fixture: nothing kept
    assert f"| {100 * m:.0f} % [{100 * (m - half):.0f}, {100 * (m + half):.0f}] |" in hinton.render_kept(
        [("short", study)])
