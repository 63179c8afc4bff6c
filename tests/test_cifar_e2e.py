"""CIFAR zoo end to end: import a teacher written in the published format, distil on a JPEG CIFAR-10 slice."""

from __future__ import annotations

import torch

from kdbench.cli import main as cli
from kdbench.models import build_model
from tests.conftest import SHARED_DATA

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
