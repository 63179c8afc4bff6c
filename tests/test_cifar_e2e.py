"""CIFAR zoo end to end: import a teacher written in the published format, distil on a JPEG CIFAR-10 slice."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.cli import main as cli
from kdbench.models import build_model
from tests.conftest import REPO, SHARED_DATA

ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
SLICE = ["dataset.train_subset=256", "dataset.test_subset=128"]


def _published_checkpoint(path, arch="resnet8", num_classes=10):
    torch.manual_seed(0)
    model = build_model(arch, num_classes)
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": torch.tensor(0.0)}, path)
    return model


def test_import_published_teacher_then_distil_on_jpeg_slice(tmp_path, compose, capsys):
    ckpt = tmp_path / "ckpt_epoch_240.pth"
    model = _published_checkpoint(ckpt)
    teachers = tmp_path / "results" / "teachers"
    rc = cli(["teacher", "import", str(ckpt), "--arch", "resnet8", "--dataset", "cifar10_jpeg",
              "--root", str(ARCHIVE), "--test-subset", "200", "--teachers-dir", str(teachers)])
    out = capsys.readouterr().out
    assert rc == 0, out
    entry_name = out.split("teacher.checkpoint=")[1].split()[0]
    entry = teachers / entry_name
    from kdbench.teachers import read_meta

    meta = read_meta(entry)
    assert meta["arch"] == "resnet8" and meta["num_classes"] == 10 and "acc" in meta["test"]
    # the stored weights are the published ones, bit for bit
    from safetensors.torch import load_file

    stored = load_file(str(entry / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(stored[k], v)

    from kdbench.train import run

    rec = run(compose("experiment=cifar10_jpeg_smoke", *SLICE, "trainer.max_epochs=1", "teacher.arch=resnet8",
                      f"teacher.checkpoint={entry_name}", "student.arch=resnet8", "logger=none"))
    assert rec["status"] == "complete" and rec["teacher"]["name"] == entry_name
    assert rec["dataset_info"].get("note", "").startswith("CIFAR-10 (JPEG q75 copy)")
    assert 0 <= rec["metrics"]["last"]["test"]["acc"] <= 1


def test_import_refuses_pickled_payload(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    bad = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, bad)
    rc = cli(["teacher", "import", str(bad), "--arch", "resnet8", "--dataset", "cifar10", "--no-eval",
              "--teachers-dir", str(tmp_path / "t")])
    captured = capsys.readouterr()
    assert rc == 2 and "payload ran" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:") and "pickle" in lines[0].lower()
    assert not (tmp_path / "t").exists()


def test_import_refuses_wrong_architecture(tmp_path, capsys):
    ckpt = tmp_path / "r8.pth"
    _published_checkpoint(ckpt, "resnet8")
    rc = cli(["teacher", "import", str(ckpt), "--arch", "resnet14", "--dataset", "cifar10", "--no-eval",
              "--teachers-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "resnet14" in err and "missing" in err


def test_import_takes_the_student_of_an_mdistiller_run_on_request(tmp_path, capsys):
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 10), build_model("resnet14", 10)
    run = {f"module.student.{k}": v for k, v in student.state_dict().items()}
    run.update({f"module.teacher.{k}": v for k, v in teacher.state_dict().items()})
    ckpt = tmp_path / "student_best.pth"
    torch.save({"model": run, "epoch": 240}, ckpt)
    base = ["teacher", "import", str(ckpt), "--arch", "resnet8", "--dataset", "cifar10", "--no-eval",
            "--teachers-dir", str(tmp_path / "t")]
    assert cli(base) == 2
    err = capsys.readouterr().err
    assert "--submodule student|teacher" in err and "--arch" not in err.split(":", 2)[1]
    assert cli([*base, "--submodule", "student"]) == 0
    out = capsys.readouterr().out
    assert "not evaluated: --no-eval" in out and "None" not in out
    assert f"paths.teachers_dir={tmp_path / 't'}" in out  # the hint works with a non-default registry
    from safetensors.torch import load_file

    (entry,) = (tmp_path / "t").glob("cifar10-resnet8-imported-*")
    stored = load_file(str(entry / "model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in student.state_dict().items())


def test_import_accepts_repdistillers_last_checkpoint_with_its_options_namespace(tmp_path, capsys):
    import argparse

    torch.manual_seed(0)
    model = build_model("resnet8", 10)
    ckpt = tmp_path / "resnet8_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet8", lr=0.05), "model": model.state_dict(), "epoch": 240}, ckpt)
    assert cli(["teacher", "import", str(ckpt), "--arch", "resnet8", "--dataset", "cifar10", "--no-eval",
                "--teachers-dir", str(tmp_path / "t")]) == 0, capsys.readouterr().err


def test_import_without_data_names_the_commands_own_option_once(tmp_path, capsys):
    ckpt = tmp_path / "r8.pth"
    _published_checkpoint(ckpt)
    assert cli(["teacher", "import", str(ckpt), "--arch", "resnet8", "--dataset", "cifar10", "--root",
                str(tmp_path / "nowhere"), "--teachers-dir", str(tmp_path / "t")]) == 0
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert text.count("not evaluated") == 1 and "--root" in text and "dataset.root" not in text


@pytest.mark.slow
def test_the_cifar10_methods_study_runs_end_to_end_at_a_tiny_budget_and_resumes(tmp_path, monkeypatch, capsys):
    """Issue 15 part 1 on CPU: `make study-cifar10`'s sweep (8 methods, cached teacher) at one epoch on a
    slice, with small models standing in for the pair's; a second invocation finds every run complete."""
    import pandas as pd

    from kdbench.sweep import run_sweep

    monkeypatch.chdir(REPO)  # the dataset root (../shared/data/...) is relative to the checkout
    results = tmp_path / "results"
    args = ["experiment=cifar10_methods", "pair=resnet56_resnet20", "teacher.arch=resnet8", "student.arch=resnet8",
            "dataset.train_subset=128", "dataset.test_subset=64", "dataset.augment=flip", "trainer.max_epochs=1",
            "teacher.recipe.epochs=1", "seed=0", "logger=none", f"paths.results_dir={results}",
            f"paths.data_dir={tmp_path / 'data'}", "trainer.progress=false"]
    assert run_sweep(args) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "8 jobs (0 already complete" in out
    exp = "cifar10_methods_resnet56_resnet20"
    table = pd.read_csv(results / exp / "table.csv")
    assert sorted(table["variant"]) == sorted(["kd", "dkd", "dist", "kd_ls", "reverse_kl", "no_tau2", "kl_mean",
                                               "scratch"])
    for col in ("last_test_acc_mean", "best_test_acc_mean", "last_test_ece_mean", "last_test_ece_ts_mean",
                "last_test_agreement_mean", "teacher_kept"):
        assert col in table.columns
    recs = [json.loads(p.read_text()) for p in (results / "runs" / exp).glob("*.json")]
    assert len(recs) == 8 and all(r["status"] == "complete" for r in recs)
    assert {r["teacher_signal"] for r in recs if r["variant"] != "scratch"} == {"cached"}
    assert len({r["teacher"]["key"] for r in recs if r["variant"] != "scratch"}) == 1  # one teacher, trained once
    assert run_sweep(args) == 0
    assert "8 jobs (8 already complete, skipped)" in capsys.readouterr().out
