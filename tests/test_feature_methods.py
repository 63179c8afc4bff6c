"""Feature methods through the whole harness (kdbench.features, methods/at, nst, sp, rkd, pkt, fitnet):
what they see, what they train, what they refuse, and that they resume exactly."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdbench.errors import ConfigError
from tests.conftest import FAST, whole_cut_resumed

#: digits with the small CNN pair: both sides give pooled, stages (2 blocks) and preact_stages
CNN = ("teacher=mnist_cnn", "student=mnist_cnn_small", *FAST)


def _cnn(compose, teachers_dir, *extra):
    return compose(*CNN, f"paths.teachers_dir={teachers_dir}", *extra)


#: the pair's channels: student (width 8) 8 then 16, teacher (width 32) 32 then 64; stages[1:] is the second
#: block (4x4 maps on digits); the pooled vectors are 16 and 64 wide
S, T = 16, 64
#: each method's training-only parameters on that pair, from its architecture, and some of its parts' keys
TRAINING_ONLY = {
    # both hints are 4x4 maps: a 1x1 conv 16 -> 64 channels (+ bias) and its BatchNorm's weight and bias
    "fitnet": (S * T + T + 2 * T, {"parts.regressor.0.weight", "parts.regressor.1.running_mean"}),
    # one stage: 1x1 convs 16 -> 64 -> 64 -> 64 without bias, and 64 log-scales
    "vid": (S * T + 2 * T * T + T, {"parts.0.regressor.0.weight", "parts.0.regressor.4.weight", "parts.0.log_scale"}),
    # two linear embeddings 16 -> 128 and 64 -> 128 (+ bias); the memories are buffers, not parameters
    "crd": (S * 128 + 128 + T * 128 + 128, {"parts.embed_s.weight", "parts.embed_t.bias", "parts.memory_s",
                                            "parts.memory_t", "parts.z_s", "parts.z_t"}),
    # one stage: a 1x1 conv 16 -> 64 without bias and its BatchNorm; the 64 margins are a buffer
    "ofd": (S * T + 2 * T, {"parts.connectors.0.0.weight", "parts.connectors.0.1.running_var", "parts.margin_0"}),
    # two levels (the second block, then the pooled vector as a 1x1 map), mid channels min(512, 16): per level a
    # 1x1 conv 16 -> 16 + BN and a 3x3 conv 16 -> 64 + BN; the shallower one fuses: a 1x1 conv 32 -> 2 (+ bias)
    "reviewkd": (2 * (S * S + 2 * S + S * T * 9 + 2 * T) + 2 * S * 2 + 2,
                 {"parts.0.attention.0.weight", "parts.0.reduce.0.weight", "parts.1.expand.1.running_mean"}),
}


@pytest.mark.parametrize(("method", "extra"), [
    ("at", ()), ("nst", ()), ("sp", ()), ("rkd", ()), ("pkt", ()), ("fitnet", ("distill.hint_layer=1",)),
    ("vid", ()), ("crd", ()), ("ofd", ()), ("reviewkd", ()),
])
def test_each_feature_method_trains_two_epochs_and_counts_its_parameters(compose, teachers_dir, method, extra):
    from kdbench.train import run

    rec = run(_cnn(compose, teachers_dir, f"distill={method}", *extra))
    assert rec["status"] == "complete" and len(rec["history"]) == 2
    assert all(math.isfinite(h["train_loss"]) for h in rec["history"])
    # the deployed student is the zoo model alone: 8-16 channel CNN; FitNet's regressor is training-only
    ck = torch.load(Path(rec["record_path"]).parents[2] / "checkpoints" / "default" / rec["run_id"] / "best.ckpt",
                    map_location="cpu", weights_only=True)
    student = sum(v.numel() for k, v in ck["state_dict"].items() if k.startswith("student.") and v.is_floating_point()
                  and "running" not in k)
    parts = {k: v for k, v in ck["state_dict"].items() if k.startswith("parts.")}
    assert rec["params"]["student"] == student
    if method in TRAINING_ONLY:
        count, keys = TRAINING_ONLY[method]
        assert rec["params"]["training_only"] == count
        assert keys <= set(parts), sorted(parts)
        if method == "crd":  # one 128-wide row per training example and side, the constants set on the first batch
            info = rec["dataset_info"]
            n_train = info["sizes"]["train"] - info.get("val_size", 0)
            assert parts["parts.memory_s"].shape == parts["parts.memory_t"].shape == (n_train, 128)
            assert parts["parts.z_s"] > 0 and parts["parts.z_t"] > 0
            assert torch.allclose(parts["parts.memory_s"].norm(dim=1).max(), torch.tensor(1.0))  # rows seen: unit
        if method == "reviewkd":  # the deepest level has nothing deeper to fuse with
            assert not any(k.startswith("parts.1.attention") for k in parts)
        if method == "ofd":  # the margins of the registry teacher's second BatchNorm (features.5), before training
            from safetensors.torch import load_file

            from kdbench.losses import ofd_margin

            t = load_file(str(Path(rec["teacher"]["path"]) / "model.safetensors"))
            margin = ofd_margin(t["features.5.weight"], t["features.5.bias"])
            assert torch.equal(parts["parts.margin_0"], margin) and (margin <= 0).all()
    else:
        assert rec["params"]["training_only"] == 0 and not parts


def test_a_method_gets_exactly_the_features_it_asked_for_from_the_real_models(compose, teachers_dir):
    """A toy method reading stages[-1], pooled and a forward hook sees the registry teacher's own tensors
    on exactly that batch, and the student's from the same pass as its logits."""
    import torch.nn.functional as F

    from kdbench.features import Needs
    from kdbench.methods import register_method
    from kdbench.train import run

    calls = []

    @dataclass(frozen=True)
    class Probe:
        needs_teacher = True
        needs = Needs(student=("stages[-1]", "hook:features.4"), teacher=("pooled", "stages[-1]"))

        def __call__(self, student, teacher, batch, parts):
            calls.append({"x": batch.x.detach().clone(), "t_pooled": teacher.pooled.clone(),
                          "t_last": teacher["stages[-1]"].clone(), "t_stages": teacher.stages,
                          "s_hook": student["hook:features.4"], "s_logits": student.logits,
                          "grad": teacher.pooled.requires_grad})
            return {"loss": F.cross_entropy(student.logits, batch.y) + 0 * student["stages[-1]"].sum()}

    register_method("toy_feature_probe")(Probe)
    rec = run(_cnn(compose, teachers_dir, "distill.method=toy_feature_probe", "distill.variant=probe",
                   "trainer.max_epochs=1"))
    assert rec["status"] == "complete" and calls
    c = calls[0]
    assert not c["grad"] and c["s_hook"].shape[1] == 16  # the student's second conv: 16 channels
    assert c["s_hook"].shape[0] == c["s_logits"].shape[0] == c["x"].shape[0]
    from kdbench.data import load_dataset
    from kdbench.models import build_model
    from kdbench.teachers import load_into

    data = load_dataset({"name": "digits"})
    teacher = build_model("mnist_cnn", 10, data.input_shape, **rec["config"]["teacher"]["kwargs"])
    load_into(teacher, Path(rec["teacher"]["path"]), "mnist_cnn", 10)
    teacher.eval()
    with torch.no_grad():
        _, feats = teacher(c["x"], return_features=True)
    assert torch.allclose(feats["pooled"], c["t_pooled"], atol=1e-6)
    assert torch.allclose(feats["stages"][-1], c["t_last"], atol=1e-6)


