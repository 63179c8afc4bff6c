"""Sweeps through real Hydra launchers (joblib, submitit_local, basic) and the tables they produce."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from kdbench.records import iter_records

TINY = ["experiment=quickstart", "trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=none"]


def _sweep(tmp_path, monkeypatch, *args):
    from kdbench.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    rc = run_sweep([*TINY, f"paths.results_dir={results}", f"paths.data_dir={tmp_path / 'data'}", *args])
    return rc, results


def _check_table_matches_records(results, experiment="quickstart"):
    recs = [r for _, r in iter_records(results / "runs" / experiment) if r["status"] == "complete"]
    table = pd.read_csv(results / experiment / "table.csv")
    assert (results / experiment / "table.md").exists() and (results / experiment / "table.tex").exists()
    for variant in {r["variant"] for r in recs}:
        accs = [r["metrics"]["last"]["test"]["acc"] for r in recs if r["variant"] == variant]
        eces = [r["metrics"]["last"]["test"]["ece"] for r in recs if r["variant"] == variant]
        row = table[table["variant"] == variant].iloc[0]
        assert row["n"] == len(accs)
        assert row["last_test_acc_mean"] == pytest.approx(statistics.mean(accs), abs=1e-9)
        assert row["last_test_ece_mean"] == pytest.approx(statistics.mean(eces), abs=1e-9)
        if len(accs) > 1:
            assert row["last_test_acc_std"] == pytest.approx(statistics.stdev(accs), abs=1e-9)
    return recs


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"],
                 marks=pytest.mark.slow),  # a process per job through submitit: `make test-slow`
])
def test_2x2_grid_through_launcher_matches_table(tmp_path, monkeypatch, launcher):
    rc, results = _sweep(tmp_path, monkeypatch, "distill=kd,none", "seed=0,1", *launcher)
    assert rc == 0
    recs = _check_table_matches_records(results)
    assert sorted((r["variant"], r["seed"]) for r in recs) == [("kd", 0), ("kd", 1), ("scratch", 0), ("scratch", 1)]
    # both kd jobs needed the same teacher: trained once, even with parallel jobs
    assert len(list((results / "teachers").glob("*/meta.json"))) == 1
    assert len({r["teacher"]["key"] for r in recs if r["teacher"]}) == 1
    # job output dirs never collide
    job_dirs = [p for p in (tmp_path / "multirun").rglob(".hydra")]
    assert len(job_dirs) == len({p.parent for p in job_dirs})


def test_failing_job_does_not_sink_the_sweep(tmp_path, monkeypatch, capsys):
    # the 1e30 learning rate makes one job diverge after its record exists; the other must finish
    rc, results = _sweep(tmp_path, monkeypatch, "distill=none", "seed=0", "optim.lr=0.05,1e30")
    out = capsys.readouterr().out
    assert rc != 0
    statuses = sorted(r["status"] for _, r in iter_records(results / "runs" / "quickstart"))
    assert statuses == ["complete", "diverged"]
    assert "1 complete, 1 failed" in out and "FAILED" in out
    table_md = (results / "quickstart" / "table.md").read_text()
    assert "Failed runs" in table_md and "diverged" in table_md

    # re-running the sweep skips the complete job and re-runs only the failed one
    rc2, _ = _sweep(tmp_path, monkeypatch, "distill=none", "seed=0", "optim.lr=0.05,1e30")
    assert rc2 != 0
    assert "1 already complete, skipped" in capsys.readouterr().out


def test_bad_grid_rejected_before_work(tmp_path, monkeypatch, capsys):
    rc, results = _sweep(tmp_path, monkeypatch, "distill=kd,none", "distill.alpha=0.5,2.0")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distill.alpha" in err[0] and "[0, 1]" in err[0]
    assert not (results / "runs").exists()


def test_progress_ignores_a_stale_record_until_the_job_rewrites_it(tmp_path, capsys):
    """force=true (or a failed job's re-run) starts with the previous attempt's record in place:
    that record is not progress; the line comes when the job writes its new record."""
    import os

    from kdbench.records import write_record
    from kdbench.sweep import _mtime, _progress

    path = tmp_path / "kd-s0-abc.json"
    jobs = [{"run_id": "kd-s0-abc", "record": path}]
    write_record(path, {"run_id": "kd-s0-abc", "variant": "kd", "seed": 0, "status": "complete",
                        "metrics": {"last": {"test": {"acc": 0.5}}}})
    stale = {"kd-s0-abc": _mtime(path)}
    seen: dict = {}
    _progress(jobs, seen, 0.0, 1, stale)
    assert capsys.readouterr().out == "" and seen == {}
    write_record(path, {"run_id": "kd-s0-abc", "variant": "kd", "seed": 0, "status": "complete",
                        "metrics": {"last": {"test": {"acc": 0.75}}}})
    os.utime(path, ns=(stale["kd-s0-abc"] + 10**9,) * 2)
    _progress(jobs, seen, 0.0, 1, stale)
    out = capsys.readouterr().out
    assert "[  1/1] complete kd seed 0  test acc 75.00%" in out and seen == {"kd-s0-abc": "complete"}
