"""`kdbench train` and `kdbench-train` work from any directory after a plain (non-editable) install
(issue 14 part 7): the configs ship inside the package (kdbench/conf links to conf/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # builds and installs a wheel: `make test-slow`


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    import shutil

    tmp = tmp_path_factory.mktemp("inst")
    # build from a copy of the sources: an in-tree build would leave build/ in the checkout
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "build", "*.egg-info", "multirun", "outputs", ".data", "data", "wandb", "__pycache__"))
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("kdbench-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return site


def _env(site: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def test_the_installed_package_holds_its_configs(installed):
    assert (installed / "kdbench" / "conf" / "train.yaml").is_file()
    assert not (installed / "kdbench" / "conf").is_symlink()
    assert (installed / "kdbench" / "conf" / "experiment" / "fashion_methods.yaml").is_file()


@pytest.mark.parametrize("how", ["kdbench train", pytest.param("kdbench-train", marks=pytest.mark.slow)])
def test_train_entry_points_run_from_another_directory(installed, tmp_path, how):
    args = ["distill=none", "trainer.max_epochs=1", "logger=none", f"paths.results_dir={tmp_path}/r",
            "experiment_name=ep", f"hydra.run.dir={tmp_path}/h"]
    if how == "kdbench train":
        cmd = [sys.executable, "-c", "import sys, kdbench, kdbench.cli; print(kdbench.__file__); "
                                     "sys.exit(kdbench.cli.main(sys.argv[1:]))", "train", *args]
    else:
        cmd = [str(installed / "bin" / "kdbench-train"), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(installed), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    if how == "kdbench train":
        assert res.stdout.splitlines()[0].startswith(str(installed))  # the installed copy ran, not the checkout
    (rec,) = (tmp_path / "r" / "runs" / "ep").glob("*.json")
    assert '"status": "complete"' in rec.read_text()
