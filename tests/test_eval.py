"""``kdbench eval``: fidelity to the run's teacher (issue 24 #15) and a checkpoint of another width (issue 23 #9)."""

from __future__ import annotations

import json

import pytest

FAST = ("trainer.max_epochs=2", "teacher.recipe.epochs=2", "logger=none")


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, teachers_dir):
    """One 2-epoch KD run on digits (its record, checkpoint and config overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdbench.config import CONF_DIR
    from kdbench.train import run

    res = tmp_path_factory.mktemp("eval") / "results"
    args = [f"paths.results_dir={res}", f"paths.teachers_dir={teachers_dir}", "trainer.progress=false", *FAST]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        rec = run(compose(config_name="train", overrides=args))
    GlobalHydra.instance().clear()
    ckpt = res / "checkpoints" / rec["experiment"] / rec["run_id"] / "best.ckpt"
    return rec, ckpt, args


def test_eval_reports_fidelity_to_the_runs_teacher_as_the_record_measured_it(kd_run, capsys):
    from kdbench.cli import main

    rec, ckpt, args = kd_run
    capsys.readouterr()
    assert main(["eval", f"ckpt={ckpt}", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    best = rec["metrics"]["best"]["test"]
    assert 0.0 < out["test"]["agreement"] <= 1.0 and out["test"]["kl_teacher"] > 0.0
    for k in ("acc", "agreement", "kl_teacher"):
        assert out["test"][k] == pytest.approx(best[k], rel=1e-5, abs=1e-6), k
    assert out["teacher"]["name"] == rec["teacher"]["name"]


def test_eval_of_a_scratch_run_claims_no_fidelity(kd_run, capsys):
    from kdbench.cli import main

    _, ckpt, args = kd_run
    capsys.readouterr()
    assert main(["eval", f"ckpt={ckpt}", *args, "distill=none"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "teacher" not in out and "agreement" not in out["test"] and "kl_teacher" not in out["test"]


def test_eval_without_the_teacher_says_fidelity_was_not_measured(kd_run, capsys, tmp_path):
    from kdbench.cli import main

    _, ckpt, args = kd_run
    capsys.readouterr()
    assert main(["eval", f"ckpt={ckpt}", *args, f"paths.teachers_dir={tmp_path / 'empty'}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "agreement" not in out["test"] and "fidelity not measured" in out["teacher"]["note"]


def test_eval_of_a_checkpoint_of_another_width_names_the_first_mismatched_tensor(kd_run, capsys):
    from kdbench.cli import main

    _, ckpt, args = kd_run
    capsys.readouterr()
    assert main(["eval", f"ckpt={ckpt}", *args, "student.kwargs.hidden=[48]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "load_state_dict" not in err
    assert err.startswith(f"kdbench: error: ckpt: {ckpt} does not fit student.arch=mlp")
    assert "tensor 'features.1.weight' is [32, 64] in the checkpoint, [48, 64] in the student" in err, err
    assert "its run's record: student.arch=mlp student.kwargs={\"hidden\":[32]}" in err


@pytest.mark.slow
def test_eval_measures_fidelity_to_the_teacher_a_teacher_grad_run_trained(kd_run, tmp_path, capsys):
    """distill.teacher_grad trains the teacher: fidelity is to the checkpoint's teacher, not the registry's."""
    from conftest import train_main

    from kdbench.cli import main

    _, _, args = kd_run
    res = tmp_path / "results"
    mine = [*args, f"paths.results_dir={res}", "distill=kd_teacher_grad"]
    assert train_main([*mine, f"hydra.run.dir={tmp_path / 'h'}"]) == 0
    (rec_path,) = (res / "runs" / "default").glob("*.json")
    rec = json.loads(rec_path.read_text())
    capsys.readouterr()
    assert main(["eval", f"ckpt={res / 'checkpoints' / 'default' / rec['run_id'] / 'best.ckpt'}", *mine]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "the checkpoint's trained teacher" in out["teacher"]["source"]
    for k in ("agreement", "kl_teacher"):
        assert out["test"][k] == pytest.approx(rec["metrics"]["best"]["test"][k], rel=1e-5, abs=1e-6), k