def test_feature_methods_are_refused_before_any_work(compose, teachers_dir, tmp_path):
    from kdbench.fused import run_group
    from kdbench.train import run

    runs = tmp_path / "results" / "runs"
    with pytest.raises(ConfigError, match=r"teacher_signal: method at reads the teacher's features .*cached"):
        run(_cnn(compose, teachers_dir, "distill=at", "teacher_signal=cached"))
    # the default hint layer (2) of a two-block CNN: named method, pair and what the model gives
    with pytest.raises(ConfigError, match=r"distill.method: method fitnet cannot distil mnist_cnn -> mnist_cnn: "
                                          r"stages\[2\]: the model gives 2 stages"):
        run(_cnn(compose, teachers_dir, "distill=fitnet"))
    with pytest.raises(ConfigError, match=r"method at .* fused groups share logits only \(use fuse=1\)"):
        run_group([_cnn(compose, teachers_dir, "distill=at"), _cnn(compose, teachers_dir, "distill=kd")])
    assert not runs.exists() or not list(runs.rglob("*.json"))  # nothing written
    # a pair without stages (MLPs give only their pooled vector)
    with pytest.raises(ConfigError, match=r"method at cannot distil mlp -> mlp: MLP gives no stages features"):
        run(compose(*FAST, "distill=at"))


def _whole_then_interrupted_and_resumed(compose, teachers_dir, monkeypatch, *args) -> tuple[dict, dict]:
    """conftest.whole_cut_resumed on the small CNN pair."""
    return whole_cut_resumed(lambda name: _cnn(compose, teachers_dir, *args, f"experiment_name={name}"), monkeypatch)


