"""What a W&B dashboard user sees (issue 24 point 12): run names that tell runs of a group apart, tags to
filter by, one meaning per summary and history key, and deterministic ids and names for the teacher's and the
report's runs. Real W&B in offline mode, read back from its run files."""

from __future__ import annotations

import json
from pathlib import Path


def offline_run(folder: Path) -> dict:
    """An offline W&B run folder as {id, name, tags, job_type, config, summary, history (list of key sets)}."""
    from tests.test_interrupts import wandb_records

    out: dict = {"summary": {}, "history": [], "config": {}, "artifacts": []}
    for r in wandb_records(next(folder.glob("run-*.wandb"))):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, name=r.run.display_name, tags=list(r.run.tags), job_type=r.run.job_type)
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: u.value_json for u in r.summary.update})
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key for i in r.history.item})
        elif kind == "artifact":
            out["artifacts"].append(r.artifact.name)
    return out


def test_run_names_leave_out_what_every_run_of_a_group_shares():
    from kdbench.tracking import run_name

    # the two names: experiment_name, max_epochs, fuse and a capture's path tell no two runs apart
    assert run_name("kd", 7, ["experiment_name=fusetest", "trainer.max_epochs=1", "fuse=2", "seed=7"]) == "kd s7"
    assert run_name("kd", 0, ["teacher_signal=captured", "teacher_capture.path=results/captures/digits-k3",
                              "trainer.max_epochs=2", "seed=0"]) == "kd teacher_signal=captured s0"
    grid = ["experiment=mnist_ablation", "distill=kd", "distill.tau=4", "+distill.topk_mode=tail", "seed=2",
            "paths.results_dir=/tmp/x", "trainer.progress=false", "pair=resnet56_resnet20", "teacher.recipe.epochs=3",
            "logger=wandb", "force=true", "hydra/launcher=joblib", "student.kwargs.hidden=[100]"]
    assert run_name("kd", 2, grid) == "kd tau=4 topk_mode=tail hidden=[100] s2"
    assert run_name("kd", 2, [o.replace("tau=4", "tau=1") for o in grid]) != run_name("kd", 2, grid)


def test_wandb_runs_say_one_thing_per_key_with_deterministic_teacher_and_report_runs(
        compose, tmp_path, teachers_dir, capfd):
    from kdbench.identity import wandb_id
    from kdbench.report import make_report
    from kdbench.train import run

    res = tmp_path / "results"
    rec = run(compose("trainer.max_epochs=2", "teacher.recipe.epochs=2", "logger=wandb", "logger.wandb.mode=offline",
                      "experiment_name=wb", f"paths.teachers_dir={teachers_dir}", results=res))
    make_report(res / "runs", "wb", wandb_log={"project": "kdbench", "entity": None, "mode": "offline"})
    assert "anonymous" not in "".join(capfd.readouterr())  # W&B's "anonymous setting has no effect" warning
    runs = {r["job_type"]: r for r in map(offline_run, sorted((res / "wandb").glob("offline-run-*")))}
    assert set(runs) == {"teacher", "distill", "report"}

    teacher = Path(rec["teacher"]["path"]).name  # the registry entry: digits-mlp-s0-<hash>
    t = runs["teacher"]
    assert t["id"] == wandb_id("teachers", teacher) and t["artifacts"] == [teacher]
    assert runs["report"]["id"] == wandb_id("report", "wb")

    s = runs["distill"]
    assert s["id"] == wandb_id("wb", rec["run_id"]) and s["config"]["teacher_artifact"] == f"{teacher}:latest"
    assert s["name"] == "kd s0"  # the overrides here set max_epochs, paths, experiment_name, logger: none shown
    assert {"kd", "digits", "signal:online", "method:kd", "teacher:mlp", "student:mlp"} <= set(s["tags"])
    summary = set(s["summary"])
    assert "epoch" not in summary and not any(k.startswith(("val/", "test/")) for k in summary)
    assert {"last/epoch", "best/epoch", "last/test/acc", "best/test/acc", "last/val/acc", "teacher/acc"} <= summary
    assert json.loads(s["summary"]["last/epoch"]) == rec["metrics"]["last"]["epoch"] == 1
    tests = [h for h in s["history"] if any("test/" in k for k in h)]
    assert len(tests) == 2 and not any(k.startswith("test/") for h in tests for k in h)
    assert "last/test/acc" in tests[0] and "best/test/acc" in tests[1] and "epoch" not in tests[0] | tests[1]
