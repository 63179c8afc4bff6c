"""W&B identity and names (issue 14 part 2): one kdbench run is one W&B run, named by what varies."""

from __future__ import annotations

import re


def test_wandb_ids_are_derived_from_the_run_and_valid():
    from kdbench.identity import wandb_id

    a, b = wandb_id("exp", "kd-s0-0123456789"), wandb_id("other", "kd-s0-0123456789")
    assert a == wandb_id("exp", "kd-s0-0123456789") and a != b  # stable; unique across experiments
    long = wandb_id("x" * 80, "kd-s0-0123456789")
    assert len(long) <= 64 and long != wandb_id("x" * 79 + "y", "kd-s0-0123456789")
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", w) for w in (a, b, long, wandb_id("a/b c", "kd.s0")))


def test_run_names_carry_what_the_command_line_varied():
    from kdbench.tracking import run_name

    ov = ["experiment=mnist_ablation", "distill=kd", "distill.tau=4", "distill.alpha=0.5", "seed=2",
          "paths.results_dir=/tmp/x", "trainer.progress=false", "pair=resnet56_resnet20"]
    assert run_name("kd", 2, ov) == "kd tau=4 alpha=0.5 s2"  # a pair is its own experiment (W&B group)
    assert run_name("kd", 2, [o.replace("tau=4", "tau=1") for o in ov]) != run_name("kd", 2, ov)
    assert run_name("scratch", 0, []) == "scratch s0"


def test_the_teacher_is_its_own_wandb_run_once_with_its_weights_as_an_artifact(compose, tmp_path):
    import json

    from kdbench.train import run

    res = tmp_path / "results"
    a = run(compose("trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=wandb", "logger.wandb.mode=offline",
                    results=res))
    b = run(compose("trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=wandb", "logger.wandb.mode=offline",
                    "seed=1", results=res))
    wdir = res / "wandb"
    (marker,) = (wdir / ".kdbench-teachers").glob("*.json")
    ref = json.loads(marker.read_text())["artifact"]
    runs = sorted(wdir.glob("offline-run-*"))
    assert len(runs) == 3  # one teacher run, logged once, and two student runs
    from tests.test_interrupts import wandb_records

    kinds = {}
    for r in runs:
        recs = wandb_records(next(r.glob("run-*.wandb")))
        job = [x.run.job_type for x in recs if x.WhichOneof("record_type") == "run"][0]
        kinds[job] = kinds.get(job, 0) + 1
        config = {u.key: json.loads(u.value_json) for x in recs if x.WhichOneof("record_type") == "run"
                  for u in x.run.config.update}
        if job == "distill":
            assert config["teacher_artifact"] == ref and config["kdbench_run_id"] in (a["run_id"], b["run_id"])
        else:
            assert any(x.WhichOneof("record_type") == "artifact" for x in recs)
    assert kinds == {"teacher": 1, "distill": 2}


def test_offline_wandb_needs_no_environment_after_the_teachers_run(compose, tmp_path, monkeypatch):
    """Without WANDB_MODE in the environment and without credentials, a run that trains its teacher
    (whose W&B run opens and closes first) still logs its own run offline: the config's mode reaches
    W&B's settings (a `make sweep` of hinton_mnist_long failed at the student's logger this way)."""
    from kdbench.train import run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no netrc/settings of this machine
    rec = run(compose("trainer.max_epochs=1", "teacher.recipe.epochs=1", "logger=wandb", "logger.wandb.mode=offline",
                      results=tmp_path / "results"))
    assert rec["status"] == "complete"
    assert len(list((tmp_path / "results" / "wandb").glob("offline-run-*"))) == 2  # the teacher's and the run's