def _last_parts(rec: dict) -> dict:
    """The method's parts in a run's last.ckpt."""
    ck = torch.load(Path(rec["record_path"]).parents[2] / "checkpoints" / rec["experiment"] / rec["run_id"] /
                    "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in ck["state_dict"].items() if k.startswith("parts.")}


def test_an_interrupted_fitnet_run_resumes_exactly_with_its_regressor(compose, teachers_dir, monkeypatch):
    """SIGTERM after the first epoch, then the same command: the regressor (weights, BatchNorm statistics
    and optimizer state) comes back from last.ckpt and the run ends with the uninterrupted run's numbers."""
    _whole_then_interrupted_and_resumed(compose, teachers_dir, monkeypatch, "distill=fitnet", "distill.hint_layer=1",
                                        "trainer.max_epochs=3")


def test_an_interrupted_crd_run_resumes_exactly_with_its_memories(compose, teachers_dir, monkeypatch):
    """CRD's memories and normalising constants (buffers of its parts) and the RNG its negatives are drawn
    from come back from last.ckpt: the resumed run ends with the uninterrupted run's numbers and memories
    (256 negatives: drawn without replacement; the whole set's cap and draws with replacement are the
    training test's)."""
    whole, resumed = _whole_then_interrupted_and_resumed(compose, teachers_dir, monkeypatch, "distill=crd",
                                                         "distill.nce_k=256", "trainer.max_epochs=3")
    a, b = _last_parts(whole), _last_parts(resumed)
    assert a.keys() == b.keys() and {"parts.memory_s", "parts.memory_t", "parts.z_s"} <= set(a)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    assert not torch.equal(a["parts.z_s"], torch.tensor(-1.0))


def test_out_selectors_and_probe():
    from kdbench.features import Out, check_selectors, probe
    from kdbench.models import build_model

    out = Out(torch.zeros(2, 3), stages=[torch.zeros(1), torch.ones(1), 2 * torch.ones(1)])
    assert out["stages[1:]"][0].item() == 1 and out["stages[-1]"].item() == 2 and len(out["stages[:2]"]) == 2
    with pytest.raises(ValueError, match=re.escape("stages[3]: the model gives 3 stages")):
        out["stages[3]"]
    with pytest.raises(ValueError, match="unknown feature selector"):
        check_selectors(("stage[1]",), "toy")
    model = build_model("mnist_cnn", 10, (1, 8, 8), width=4)
    model.train()
    before = model.features[1].running_mean.clone()
    shapes = probe(model, (1, 8, 8), ("stages", "pooled", "hook:features.0"))
    assert model.training and torch.equal(model.features[1].running_mean, before)  # eval mode, put back
    assert [tuple(s.shape) for s in shapes.stages] == [(2, 4, 8, 8), (2, 8, 4, 4)]
    assert tuple(shapes.pooled.shape) == (2, 8) and tuple(shapes.hooks["features.0"].shape) == (2, 4, 8, 8)


@pytest.mark.parametrize("arch", ["resnet8", "ResNet50", "wrn_16_1", "vgg8", "mnist_cnn"])
def test_bn_before_relu_is_the_batchnorm_of_each_pre_activation_stage(arch):
    """OFD's margins read ``bn_before_relu()``: one BatchNorm per ``preact_stages[1:]`` (SmallCNN, without a
    stem: per ``preact_stages``), of its channels; where the pre-activation map is the BatchNorm's output
    (WRN, VGG, SmallCNN) it is that output exactly (ResNets add the shortcut after it, as the references)."""
    from kdbench.models import build_model

    shape = (1, 8, 8) if arch == "mnist_cnn" else (3, 32, 32)
    model = build_model(arch, 10, shape).eval()
    bns = model.bn_before_relu()
    seen = []
    handles = [bn.register_forward_hook(lambda _m, _i, out: seen.append(out.clone())) for bn in bns]
    with torch.no_grad():
        _, feats = model(torch.randn(2, *shape), return_features=True)
    for h in handles:
        h.remove()
    preact = feats["preact_stages"] if arch == "mnist_cnn" else feats["preact_stages"][1:]
    assert all(isinstance(bn, torch.nn.BatchNorm2d) for bn in bns) and len(bns) == len(preact)
    assert [bn.num_features for bn in bns] == [p.shape[1] for p in preact]
    assert len(seen) == len(bns)  # each runs once per pass, in the stages' order
    if not arch.startswith(("resnet", "ResNet")):
        assert all(torch.equal(o, p) for o, p in zip(seen, preact, strict=True))


def test_ofd_refuses_a_teacher_without_its_batchnorms_and_a_student_without_pre_activations():
    from kdbench.features import probe
    from kdbench.methods.ofd import OFD, PREACT
    from kdbench.models import build_model

    shape = (3, 32, 32)
    student, shuffle = build_model("resnet8", 10, shape), build_model("ShuffleV1", 10, shape)
    with pytest.raises(ValueError, match=r"ShuffleNetV1 gives no bn_before_relu\(\)"):
        OFD().build(probe(student, shape, (PREACT,)), probe(shuffle, shape, (PREACT,)), 10, teacher_model=shuffle)
    with pytest.raises(ValueError, match="MobileNetV2 gives no preact_stages features"):
        probe(build_model("MobileNetV2", 10, shape), shape, (PREACT,))
    teacher = build_model("resnet14", 10, shape)
    head = OFD().build(probe(student, shape, (PREACT,)), probe(teacher, shape, (PREACT,)), 10, teacher_model=teacher)
    assert len(head.connectors) == 3 and [head.margin(i).shape[0] for i in range(3)] == [16, 32, 64]


#: the reference's ReviewKD shapes per CIFAR pair (ReviewKD's build_review_kd and mdistiller's config): student
#: channels, teacher channels and the student's and teacher's sizes per level, shallow to deep
REVIEWKD_SHAPES = {
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [32, 16, 8, 1], [32, 16, 8, 1]),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1], [32, 16, 8, 1]),
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [32, 16, 8, 1], [32, 16, 8, 1]),
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [16, 8, 4, 4, 1], [16, 8, 4, 4, 1]),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [16, 8, 4, 2, 1],
                               [16, 8, 4, 4, 1]),
    ("resnet32x4", "ShuffleV1"): ([240, 480, 960, 960], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
    ("wrn_40_2", "ShuffleV1"): ([240, 480, 960, 960], [32, 64, 128, 128], [16, 8, 4, 1], [32, 16, 8, 1]),
    ("ResNet50", "MobileNetV2"): ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [16, 8, 4, 2, 1],
                                 [32, 16, 8, 4, 1]),
    ("resnet32x4", "ShuffleV2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [16, 8, 4, 1], [32, 16, 8, 1]),
}


