"""End-to-end runs through the real pieces: Hydra config, torchvision/sklearn data, Lightning, W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdbench.errors import KDBenchError
from kdbench.records import read_record
from tests.conftest import FAST, REPO, SHARED_DATA, have_mnist


def _records(results: Path) -> list[dict]:
    return [read_record(p) for p in sorted((results / "runs").rglob("*.json"))]


def test_digits_kd_run_writes_record_and_wandb_and_reuses_teacher(compose, tmp_path):
    from kdbench.train import run

    cfg = compose(*FAST, "logger=wandb", "experiment_name=e2e")
    rec = run(cfg)
    assert rec["status"] == "complete"
    last, best = rec["metrics"]["last"], rec["metrics"]["best"]
    for k in ("acc", "ece", "mce", "nll", "brier", "agreement", "kl_teacher"):
        assert k in last["test"] and k in best["test"]
    assert last["epoch"] == 1 and len(rec["history"]) == 2
    assert best["val"]["acc"] == max(h["val_acc"] for h in rec["history"])
    assert rec["teacher"]["test"]["acc"] > 0.5 and 0 <= last["test"]["agreement"] <= 1
    assert rec["wandb_dir"] and Path(rec["wandb_dir"]).exists()
    on_disk = read_record(Path(rec["record_path"]))
    assert on_disk["status"] == "complete" and on_disk["run_id"] == rec["run_id"]
    assert on_disk["config"]["distill"]["alpha"] == 0.5 and on_disk["versions"]["torch"] == torch.__version__
    teacher_dir = Path(rec["teacher"]["path"])
    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns

    # a second run (another seed) reuses the registered teacher untouched
    rec2 = run(compose(*FAST, "logger=wandb", "experiment_name=e2e", "seed=1"))
    assert rec2["teacher"]["key"] == rec["teacher"]["key"] and rec2["run_id"] != rec["run_id"]
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "results" / "teachers").glob("*/meta.json"))) == 1

    # the same command again is recognised as complete and skipped (same run id, record untouched)
    rec3 = run(compose(*FAST, "logger=wandb", "experiment_name=e2e"))
    assert rec3["run_id"] == rec["run_id"] and rec3["finished_at"] == on_disk["finished_at"]

    # the registry stores the weights its metrics describe: re-measured in the run, the teacher's test
    # accuracy equals the registered one exactly (on CPU), and no drift is reported
    assert rec["teacher"]["registry_test"]["acc"] == rec["teacher"]["test"]["acc"] and "drift" not in rec["teacher"]
    # an entry whose metrics do not describe its weights is flagged in the record
    meta_path = teacher_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["test"]["acc"] = rec["teacher"]["test"]["acc"] - 0.05
    meta_path.write_text(json.dumps(meta))
    rec4 = run(compose(*FAST, "logger=none", "experiment_name=e2e", "seed=2"))
    assert rec4["teacher"]["test"]["acc"] == rec["teacher"]["test"]["acc"]
    assert "differs from the registry's" in rec4["teacher"]["drift"]


def test_teacher_drift_threshold():
    from kdbench.teachers import drift as teacher_drift

    # 11 of 10,000 test images (the stale best-val-weights entry that motivated the check)
    msg = teacher_drift({"acc": 0.9902}, {"acc": 0.9891}, 10_000)
    assert msg is not None and "by 11 of 10000 test images" in msg and "99.02%" in msg and "98.91%" in msg
    assert teacher_drift({"acc": 0.9902}, {"acc": 0.9892}, 10_000) is None  # 10 = 0.1% of 10,000: not more
    assert teacher_drift({"acc": 0.95}, {"acc": 0.93}, 100) is None  # 2 images: below the 3-image floor
    assert teacher_drift({"acc": 0.95}, {"acc": 0.92}, 100) is not None
    assert teacher_drift(None, {"acc": 0.9}, 100) is None and teacher_drift({"acc": 0.9}, {}, 100) is None


def test_scratch_run_has_no_teacher_pass(compose):
    from kdbench.train import run

    rec = run(compose(*FAST, "distill=none"))
    assert rec["variant"] == "scratch" and rec["teacher"] is None
    assert "agreement" not in rec["metrics"]["last"]["test"]
    assert not (Path(compose().paths.results_dir) / "teachers").exists()


def test_synthetic_oracle_teacher(compose):
    from kdbench.train import run

    rec = run(compose("dataset=synthetic", "teacher=oracle", "student=linear", "trainer.max_epochs=3",
                      "dataset.noise=0.0", "distill.alpha=0.0", "distill.tau=1.0", "optim.lr=0.2"))
    assert rec["teacher"]["test"]["acc"] == pytest.approx(1.0)
    assert rec["metrics"]["last"]["test"]["acc"] > 0.85


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _fit_with_teacher(compose, *overrides):
    """Run a short distillation with a BatchNorm teacher, return (teacher before, teacher after, record)."""
    from kdbench.distill import DistillModule
    from kdbench.train import run

    seen: dict = {}
    orig = DistillModule.training_step

    def spy(self, batch, batch_idx):
        teacher = getattr(self.signal, "teacher", None)
        first = "before" not in seen and teacher is not None
        if first:
            seen["before"] = _snapshot(teacher)
        out = orig(self, batch, batch_idx)
        if first:  # the mode the teacher ran in for this batch (Lightning has called .train() by now)
            seen["teacher_training"] = teacher.training
            seen["is_submodule"] = any(m is teacher for m in self.modules())
        return out

    DistillModule.training_step = spy
    try:
        cfg = compose("teacher=mnist_cnn", "teacher.kwargs.width=8", "trainer.max_epochs=1",
                      "teacher.recipe.epochs=1", *overrides)
        captured = {}
        orig_fit = __import__("kdbench.engine", fromlist=["fit_and_test"]).fit_and_test

        def fit_spy(module, *a, **k):
            res = orig_fit(module, *a, **k)
            if getattr(module.signal, "teacher", None) is not None:
                captured["after"] = _snapshot(module.signal.teacher)
            return res

        import kdbench.engine as engine

        engine.fit_and_test = fit_spy
        try:
            rec = run(cfg)
        finally:
            engine.fit_and_test = orig_fit
    finally:
        DistillModule.training_step = orig
    return seen, captured["after"], rec


def test_teacher_stays_frozen_with_batchnorm(compose):
    seen, after, rec = _fit_with_teacher(compose)
    assert seen["teacher_training"] is False  # Lightning's .train() did not flip the teacher
    assert seen["is_submodule"] is False  # the teacher is the signal's, not the student module's
    before = seen["before"]
    assert any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), f"teacher {k} changed during student training"
    assert rec["status"] == "complete"


def test_teacher_train_mode_ablation_moves_batchnorm_stats_only(compose):
    seen, after, _ = _fit_with_teacher(compose, "distill=kd_teacher_train")
    before = seen["before"]
    assert seen["teacher_training"] is True
    assert any(not torch.equal(before[k], after[k]) for k in before if "running" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight") or k.endswith("bias"))


def test_teacher_grad_ablation_trains_the_teacher(compose):
    seen, after, _ = _fit_with_teacher(compose, "distill=kd_teacher_grad")
    before = seen["before"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


@pytest.mark.parametrize("override, key", [
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.tau=0", "distill.tau"),
    ("distill.kl=sideways", "distill.kl"),
    ("student.arch=resnet9000", "student.arch"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("dataset.batch_size=0", "dataset.batch_size"),
    ("student.num_classes=7", "student.num_classes"),
    ("teacher.train_if_missing=false", "teacher.train_if_missing"),
])
def test_bad_input_rejected_before_any_record(compose, tmp_path, override, key):
    from kdbench.train import run

    with pytest.raises(KDBenchError) as e:
        run(compose(*FAST, override))
    assert e.value.key == key and "\n" not in str(e.value)
    assert not (tmp_path / "results" / "runs").exists()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "kdbench.train", f"paths.results_dir={tmp_path / 'r'}", "logger=none",
           "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    err = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("kdbench: error:")]
    assert len(err) == 1 and "dataset.root" in err[0] and "train-images-idx3-ubyte" in err[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "runs").exists()


@pytest.mark.skipif(not have_mnist(), reason="needs ../shared/data/MNIST")
def test_mnist_run_on_a_slice(compose):
    from kdbench.train import run

    rec = run(compose("dataset=mnist", f"dataset.root={SHARED_DATA}", "dataset.train_subset=3000",
                      "dataset.test_subset=1000", "dataset.val_size=500", "trainer.max_epochs=2",
                      "teacher.recipe.epochs=2"))
    assert rec["dataset"] == "mnist" and rec["metrics"]["last"]["test"]["acc"] > 0.8
    assert json.dumps(rec)  # serialisable as written


def test_bf16_autocast_path_runs_with_float32_loss(compose):
    """The GPU precision policy (bf16-mixed) exercised on CPU: logits in bf16, the loss in float32."""
    from kdbench.distill import DistillModule
    from kdbench.train import run

    dtypes = []
    orig = DistillModule.training_step

    def spy(self, batch, batch_idx):
        loss = orig(self, batch, batch_idx)
        dtypes.append((self.student(batch[0]).dtype, loss.dtype))
        return loss

    DistillModule.training_step = spy
    try:
        rec = run(compose("trainer.max_epochs=1", "teacher.recipe.epochs=1", "trainer.precision=bf16-mixed"))
    finally:
        DistillModule.training_step = orig
    assert rec["status"] == "complete"
    assert (torch.bfloat16, torch.float32) in dtypes


def test_fit_returns_the_final_weights_after_testing_the_best_checkpoint(tmp_path):
    """Testing the best-epoch checkpoint must not leave its weights in the model (the teacher registry
    stores the model it gets back, next to the *last*-epoch metrics)."""
    from kdbench.data import load_dataset, split_train_val
    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, fit_and_test
    from kdbench.models import build_model
    from kdbench.teachers import evaluate_on_test

    torch.manual_seed(0)
    data = split_train_val(load_dataset({"name": "digits"}), 0.15)
    model = build_model("mlp", 10, data.input_shape, hidden=[64])
    module = DistillModule(model, 10, OptimSpec(lr=1.5, momentum=0.9), SchedSpec(name="none"))
    res = fit_and_test(module, data, FitSpec(max_epochs=6, batch_size=64, progress=False), ckpt_dir=tmp_path / "c")
    assert res.best["epoch"] != res.last["epoch"], "precondition: this recipe must peak before its last epoch"
    assert evaluate_on_test(model, {"name": "digits"})["acc"] == pytest.approx(res.last["test"]["acc"], abs=1e-6)
