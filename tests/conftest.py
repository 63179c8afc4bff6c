"""Shared fixtures: compose real Hydra configs into a temporary results directory; W&B offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


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


#: a fast digits run: 2-epoch teacher, 2-epoch student
FAST = ("trainer.max_epochs=2", "teacher.recipe.epochs=2")


def have_mnist() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
