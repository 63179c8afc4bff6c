"""Fused runs (kdbench.fused): K students per teacher pass give the numbers of K separate runs."""

from __future__ import annotations

import math

import pytest

from kdbench.errors import ConfigError
from tests.conftest import FAST

#: kd at two temperatures and a scratch student (no teacher signal), on digits with a dropout student
GROUP = (("distill=kd", "distill.tau=2"), ("distill=kd", "distill.tau=4"), ("distill=none",))
SMALL = (*FAST, "student.kwargs.hidden=[32]")


def _close(a, b, path="") -> None:
    """Equal structure; numbers equal to float tolerance (CPU, deterministic)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, sorted(set(a) ^ set(b)))
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


#: what a fused member's record may say differently from the separate run's: the group, the clock, the machine
#: and where its files went (the two runs below differ only in their experiment name, sep / fus)
VOLATILE = {"fused", "fused_with", "wall_time_s", "started_at", "finished_at", "host", "pid", "record_path",
            "wandb_dir"}


def _same_record(separate: dict, fused: dict) -> None:
    """The whole record, structurally (a field added later cannot drift silently), but VOLATILE."""
    import json

    def norm(rec):
        text = json.dumps({k: v for k, v in rec.items() if k not in VOLATILE})
        return json.loads(text.replace('"sep"', '"fus"').replace("/sep/", "/fus/"))

    _close(norm(separate), norm(fused))


def test_fused_group_equals_separate_runs_and_skips_when_complete(compose, tmp_path, monkeypatch):
    from kdbench.fused import run_group
    from kdbench.signals.online import OnlineSignal
    from kdbench.train import run

    calls = {"n": 0}
    real_call = OnlineSignal.__call__

    def counted(self, batch, split):  # counts the teacher's passes (the real signal runs)
        calls["n"] += 1
        return real_call(self, batch, split)

    monkeypatch.setattr(OnlineSignal, "__call__", counted)
    extra = ("+student.kwargs.dropout=0.2",)  # per-student dropout streams must match the separate runs'
    separate = []
    for g in GROUP:
        calls["n"] = 0
        separate.append(run(compose(*SMALL, *extra, *g, "experiment_name=sep", "logger=wandb")))
        if g[0] == "distill=kd":
            one_run = calls["n"]
    # the fused students log to W&B (offline): one W&B run each, beside one another in this process
    cfgs = [compose(*SMALL, *extra, *g, "experiment_name=fus", "logger=wandb") for g in GROUP]
    calls["n"] = 0
    fused = run_group(cfgs)
    assert calls["n"] == one_run > 0  # one teacher pass per batch for the whole group (train, val, test)
    ids = [r["run_id"] for r in separate]
    assert [r["run_id"] for r in fused] == ids  # the unfused run ids
    for s, f in zip(separate, fused, strict=True):
        assert f["status"] == "complete" and f["fused"] == 3
        assert sorted(f["fused_with"]) == sorted(r for r in ids if r != f["run_id"])
        assert len(f["history"]) == 2
        _close([{k: v for k, v in h.items()} for h in s["history"]], f["history"], "history")
        _close(s["metrics"], f["metrics"], "metrics")
        _close(s["reliability"], f["reliability"], "reliability")
        assert f["teacher_signal"] == s["teacher_signal"] and (f["teacher"] is None) == (s["teacher"] is None)
        if s["teacher"]:
            _close(s["teacher"]["test"], f["teacher"]["test"], "teacher")
        ck = tmp_path / "results" / "checkpoints" / "fus" / f["run_id"]
        assert (ck / "best.ckpt").is_file() and (ck / "progress.json").is_file()
        # the record's schema is the unfused one plus the two fused keys, and every other field is equal
        assert set(f) - set(s) == {"fused", "fused_with"}
        _same_record(s, f)
    dirs = {r["wandb_dir"] for r in fused}
    assert len(dirs) == 3 and None not in dirs
    assert len(list((tmp_path / "results" / "wandb").glob("offline-run-*-fus-*"))) == 3
    # the students really differ (kd tau 2 vs 4 vs scratch): equality above is not vacuous
    assert len({r["metrics"]["last"]["test"]["nll"] for r in fused}) == 3

    # interrupted (SIGTERM) after its first epoch, the group records `interrupted`; run again, it resumes
    # from the group's checkpoint and ends with the same numbers as the uninterrupted runs
    import os
    import signal

    import kdbench.fused as fz
    from kdbench.interrupts import RunInterrupted

    real_start = fz.FusedModule.on_train_epoch_start

    def stop_in_second(module):  # once the first epoch's checkpoint is written
        if module.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real_start(module)

    monkeypatch.setattr(fz.FusedModule, "on_train_epoch_start", stop_in_second)
    cfgs = [compose(*SMALL, *extra, *g, "experiment_name=res") for g in GROUP]
    with pytest.raises(RunInterrupted):
        run_group(cfgs)
    from kdbench.records import read_record

    stopped = [read_record(tmp_path / "results" / "runs" / "res" / f"{r}.json") for r in ids]
    assert all(r["status"] == "interrupted" and len(r["history"]) == 1 for r in stopped)
    monkeypatch.setattr(fz.FusedModule, "on_train_epoch_start", real_start)
    resumed = run_group([compose(*SMALL, *extra, *g, "experiment_name=res") for g in reversed(GROUP)])
    resumed = {r["run_id"]: r for r in resumed}
    for s in separate:
        r = resumed[s["run_id"]]
        assert r["status"] == "complete" and r["resumed_from"] and "fused-3-" in r["resumed_from"]
        _close(s["history"], r["history"], "resumed history")
        _close(s["metrics"], r["metrics"], "resumed metrics")

    # a re-run finds them complete and trains nothing
    again = run_group([compose(*SMALL, *extra, *g, "experiment_name=fus") for g in GROUP])
    assert [r["finished_at"] for r in again] == [r["finished_at"] for r in fused]

    # a second process that found the group unfinished, then waited on its locks while the first finished
    # it: completion is checked again under the locks, so the complete records are not re-opened
    from kdbench.lifecycle import Job

    real_complete, first_look = Job.complete, set()

    def stale_first_look(job):
        if job.run_id not in first_look:  # what it saw before the locks: still running
            first_look.add(job.run_id)
            return None
        return real_complete(job)

    monkeypatch.setattr(Job, "complete", stale_first_look)
    late = run_group([compose(*SMALL, *extra, *g, "experiment_name=fus") for g in GROUP])
    assert first_look == set(ids)
    assert [r["finished_at"] for r in late] == [r["finished_at"] for r in fused]
    assert [read_record(tmp_path / "results" / "runs" / "fus" / f"{r}.json")["finished_at"] for r in ids] == \
        [r["finished_at"] for r in fused]


@pytest.mark.parametrize(("override", "key"), [
    ("data_seed=7", "data_seed"),
    ("dataset.batch_size=32", "dataset.batch_size"),
    ("trainer.max_epochs=3", "trainer.max_epochs"),
    ("teacher.seed=3", "teacher.seed"),
])
def test_unfusable_group_is_refused_before_any_work(compose, tmp_path, override, key):
    from kdbench.fused import run_group

    cfgs = [compose(*SMALL, "distill=kd", "experiment_name=x"),
            compose(*SMALL, "distill=kd", "distill.tau=8", override, "experiment_name=x")]
    with pytest.raises(ConfigError) as e:
        run_group(cfgs)
    assert e.value.key == key and "\n" not in str(e.value)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))


def test_scratch_joins_any_teacher_and_fuse_key(compose):
    from kdbench.config import resolve
    from kdbench.fused import check_fusable

    # a scratch student reads no teacher: it may join a group whatever teacher the config names
    cfgs = [compose(*SMALL, "distill=kd"), compose(*SMALL, "distill=none", "teacher.seed=3")]
    check_fusable(cfgs, [resolve(c) for c in cfgs], ["a", "b"])
    from kdbench.train import run

    with pytest.raises(ConfigError) as e:
        run(compose(*SMALL, "fuse=2"))
    assert e.value.key == "fuse"
    from kdbench.config import validate

    with pytest.raises(ConfigError) as e:
        validate(compose(*SMALL, "fuse=0"))
    assert e.value.key == "fuse"


def test_sweep_fuse_runs_fusable_groups(tmp_path, monkeypatch, capsys):
    from kdbench.records import iter_records
    from kdbench.sweep import plan, run_sweep

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    args = ["experiment=quickstart", "trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=none",
            f"paths.results_dir={results}", f"paths.data_dir={tmp_path / 'data'}",
            "distill=kd,none", "distill.tau=2,4", "seed=0", "fuse=3"]
    assert run_sweep(args, report=False) == 0  # (the report is the unfused one: records are)
    out = capsys.readouterr().out
    recs = [r for _, r in iter_records(results / "runs" / "quickstart")]
    # 3 runs (scratch reads no tau), one group
    assert len(recs) == 3 and all(r["status"] == "complete" for r in recs), out
    assert [r["fused"] for r in recs] == [3, 3, 3]
    assert all(set(r["fused_with"]) == {s["run_id"] for s in recs} - {r["run_id"]} for r in recs)
    assert "3 complete" in out and out.count("] complete") == 3
    assert "fused (fuse=3): the 3 pending jobs train in 1 group(s) of 3 student(s)" in out  # it says it fused
    assert "they differ only in distill.tau" in out  # the scratch point that is one run, and why
    # run ids are the unfused ones: the same grid without fuse plans every job as complete
    assert all(j["record"].exists() for j in plan(args[:-1]))
    # and the same fused sweep again trains nothing (every job is skipped; no job fails on fuse=3)
    assert run_sweep(args, report=False) == 0
    assert "3 jobs (3 already complete, skipped)" in capsys.readouterr().out


def test_group_jobs_splits_by_stream_and_size():
    from kdbench.fused import group_jobs
    from kdbench.sweep import _fused_commands, plan

    jobs = plan(["experiment=quickstart", "distill=kd,none", "distill.tau=2,4", "seed=0,1", "fuse=2"])
    assert len(jobs) == 6
    groups = group_jobs(jobs, 2)
    # data_seed follows seed: the seeds never share a group; at most 2 per group
    assert sorted(len(g) for g in groups) == [1, 1, 2, 2]
    assert all(len({j["conf"]["seed"] for j in g}) == 1 for g in groups)
    cmds = _fused_commands(jobs, [], ["trainer.progress=false"])
    assert len(cmds) == 4 and cmds[0][1:3] == ["-m", "kdbench.fused"] and cmds[0].count("--") == 1
    assert _fused_commands(plan(["experiment=quickstart", "distill=kd", "seed=0"]), [], []) == []


def test_a_diverging_student_does_not_stop_its_group(compose, tmp_path):
    from kdbench.errors import DivergedError
    from kdbench.fused import run_group
    from kdbench.records import read_record

    cfgs = [compose(*SMALL, "distill=none", "experiment_name=div"),
            compose(*SMALL, "distill=none", "optim.lr=1e30", "experiment_name=div")]
    with pytest.raises(DivergedError):
        run_group(cfgs)
    recs = {r["config"]["optim"]["lr"]: r for r in
            (read_record(p) for p in (tmp_path / "results" / "runs" / "div").glob("*.json"))}
    assert recs[1e30]["status"] == "diverged" and recs[1e30]["diverged_step"] is not None
    assert recs[0.05]["status"] == "complete" and len(recs[0.05]["history"]) == 2


@pytest.mark.slow  # ~110 s on the 2-core CPU: inductor compiles 4 models for 3 batch shapes each
def test_compile_true_compiles_the_single_run_and_every_fused_member(compose, monkeypatch):
    """trainer.compile=true on CPU (inductor): the single run's student and each fused member's are compiled
    modules when they train, and their records say so (a fused job once recorded compile: true uncompiled)."""
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("inductor needs a C compiler on CPU, and this machine has none")
    from kdbench import lifecycle
    from kdbench.fused import run_group
    from kdbench.train import run

    seen: dict[str, bool] = {}
    real = lifecycle.finish

    def spy(job, res, n_test):  # the job's own module, as it was trained
        seen[job.run_id] = job.module.student._compiled_call_impl is not None
        real(job, res, n_test)

    monkeypatch.setattr(lifecycle, "finish", spy)
    tiny = ("trainer.max_epochs=1", "teacher.recipe.epochs=1", "trainer.compile=true", "debug=limit")
    single = run(compose(*tiny, "experiment_name=one"))
    group = run_group([compose(*tiny, "distill=kd", f"distill.tau={t}", "experiment_name=grp") for t in (2, 4)])
    recs = [single, *group]
    assert all(r["config"]["trainer"]["compile"] is True for r in recs)
    assert seen == {r["run_id"]: True for r in recs}
