"""What a method needs of the teacher against what the teacher signal gives (issue 23, defect 6): refused
in one line before any work, never a `failed` record after training started, never an ablation recorded that
could not have happened (teacher_grad with no teacher in memory)."""

from __future__ import annotations

import pytest

from kdbench.errors import ConfigError

DENSE = "dense teacher logits; teacher_signal=captured gives top-k log-probs only: use teacher_signal=cached or online"
MODEL = "needs the teacher itself in memory"


def _conf(compose, *overrides):
    from kdbench import lifecycle

    return lifecycle.Job.of(compose(*overrides), list(overrides)).conf


@pytest.mark.parametrize(("signal", "distill", "says"), [
    ("captured", "distill=dkd", f"variant dkd (method dkd) reads {DENSE}"),
    ("captured", "distill=dist", f"variant dist (method dist) reads {DENSE}"),
    ("captured", "distill=kd_jsd", f"variant jsd (method kd) reads {DENSE}"),
    ("captured", "distill=kd_ls", f"variant kd_ls (method kd) reads {DENSE}"),
    ("captured", "distill=kd_student_tau1", f"variant student_tau1 (method kd) reads {DENSE}"),
    ("captured", "distill=ttm", f"variant ttm (method ttm) reads {DENSE}"),
    ("captured", "distill=kd_teacher_grad", f"distill.teacher_grad=true {MODEL}"),
    ("captured", "distill=kd_teacher_train", f"distill.teacher_train_mode=true {MODEL}"),
    ("cached", "distill=kd_teacher_grad", f"distill.teacher_grad=true {MODEL}"),
    ("cached", "distill=kd_teacher_train", f"distill.teacher_train_mode=true {MODEL}"),
])
def test_a_method_the_signal_cannot_feed_is_refused_in_one_line(compose, signal, distill, says):
    from kdbench.runner import preflight_needs

    with pytest.raises(ConfigError) as e:
        preflight_needs(_conf(compose, distill, f"teacher_signal={signal}", "teacher_capture.path=somewhere"))
    assert e.value.key == "teacher_signal" and says in str(e.value) and "\n" not in str(e.value)
    if MODEL in says:
        assert str(e.value).endswith("use teacher_signal=online")


@pytest.mark.parametrize(("signal", "distill"), [
    ("captured", "distill=kd"), ("captured", "distill=kd_reverse"), ("captured", "distill=kd_no_tau2"),
    ("cached", "distill=dkd"), ("cached", "distill=kd_jsd"), ("online", "distill=kd_teacher_grad"),
    ("online", "distill=dkd"), ("captured", "distill=none"),
])
def test_what_the_signal_can_feed_passes(compose, signal, distill):
    from kdbench.runner import preflight_needs

    preflight_needs(_conf(compose, distill, f"teacher_signal={signal}", "teacher_capture.path=somewhere"))


def test_the_refusal_comes_before_any_work(compose, tmp_path):
    from kdbench.train import run

    with pytest.raises(ConfigError, match="reads dense teacher logits"):
        run(compose("distill=dkd", "teacher_signal=captured", f"teacher_capture.path={tmp_path / 'none'}"))
    assert not (tmp_path / "results").exists()  # no teacher trained, no record, no folder


def test_a_plugin_signal_declares_what_it_gives(compose, monkeypatch):
    from kdbench import signals
    from kdbench.runner import preflight_needs

    with pytest.raises(ValueError, match="unknown capabilities"):
        signals.register_signal("toy_bad", gives=("logits",))
    monkeypatch.setitem(signals._REGISTRY, "toy_sparse", lambda **_: None)  # noqa: SLF001 - test-only registration
    monkeypatch.setitem(signals._GIVES, "toy_sparse", frozenset({"topk"}))  # noqa: SLF001
    assert signals.gives("toy_sparse") == {"topk"} and signals.gives("online") >= {"dense", "features", "model"}
    conf = _conf(compose, "distill=dkd")
    conf["teacher_signal"] = "toy_sparse"
    with pytest.raises(ConfigError, match="teacher_signal=toy_sparse gives top-k log-probs only"):
        preflight_needs(conf)
