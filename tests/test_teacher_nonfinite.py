"""A teacher whose logits are not finite is the teacher's fault, said in one line naming it and the row: the
run is recorded 'failed' (exit 2), never as the student 'diverged' (exit 3, and again on every re-run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, train_main


def overflowing_registry(compose, teachers_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's registry whose digits teacher has finite weights x 1e20: its logits overflow
    to Inf / NaN (weights an import's finiteness check lets through)."""
    from safetensors.torch import load_file, save_file

    from kdbench.train import run

    name = run(compose(*FAST, f"paths.teachers_dir={teachers_dir}", "teacher_only=true"))["teacher"]["name"]
    copy = tmp_path / "teachers"  # only that entry: the session's registry holds other tests' teachers too
    shutil.copytree(teachers_dir / name, copy / name, ignore=shutil.ignore_patterns("*.lock", "cache"))
    weights = copy / name / "model.safetensors"
    save_file({k: v * 1e20 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()},
              str(weights), metadata={"arch": "mlp"})
    return copy


def test_an_online_teacher_giving_nan_fails_the_run_naming_the_teacher_not_diverged(compose, teachers_dir, tmp_path, capsys):
    teachers = overflowing_registry(compose, teachers_dir, tmp_path)
    results = tmp_path / "r"
    rc = train_main([*FAST, f"paths.teachers_dir={teachers}", f"paths.results_dir={results}", "logger=none",
                     "trainer.progress=false", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("kdbench: error:")]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "diverged" not in lines[0].split("(the run")[0]
    assert lines[0].startswith("kdbench: error: teacher: the online teacher digits-mlp-")
    assert "gave a non-finite logit (NaN/Inf) for train row " in lines[0]
    (path,) = (results / "runs" / "default").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and "TeacherError" in rec["error"] and "diverged_step" not in rec


@pytest.mark.slow  # the build's refusal itself is tests/test_cache_trust.py's (no run around it)
def test_the_same_teacher_is_refused_while_its_cache_is_built_and_nothing_is_left(compose, teachers_dir, tmp_path, capsys):
    teachers = overflowing_registry(compose, teachers_dir, tmp_path)
    results = tmp_path / "r"
    rc = train_main([*FAST, f"paths.teachers_dir={teachers}", f"paths.results_dir={results}", "logger=none",
                     "trainer.progress=false", "teacher_signal=cached", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("kdbench: error:")]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("kdbench: error: teacher: teacher digits-mlp-")
    assert "gives a non-finite logit (NaN/Inf) for train row 0 (view 0) while its logits are cached" in lines[0]
    assert not (results / "runs").exists() or not list((results / "runs").rglob("*.json"))  # before any record
    (entry,) = [p.parent for p in teachers.glob("digits-mlp-*/model.safetensors")]
    assert [p.suffix for p in (entry / "cache").iterdir()] == [".lock"]


def test_the_watch_keeps_the_first_bad_row_on_the_device_and_reads_it_once():
    """The online signal's check: nothing read back per batch, the first bad row (and view) reported."""
    from kdbench.data import Batch
    from kdbench.errors import TeacherError
    from kdbench.signals.online import NonFiniteWatch

    w = NonFiniteWatch("the online teacher t", "its weights or that input are bad")
    ok = torch.zeros(4, 3)
    w.see(ok, Batch(ok, torch.zeros(4), torch.arange(4), torch.zeros(4, dtype=torch.long)), "train")
    w.check()
    bad = ok.clone()
    bad[2, 1] = float("nan")
    w.see(bad, Batch(bad, torch.zeros(4), torch.tensor([10, 11, 12, 13]), torch.tensor([0, 1, 5, 0])), "train")
    bad2 = ok.clone()
    bad2[0] = float("inf")
    w.see(bad2, Batch(bad2, torch.zeros(4), torch.arange(4), torch.zeros(4, dtype=torch.long)), "val")
    try:
        w.check()
    except TeacherError as e:
        assert "the online teacher t gave a non-finite logit (NaN/Inf) for train row 12 (view 5)" in str(e)
    else:
        raise AssertionError("no TeacherError")