@pytest.mark.parametrize(("teacher", "student"), sorted(REVIEWKD_SHAPES))
def test_reviewkd_builds_the_references_shapes_per_pair(teacher, student):
    """Each ABF maps the student's level (channels, size) onto the teacher's, with min(512, pooled width) mid
    channels; the fused student levels have the teacher's shapes, so HCL compares them as they are."""
    from kdbench.features import probe
    from kdbench.methods.reviewkd import STUDENT, TEACHER, ReviewKD, levels
    from kdbench.models import build_model

    torch.manual_seed(0)
    shape = (3, 32, 32)
    s_model, t_model = build_model(student, 100, shape).eval(), build_model(teacher, 100, shape).eval()
    s_out, t_out = probe(s_model, shape, STUDENT), probe(t_model, shape, TEACHER)
    method = ReviewKD()
    parts = method.build(s_out, t_out, 10)
    s_ch, t_ch, s_size, t_size = REVIEWKD_SHAPES[(teacher, student)]
    assert [abf.reduce[0].in_channels for abf in parts] == s_ch
    assert [abf.expand[0].out_channels for abf in parts] == t_ch
    assert {abf.reduce[0].out_channels for abf in parts} == {min(512, s_ch[-1])}
    assert [f.shape[-1] for f in levels(s_out, STUDENT[0])] == s_size
    assert [abf.attention is not None for abf in parts] == [True] * (len(s_ch) - 1) + [False]
    t_levels = levels(t_out, TEACHER[0])
    assert [f.shape[-1] for f in t_levels] == t_size
    with torch.no_grad():
        fused = method.fused(parts.eval(), s_out, [f.shape[-2:] for f in t_levels])
    assert [f.shape for f in fused] == [f.shape for f in t_levels]


def test_reviewkd_warms_up_and_refuses_pairs_it_cannot_use(compose):
    from kdbench.features import probe
    from kdbench.methods.reviewkd import STUDENT, TEACHER, ReviewKD
    from kdbench.models import build_model
    from kdbench.train import run

    method = ReviewKD()
    for epoch, w in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)):
        method.set_epoch(epoch)
        assert math.isclose(method.warmup, w)
    shape = (3, 32, 32)
    s, t = build_model("resnet8x4", 10, shape), build_model("vgg13", 10, shape)
    with pytest.raises(ValueError, match="the student gives 4, the teacher 5"):
        method.build(probe(s, shape, STUDENT), probe(t, shape, TEACHER), 10)
    # through the harness: one line naming the method and the pair, before any work
    with pytest.raises(ConfigError, match=r"method reviewkd cannot distil mlp -> mlp: MLP gives no stages features"):
        run(compose(*FAST, "distill=reviewkd"))
