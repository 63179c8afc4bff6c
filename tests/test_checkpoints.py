"""Safe teacher-checkpoint reading: published formats, refusal of pickled payloads, clear errors."""

from __future__ import annotations

import os
import shlex
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from kdbench.errors import TeacherError
from kdbench.models import build_model
from kdbench.models.checkpoints import check_state_dict, infer_num_classes, read_state_dict


class CustomPayload:
    """A harmless custom object: still refused, as unpickling it means importing and building code."""

    def __init__(self):
        self.note = "hello"


class Exploit:
    """Unpickling this would run a shell command creating ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def _perturbed(name: str, num_classes: int = 100, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1234)
    return model.eval()


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return _perturbed("resnet8x4")


def _published(model: nn.Module) -> dict:
    """The RepDistiller / mdistiller layout, with a real optimizer state as plain data."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return {"epoch": 240, "model": model.state_dict(), "accuracy": 79.42, "optimizer": opt.state_dict()}


def _assert_same_outputs(model: nn.Module, sd: dict, arch: str) -> None:
    fresh = build_model(arch, 100).eval()
    check_state_dict(fresh, sd, arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_round_trip_published_format(tmp_path, teacher):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(_published(teacher), path)
    sd = read_state_dict(path)
    assert list(sd) == list(teacher.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    _assert_same_outputs(teacher, sd, "resnet8x4")


def test_round_trip_model_key_only(tmp_path, teacher):
    torch.save({"model": teacher.state_dict()}, tmp_path / "m.pth")
    _assert_same_outputs(teacher, read_state_dict(str(tmp_path / "m.pth")), "resnet8x4")


def test_legacy_non_zip_format(tmp_path, teacher):
    # checkpoints written by PyTorch < 1.6 (the published CRD teachers) use the legacy format
    path = tmp_path / "legacy.pth"
    torch.save({"model": teacher.state_dict(), "epoch": 240}, path, _use_new_zipfile_serialization=False)
    _assert_same_outputs(teacher, read_state_dict(path), "resnet8x4")


def test_bare_and_state_dict_key_and_module_prefix(tmp_path, teacher):
    sd = teacher.state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"state_dict": sd, "arch": "resnet8x4"}, tmp_path / "sd.pth")
    torch.save({"model": OrderedDict((f"module.{k}", v) for k, v in sd.items())}, tmp_path / "dp.pth")
    for f in ("bare.pth", "sd.pth", "dp.pth"):
        got = read_state_dict(tmp_path / f)
        assert list(got) == list(sd), f
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_refuses_custom_object(tmp_path, teacher):
    path = tmp_path / "custom.pth"
    torch.save({"model": teacher.state_dict(), "extra": CustomPayload()}, path)
    with pytest.raises(TeacherError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "refused" in msg and "pickled Python objects" in msg and "CustomPayload" in msg
    assert "state_dict" in msg and "\n" not in msg
    assert err.value.key == "teacher.checkpoint"


@pytest.mark.parametrize("legacy", [False, True])
def test_refuses_code_execution_payload(tmp_path, legacy):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": Exploit(str(marker))}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(TeacherError, match="pickled Python objects .* could run arbitrary code"):
        read_state_dict(path, key="distill.teacher_ckpt")
    assert not marker.exists(), "the payload ran"


def test_refuses_pickled_module(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save({"model": build_model("resnet8", 10)}, path)
    with pytest.raises(TeacherError, match="refused .*pickled Python objects"):
        read_state_dict(path)


def test_truncated_and_garbage(tmp_path, teacher):
    good = tmp_path / "good.pth"
    torch.save({"model": teacher.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    torch.save({"model": teacher.state_dict()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "ltrunc.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:5000])
    (tmp_path / "garbage.pth").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    for f in ("trunc.pth", "ltrunc.pth", "garbage.pth", "text.pth"):
        with pytest.raises(TeacherError, match="not a readable torch checkpoint") as err:
            read_state_dict(tmp_path / f)
        assert "\n" not in str(err.value), f
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(TeacherError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")


def test_missing_file_and_no_weights(tmp_path):
    with pytest.raises(TeacherError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save({"epoch": 240, "accuracy": 79.42}, tmp_path / "meta.pth")
    with pytest.raises(TeacherError, match="no weights"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(TeacherError, match="not a dict"):
        read_state_dict(tmp_path / "list.pth")


def test_check_state_dict_architecture_mismatch(teacher):
    sd = teacher.state_dict()  # resnet8x4
    with pytest.raises(TeacherError) as err:
        check_state_dict(build_model("resnet32x4", 100), sd, "resnet32x4")
    msg = str(err.value)
    assert "checkpoint does not match architecture 'resnet32x4'" in msg
    assert "missing" in msg and "layer1.1.conv1.weight" in msg and "\n" not in msg
    with pytest.raises(TeacherError, match="missing .*unexpected .*shape mismatch"):
        check_state_dict(build_model("wrn_16_2", 100), sd, "wrn_16_2")


def test_check_state_dict_class_count_mismatch(teacher):
    with pytest.raises(TeacherError, match="has 100 classes, the dataset has 10"):
        check_state_dict(build_model("resnet8x4", 10), teacher.state_dict(), "resnet8x4")


def test_check_state_dict_tolerates_missing_num_batches_tracked(teacher):
    # very old checkpoints lack num_batches_tracked; torch fills it in, so this must load
    sd = {k: v for k, v in teacher.state_dict().items() if not k.endswith("num_batches_tracked")}
    check_state_dict(build_model("resnet8x4", 100), sd, "resnet8x4")


def test_infer_num_classes():
    assert infer_num_classes(build_model("resnet8x4", 100).state_dict()) == 100
    assert infer_num_classes(build_model("wrn_16_2", 10).state_dict()) == 10
    assert infer_num_classes(build_model("MobileNetV2", 37).state_dict()) == 37  # classifier.0.weight
    assert infer_num_classes({"conv.weight": torch.zeros(4, 3, 3, 3)}) is None
