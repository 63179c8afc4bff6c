"""What the teacher registry reads back (issue 23): a registry entry tampered with by hand is refused in
one line naming the file and what is wrong, before any student trains, never used as if it were the
config's teacher."""

from __future__ import annotations

import json
import shutil

import pytest

from kdbench.errors import TeacherError

TINY = ("teacher.recipe.epochs=1", "teacher.kwargs.hidden=[32]", "teacher_only=true")


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """One real registry entry (a 1-epoch digits teacher), copied afresh by each test before tampering."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdbench.train import run
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("registry")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.results_dir={root}", "logger=none",
                                                      "trainer.progress=false", *TINY])
    run(cfg)
    (path,) = [p for p in (root / "teachers").iterdir() if p.is_dir()]
    return path


def _teacher(compose, registry):
    from kdbench.train import run

    return run(compose(*TINY, f"paths.teachers_dir={registry}"))


def _copy(entry, tmp_path):
    reg = tmp_path / "teachers"
    shutil.copytree(entry, reg / entry.name)
    return reg, reg / entry.name


def test_an_untouched_copy_is_reused(compose, entry, tmp_path):
    reg, _ = _copy(entry, tmp_path)
    out = _teacher(compose, reg)
    assert out["teacher"]["name"] == entry.name


@pytest.mark.parametrize(("edit", "says"), [
    (lambda m: [m], "is a JSON list, not an object"),
    (lambda m: {**m, "num_classes": "ten"}, "num_classes is 'ten'"),
    (lambda m: {**m, "num_classes": True}, "num_classes is True"),
    (lambda m: {**m, "arch": 7}, "arch is 7"),
    (lambda m: {**m, "test": {**m["test"], "acc": "0.97"}}, "test is"),
    (lambda m: {**m, "key": "0123456789"}, "holds the teacher of key '0123456789', not this config's"),
])
def test_tampered_metadata_is_refused_in_one_line(compose, entry, tmp_path, edit, says):
    reg, e = _copy(entry, tmp_path)
    meta = json.loads((e / "meta.json").read_text())
    (e / "meta.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(TeacherError) as err:
        _teacher(compose, reg)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_non_utf8_metadata_is_refused(compose, entry, tmp_path):
    reg, e = _copy(entry, tmp_path)
    (e / "meta.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(TeacherError, match="unreadable teacher metadata"):
        _teacher(compose, reg)


def test_non_finite_weights_in_an_entry_are_refused(compose, entry, tmp_path):
    from safetensors.torch import load_file, save_file

    reg, e = _copy(entry, tmp_path)
    state = load_file(str(e / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(e / "model.safetensors"))
    with pytest.raises(TeacherError) as err:
        _teacher(compose, reg)
    assert f"tensor {name!r} holds NaN or infinite values" in str(err.value)
