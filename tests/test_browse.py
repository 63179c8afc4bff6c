"""The results browser (issue 24 #14): ``kdbench runs``, ``kdbench runs show``, ``kdbench compare``.

Records are real run records (a config composed by Hydra and resolved, written by ``write_record``) with
chosen metrics, so the expected numbers are known; nothing is trained.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kdbench.browse import WIDTH


def _conf(*overrides: str) -> dict:
    from kdbench.config import compose_job, resolve

    return resolve(compose_job(list(overrides)))


def _record(runs: Path, experiment: str, variant: str, seed: int, acc: float | None, *, status: str = "complete",
            overrides: tuple[str, ...] = (), conf: dict | None = None, age_s: float = 60.0, run_id: str | None = None,
            checkpoints: Path | None = None) -> dict:
    from kdbench.records import write_record

    conf = dict(conf or _conf(*overrides))
    if checkpoints is not None:
        conf["paths"] = {**conf["paths"], "checkpoints_dir": str(checkpoints)}
    rid = run_id or f"{variant}-s{seed}-{abs(hash((experiment, variant, seed, acc))) % 10**10:010d}"
    when = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat(timespec="seconds")
    metrics = {} if acc is None else {
        w: {"epoch": 4, "val": {"acc": acc - 0.01, "nll": 0.3}, "test": {"acc": acc, "ece": 0.02, "nll": 0.25}}
        for w in ("last", "best")}
    rec = {"run_id": rid, "experiment": experiment, "variant": variant, "seed": seed, "status": status,
           "error": "RuntimeError: boom" if status == "failed" else None, "config": conf,
           "overrides": list(overrides), "dataset": "digits", "teacher_arch": None if variant == "scratch" else "mlp",
           "student_arch": "mlp", "distill": conf["distill"], "metrics": metrics,
           "teacher": None if variant == "scratch" else {"name": "digits-mlp-s0-x", "arch": "mlp", "test": {"acc": 0.95}},
           "started_at": when, "finished_at": None if status == "running" else when}
    write_record(runs / experiment / f"{rid}.json", rec)
    return rec


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def base_conf() -> dict:
    return _conf()


def test_runs_lists_every_record_and_a_running_jobs_epoch_and_eta(tmp_path, base_conf, capsys):
    from kdbench.cli import main

    runs, ck = tmp_path / "runs", tmp_path / "checkpoints"
    done = _record(runs, "study", "kd", 0, 0.9731, conf=base_conf, age_s=7200)
    _record(runs, "study", "scratch", 1, None, status="failed", conf=base_conf)
    live = _record(runs, "other", "dkd", 2, None, status="running", conf=base_conf, checkpoints=ck)
    (ck / "other" / live["run_id"]).mkdir(parents=True)
    (ck / "other" / live["run_id"] / "progress.json").write_text(json.dumps(
        {"epoch": 3, "epochs": 20, "s_per_epoch": 6.0, "eta_s": 102.0, "updated": time.time()}))
    (runs / "study" / "broken.json").write_text("{not json")
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= WIDTH
    row = next(ln for ln in _lines(out) if done["run_id"] in ln)
    assert row.split()[:5] == ["study", "kd", "0", "complete", "97.31"] and " 2h " in row
    running = next(ln for ln in _lines(out) if live["run_id"] in ln)
    eta = re.search(r"epoch 3/20, ETA (\d+\.\d) min", running)
    assert "running" in running and eta and 1.0 <= float(eta[1]) <= 1.7, running  # 102 s, less the time since
    assert "3 runs" in out and "unreadable:" in out and "broken.json" in out

    assert main(["runs", "--runs-dir", str(runs), "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert "1 runs" in out and "failed" in out and done["run_id"] not in out
    assert main(["runs", "--runs-dir", str(runs), "--experiment", "other"]) == 0
    out = capsys.readouterr().out
    assert live["run_id"] in out and done["run_id"] not in out
    assert main(["runs", "--runs-dir", str(runs), "--status", "finished"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("kdbench: error: --status: unknown status 'finished'; allowed: running, complete, failed, "
                   "diverged, interrupted, debug")


def test_a_running_record_without_progress_for_long_is_marked_stalled_and_hostile_ids_read_nothing(tmp_path, base_conf):
    from kdbench.browse import progress, run_rows

    runs, ck = tmp_path / "runs", tmp_path / "checkpoints"
    live = _record(runs, "e", "kd", 0, None, status="running", conf=base_conf, checkpoints=ck)
    (ck / "e" / live["run_id"]).mkdir(parents=True)
    (ck / "e" / live["run_id"] / "progress.json").write_text(json.dumps(
        {"epoch": 5, "epochs": 20, "s_per_epoch": 2.0, "eta_s": 30.0, "updated": time.time() - 3600}))
    (row,), _ = run_rows(runs)
    assert row["status"] == "running?" and "no progress for 60 min" in row["top-1 (%)"]
    # a record's run id that would climb out of the checkpoints folder is never used as a path
    (tmp_path / "progress.json").write_text(json.dumps({"epoch": 1, "epochs": 2, "s_per_epoch": 1, "eta_s": 1,
                                                        "updated": time.time()}))
    hostile = {**live, "experiment": "e", "run_id": "../.."}
    assert progress(hostile, runs) is None


def test_runs_show_diffs_the_config_against_its_experiments_defaults(tmp_path, capsys):
    from kdbench.cli import main

    runs = tmp_path / "runs"
    ov = ("experiment=quickstart", "distill.tau=2", "distill.kl=reverse", "seed=1")
    rec = _record(runs, "quickstart", "kd", 1, 0.9512, overrides=ov)
    capsys.readouterr()
    assert main(["runs", "show", rec["run_id"][:12], "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= WIDTH
    assert out.startswith(f"quickstart/{rec['run_id']}: complete")
    assert "against its experiment's defaults (experiment=quickstart)" in out
    table = _lines(out.split("defaults (experiment=quickstart)")[1].split("metrics (")[0])
    diff = {ln.split()[0]: ln.split()[1:] for ln in table[2:]}
    # what the run changed (data_seed follows seed), and nothing else: not its paths, not the keys it shares
    assert diff == {"distill.tau": ["4.0", "2"], "distill.kl": ["forward", "reverse"], "seed": ["0", "1"],
                    "data_seed": ["0", "1"]}
    acc = next(ln for ln in _lines(out) if ln.split()[0] == "acc")
    assert acc.split()[-4:] == ["94.12", "95.12", "94.12", "95.12"]
    assert f"record:{runs / 'quickstart' / (rec['run_id'] + '.json')}" in "".join(out.split())  # a long path folds


def test_runs_show_refuses_an_unknown_or_ambiguous_id_in_one_line(tmp_path, base_conf, capsys):
    from kdbench.cli import main

    runs = tmp_path / "runs"
    _record(runs, "e", "kd", 0, 0.9, conf=base_conf, run_id="kd-s0-aaaa111111")
    _record(runs, "e", "kd", 1, 0.9, conf=base_conf, run_id="kd-s1-aaaa222222")
    capsys.readouterr()
    assert main(["runs", "show", "kd-s", "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kdbench: error: RUN_ID: 'kd-s' matches 2 runs (kd-s0-aaaa111111, kd-s1-aaaa222222): give more of the id"
    assert main(["runs", "show", "nope", "--runs-dir", str(runs)]) == 2
    assert "no run record with id 'nope'" in capsys.readouterr().err


def _t_interval(d: list[float]) -> tuple[float, float]:
    from scipy import stats

    m, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))
    return stats.t.interval(0.95, len(d) - 1, loc=m, scale=se)


def test_compare_shows_two_experiments_side_by_side_with_the_paired_interval_of_each_difference(tmp_path, base_conf, capsys):
    from kdbench.cli import main

    runs = tmp_path / "runs"
    kd_conf = base_conf
    sc_conf = _conf("distill=none")
    acc = {"A": {"kd": [0.950, 0.956, 0.949], "scratch": [0.940, 0.942, 0.939]},
           "B": {"kd": [0.961, 0.960, 0.966], "scratch": [0.941, 0.944, 0.938]}}
    for exp in ("A", "B"):
        for variant, vals in acc[exp].items():
            for seed, a in enumerate(vals):
                _record(runs, f"exp{exp}", variant, seed, a, conf=sc_conf if variant == "scratch" else kd_conf)
    _record(runs, "expB", "dkd", 0, 0.97, conf=_conf("distill=dkd"))
    capsys.readouterr()
    assert main(["compare", "expA", "expB", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= WIDTH
    lines = _lines(out)
    i = next(j for j, ln in enumerate(lines) if ln.split()[:2] == ["kd", "A"])
    d = [100 * (b - a) for a, b in zip(acc["A"]["kd"], acc["B"]["kd"])]
    lo, hi = _t_interval(d)
    assert lines[i + 1].split()[0] == "B"
    assert lines[i + 1].rstrip().endswith(f"{statistics.fmean(d):+.2f} [{lo:+.2f}, {hi:+.2f}]"), lines[i + 1]
    d_sc = [100 * (k - s) for k, s in zip(acc["A"]["kd"], acc["A"]["scratch"])]
    lo, hi = _t_interval(d_sc)
    assert f"{statistics.fmean(d_sc):+.2f} [{lo:+.2f}, {hi:+.2f}]" in lines[i]
    assert "95.17 ± 0.38" in lines[i] and "96.23 ± 0.32" in lines[i + 1]
    teacher = next(ln for ln in lines if ln.split()[:1] == ["teacher"])
    assert "95.00" in teacher
    assert "dkd: only in expB" in out
    assert main(["compare", "expA", "nope", "--runs-dir", str(runs)]) == 2
    assert "no run records for experiment 'nope'" in capsys.readouterr().err


def test_runs_reads_the_configs_runs_folder_by_default(tmp_path, base_conf, capsys, monkeypatch):
    from kdbench.cli import main

    monkeypatch.chdir(tmp_path)  # paths.results_dir is `results`, relative to where kdbench runs
    rec = _record(tmp_path / "results" / "runs", "e", "kd", 0, 0.9, conf=base_conf)
    capsys.readouterr()
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert rec["run_id"] in out and f"1 runs under {tmp_path / 'results' / 'runs'}" in "".join(out.split("\n"))
