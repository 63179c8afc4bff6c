"""Shared fixtures: compose real Hydra configs into a temporary results directory; W&B offline."""

from __future__ import annotations

import math
import os
from pathlib import Path

# one thread per process, for the suite and the subprocesses it starts (set before anything imports torch):
# the suite is many tiny runs, for which extra threads only contend on a small machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


#: the files that take longest (sweeps, subprocesses, many runs), longest first: collected before the rest, so
#: that `make test` (one file per CPU at a time, xdist --dist loadfile) starts them first instead of last
LONGEST_FILES = ("test_sweep.py", "test_fused.py", "test_reliability.py", "test_interrupts.py", "test_train.py",
                 "test_feature_methods.py", "test_logit_2024.py", "test_schema.py", "test_report.py",
                 "test_cached_signal.py", "test_environment.py", "test_captured_signal.py", "test_tokens.py",
                 "test_data.py", "test_cifar_e2e.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture
def compose(tmp_path):
    """compose(*overrides) -> the train config, with every path under tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def _compose(*overrides: str, results: Path | None = None):
        res = results or tmp_path / "results"
        base = [f"paths.results_dir={res}", f"paths.data_dir={tmp_path / 'data'}", "trainer.progress=false",
                "logger=none"]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=base + list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def teachers_dir(tmp_path_factory) -> Path:
    """One teacher registry for the session (``paths.teachers_dir=...``), for tests that only need a trained
    teacher: each recipe is trained once, by the first test that asks (under the registry's lock), instead
    of once per test. A test about training, registering or the registry's folder keeps its own."""
    return tmp_path_factory.mktemp("teachers")


def train_main(args: list[str]) -> int:
    """``python -m kdbench.train ARGS`` in this process (Hydra's entry point, the exit codes of
    docs/errors.md) without a subprocess's start-up; returns the exit code. The root logger that Hydra
    configures for the job, and Hydra's job config (which later runs would read as theirs), are reset."""
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from kdbench import train

    root = logging.getLogger()
    handlers, level, argv = root.handlers[:], root.level, sys.argv
    GlobalHydra.instance().clear()
    sys.argv = ["kdbench.train", *args]
    try:
        train.main()
        return 0
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


#: a fast digits run: 2-epoch teacher, 2-epoch student
FAST = ("trainer.max_epochs=2", "teacher.recipe.epochs=2")


def have_mnist() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def assert_records_close(a, b, rel: float = 1e-6, where: str = "") -> None:
    """``a`` and ``b`` have the same structure (keys, lengths, types) and equal values, floats within ``rel``.

    For numbers two runs compute along different paths (e.g. the same logits in other batch shapes, or
    from a cache built with another batch size): their last bits depend on the CPU's kernels (AVX2 vs
    AVX-512, oneDNN's choice per shape), and a fitted value (a temperature, the ECE/NLL after scaling by
    it) carries them into the 8th digit. Same-path comparisons (determinism, resumption) keep ``==``.
    """
    where = where or "record"
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ: {sorted(a.keys() ^ b.keys())}"
        for k in a:
            assert_records_close(a[k], b[k], rel, f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_records_close(x, y, rel, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
        assert same, f"{where}: {a!r} != {b!r} (rel {rel})"
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def whole_cut_resumed(make, monkeypatch, between=None) -> tuple[dict, dict]:
    """The records of a run without a break (``make("whole")``, a composed config per experiment name) and
    of the same run stopped by SIGTERM as its second epoch starts, then run again with the same command
    (``make("cut")``, resumed): checks that the cut was one epoch in and that the resumed run's history and
    test NLL equal the whole one's. ``between(whole)`` runs after the cut, before the resume."""
    import math
    import os
    import signal
    from pathlib import Path

    from kdbench.distill import DistillModule
    from kdbench.interrupts import RunInterrupted
    from kdbench.records import read_record
    from kdbench.train import run

    whole = run(make("whole"))
    real = DistillModule.on_train_epoch_start

    def stop_in_second(module):
        if module.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        real(module)

    monkeypatch.setattr(DistillModule, "on_train_epoch_start", stop_in_second)
    with pytest.raises(RunInterrupted):
        run(make("cut"))
    monkeypatch.setattr(DistillModule, "on_train_epoch_start", real)
    cut = read_record(Path(whole["record_path"]).parent.parent / "cut" / f"{whole['run_id']}.json")
    assert cut["status"] == "interrupted" and len(cut["history"]) == 1
    if between is not None:
        between(whole)
    resumed = run(make("cut"))
    assert resumed["resumed_from"] and resumed["run_id"] == whole["run_id"]
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        for k in ("train_loss", "val_acc", "val_nll"):
            assert math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-7), (k, a[k], b[k])
    assert math.isclose(whole["metrics"]["last"]["test"]["nll"], resumed["metrics"]["last"]["test"]["nll"],
                        rel_tol=1e-5)
    return whole, resumed
