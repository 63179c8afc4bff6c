"""How a sweep ends and what it says (issue 24 points 6 and 9, issue 23 point 9): `make run` names its teacher
and the next commands, `python -m kdbench.train -m` ends with the same summary as `make sweep`, progress lines
show each job's own time, and a sweep-wide key given several values is refused as such."""

from __future__ import annotations

import time

import pytest

from tests.conftest import train_main

TINY = ["trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=none"]


def test_a_sweep_wide_key_with_several_values_is_refused_as_such(tmp_path, monkeypatch, capsys):
    from kdbench.sweep import plan, run_sweep, same_run_keys

    monkeypatch.chdir(tmp_path)
    args = ["experiment=quickstart", "distill=kd", "seed=0", f"paths.results_dir={tmp_path / 'r'}", *TINY]
    assert run_sweep([*args, "fuse=1,4"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("kdbench-sweep: error: fuse: takes one value for the whole sweep") and "1,4" in err
    assert "do not read" not in err and not (tmp_path / "r" / "runs").exists()
    # points that are one run are named by the keys they differ in (scratch reads no tau)
    assert same_run_keys(plan(["experiment=quickstart", "distill=kd,none", "distill.tau=2,4", "seed=0"])) == [
        "distill.tau"]


def test_a_sweep_shows_each_distinct_warning_of_its_jobs_once():
    from kdbench.sweep import plan, sweep_warnings

    jobs = plan(["experiment=quickstart", "distill=dkd,none", "trainer.max_epochs=2", "seed=0,1"])
    (warm,) = sweep_warnings(jobs)  # both DKD jobs warn; scratch has no warm-up
    assert "distill.warmup_epochs=20" in warm and "trainer.max_epochs=2" in warm


def test_progress_lines_show_the_jobs_own_time(tmp_path, capsys):
    import json

    from kdbench.sweep import _progress

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"status": "complete", "variant": "kd", "seed": 0, "wall_time_s": 12.4,
                                "metrics": {"last": {"test": {"acc": 0.9}}}}))
    _progress([{"run_id": "a", "record": path}], {}, time.time() - 1000, 1)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.endswith("(12 s)") and "1000" not in line


@pytest.mark.slow  # two scratch runs through Hydra's -m
def test_hydra_multirun_ends_with_the_sweep_summary_under_the_experiment(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "r"
    args = ["-m", "experiment=quickstart", "distill=none", "seed=0,1", f"paths.results_dir={res}", *TINY,
            "trainer.progress=false"]
    # a sweep-wide key with several values: refused as make sweep does, in one line, before any job
    assert train_main([*args, "fuse=1,4"]) == 2
    assert "kdbench: error: fuse: takes one value for the whole sweep" in capfd.readouterr().err
    assert not (res / "runs").exists()
    assert train_main(args) == 0
    out = capfd.readouterr().out
    assert "sweep 'quickstart' finished" in out and "2 complete, 0 failed" in out
    assert any(ln.split()[:2] == ["scratch", "2"] for ln in out.splitlines())  # the table's row: n = 2
    assert f"tables and plots: {res / 'quickstart'}" in out
    assert sorted(p.name[:10] for p in (res / "runs" / "quickstart").glob("*.json")) == ["scratch-s0", "scratch-s1"]
    assert not (res / "runs" / "default").exists()


@pytest.mark.slow  # two quickstart sweeps (a teacher, two KD runs, their reports)
def test_make_run_says_how_the_teacher_came_and_what_to_try_next(tmp_path, monkeypatch, capsys):
    from kdbench.quickstart import main

    monkeypatch.chdir(tmp_path)
    res = tmp_path / "r"
    args = ["distill=kd", "seed=0", f"paths.results_dir={res}", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    (teacher,) = [ln for ln in out.splitlines() if ln.startswith("teacher ")]
    assert "trained by this sweep in about" in teacher and str(res / "teachers") in teacher
    assert f"next: open {res / 'quickstart' / 'index.html'}" in out and (res / "quickstart" / "index.html").exists()
    assert 'make sweep ARGS="experiment=quickstart seed=0,1,2,3,4"' in out
    assert main([*args[:-3], "trainer.max_epochs=2", *args[-2:]]) == 0  # another run, the same teacher
    (again,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("teacher ")]
    assert "reused from the registry" in again


def test_a_multirun_without_an_experiment_says_where_its_records_go(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdbench.config import CONF_DIR
    from kdbench.sweep import SweepSummary

    def started(*overrides: str) -> SweepSummary:
        """The callback started as Hydra's -m starts it: with the command line's (sweep) overrides."""
        from omegaconf import OmegaConf, open_dict

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", return_hydra_config=True)
        OmegaConf.set_readonly(cfg, False)
        with open_dict(cfg):
            cfg.hydra.overrides.task = [*overrides, f"paths.results_dir={tmp_path}"]
        cb = SweepSummary()
        cb.on_multirun_start(cfg)
        GlobalHydra.instance().clear()
        return cb

    cb = started("distill=kd,none", "seed=0")
    assert len(cb.jobs) == 2 and cb.skipped == []
    assert "records go under 'default'" in capsys.readouterr().out
    started("distill=kd,none", "seed=0", "experiment_name=mine")
    assert capsys.readouterr().out == ""
