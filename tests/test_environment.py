"""Output folders checked one by one before any work, write failures in one line, and values far
outside published recipes announced (issue 16 parts 9 and 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_a_broken_symlink_as_results_folder_is_one_line_naming_the_key(compose, tmp_path):
    from kdbench.train import run

    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError) as e:
        run(compose("distill=none", "trainer.max_epochs=1", results=link))
    assert e.value.key == "paths.results_dir" and "broken symbolic link" in str(e.value)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("key, sub", [("paths.runs_dir", "runs"), ("paths.checkpoints_dir", "checkpoints"),
                                      ("paths.teachers_dir", "teachers")])
def test_each_output_folder_is_checked_and_named(compose, tmp_path, key, sub):
    from kdbench.train import run

    results = tmp_path / "results"
    results.mkdir()
    (results / sub).write_text("a file where a folder must be\n")
    with pytest.raises(ConfigError) as e:
        run(compose("trainer.max_epochs=1", results=results))
    assert e.value.key == key and "is not writable" in str(e.value)
    assert sorted(p.name for p in results.iterdir()) == [sub]  # nothing else written


def test_a_failed_write_during_the_run_is_one_line_exit_4_and_a_failed_record(tmp_path):
    """The run's own checkpoint folder cannot be created (a file stands there): the path the
    checks before work cannot know, the way a full disk or a read-only mount fails mid-run."""
    from kdbench.config import resolve
    from kdbench.identity import run_id_of
    from kdbench.records import read_record
    from kdbench.sweep import compose_job

    args = [f"paths.results_dir={tmp_path}/r", "distill=none", "trainer.max_epochs=1", "logger=none",
            "experiment_name=wfail", f"hydra.run.dir={tmp_path}/h"]
    rid = run_id_of(resolve(compose_job(args)))
    blocker = tmp_path / "r" / "checkpoints" / "wfail" / rid
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    res = subprocess.run([sys.executable, "-m", "kdbench.train", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 4, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("kdbench:")]
    assert len(lines) == 1 and "could not write" in lines[0] and str(blocker) in lines[0]
    assert "Traceback" not in res.stderr
    assert read_record(tmp_path / "r" / "runs" / "wfail" / f"{rid}.json")["status"] == "failed"


def test_values_far_outside_published_recipes_are_announced(compose):
    from kdbench.config import unusual_values

    assert unusual_values(compose()) == []
    warned = unusual_values(compose("distill.tau=1e9", "dataset.batch_size=100000", "optim.lr=1e-9"))
    assert [w.split("=")[0] for w in warned] == ["distill.tau", "dataset.batch_size", "optim.lr"]
    assert all("running anyway" in w for w in warned)
    assert unusual_values(compose("distill=none", "distill.tau=1e9")) == []  # scratch reads no tau


def test_a_run_records_the_precision_that_ran_not_the_one_asked(compose):
    from kdbench.config import resolve
    from kdbench.identity import run_id_of

    asked = resolve(compose("trainer.precision=16-mixed", "trainer.accelerator=cpu"))
    assert asked["trainer"]["precision"] == "bf16-mixed"  # Lightning runs bf16 autocast on a CPU
    assert run_id_of(asked) == run_id_of(resolve(compose("trainer.precision=bf16-mixed", "trainer.accelerator=cpu")))
