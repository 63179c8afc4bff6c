"""Every feature method on a zoo pair: two epochs on a CIFAR-10 (JPEG copy) slice (slow: ~2 min on 2 cores)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.models import build_model
from tests.conftest import SHARED_DATA

ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
SLICE = ("dataset.train_subset=256", "dataset.test_subset=128", "trainer.max_epochs=2", "logger=none")
METHODS = ("at", "nst", "sp", "rkd", "pkt", "fitnet", "vid", "ofd", "crd", "reviewkd")


@pytest.fixture(scope="module")
def teacher_entry(tmp_path_factory):
    """A resnet20 teacher in the published checkpoint format, imported once (its weights: seed 0's init)."""
    from kdbench.cli import main as cli

    if not ARCHIVE.exists():
        pytest.skip(f"no {ARCHIVE} (../shared/data)")
    tmp = tmp_path_factory.mktemp("cifar_teacher")
    torch.manual_seed(0)
    torch.save({"model": build_model("resnet20", 10).state_dict(), "epoch": 240}, tmp / "ckpt_epoch_240.pth")
    teachers = tmp / "teachers"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(["teacher", "import", str(tmp / "ckpt_epoch_240.pth"), "--arch", "resnet20", "--dataset",
                  "cifar10_jpeg", "--root", str(ARCHIVE), "--test-subset", "128", "--teachers-dir", str(teachers)])
    assert rc == 0, out.getvalue()
    return teachers, out.getvalue().split("teacher.checkpoint=")[1].split()[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_feature_method_trains_on_a_cifar_jpeg_slice_with_a_zoo_pair(compose, teacher_entry, method):
    from kdbench.train import run

    teachers, entry = teacher_entry
    rec = run(compose("experiment=cifar10_jpeg_smoke", *SLICE, "teacher.arch=resnet20", f"teacher.checkpoint={entry}",
                      f"paths.teachers_dir={teachers}", "student.arch=resnet8", f"distill={method}"))
    assert rec["status"] == "complete" and len(rec["history"]) == 2
    assert all(math.isfinite(h["train_loss"]) for h in rec["history"])
    assert rec["params"]["student"] == sum(p.numel() for p in build_model("resnet8", 10).parameters())
