"""The cached teacher signal: exact per (image, view), built once, the same training as online."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import assert_records_close

CNN = ("teacher=mnist_cnn", "teacher.kwargs.width=8", "teacher.recipe.epochs=1", "dataset.augment=crop_flip",
       "dataset.val_size=200", "trainer.max_epochs=2", "logger=none")


def test_cached_logits_are_the_online_teachers_for_every_batch_and_view(compose):
    """Shuffled, augmented (crop+flip: 162 views) batches: the cache's logits for (idx, view) equal the
    online teacher's on the very batch, bit for bit in float32 on the CPU; the cache is built once."""
    from kdbench.distill import DistillModule
    from kdbench.train import run

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    orig = DistillModule.training_step

    def spy(self, batch, batch_idx):
        if self.signal.kind == "cached":
            cached = self.signal(batch, "train")
            seen.append((cached, batch))
        return orig(self, batch, batch_idx)

    DistillModule.training_step = spy
    try:
        rec = run(compose(*CNN, "teacher_signal=cached"))
    finally:
        DistillModule.training_step = orig
    assert rec["status"] == "complete" and rec["teacher_signal"] == "cached" and len(seen) > 10
    from kdbench.data import load_dataset
    from kdbench.models import build_model
    from kdbench.teachers import load_into

    data = load_dataset({"name": "digits"})
    teacher = build_model("mnist_cnn", 10, data.input_shape, width=8, dropout=0.0)
    load_into(teacher, Path(rec["teacher"]["path"]), "mnist_cnn", 10)
    teacher.eval()
    views = set()
    with torch.inference_mode():
        for cached, batch in seen:
            assert torch.equal(cached, teacher(batch.x)), "cached logits differ from the online teacher's"
            views |= set(batch.view.tolist())
    assert len(views) > 50  # the batches really drew many different views
    caches = list(Path(rec["teacher"]["path"]).glob("cache/*/meta.json"))
    assert len(caches) == 1


@pytest.mark.parametrize("val_size", [200, 0])
def test_cached_run_trains_exactly_like_online(compose, val_size, teachers_dir):
    """Also without a validation split (val_size 0, as for CIFAR: validation runs on the test set, and
    the cache's validation lookups read its test table)."""
    from kdbench.train import run

    common = (*CNN, f"dataset.val_size={val_size}", f"paths.teachers_dir={teachers_dir}")
    online = run(compose(*common, "teacher_signal=online", "experiment_name=on"))
    cached = run(compose(*common, "teacher_signal=cached", "experiment_name=ca"))
    assert online["run_id"] != cached["run_id"]
    assert [h["train_loss"] for h in cached["history"]] == [h["train_loss"] for h in online["history"]]
    # the cache computes val/test logits at the training batch size, the online teacher at the eval batch
    # size: equal values whose last bits depend on the CPU's kernels for each shape, which the fitted
    # temperatures (and the ECE/NLL after scaling) carry into the 8th digit (AMD EPYC vs Intel)
    assert_records_close(cached["metrics"], online["metrics"], rel=1e-6)
    assert_records_close(cached["teacher"]["test"], online["teacher"]["test"], rel=1e-6)


def test_a_cache_that_cannot_fit_is_refused_before_any_work(compose, tmp_path):
    from kdbench.errors import ConfigError
    from kdbench.train import run

    with pytest.raises(ConfigError) as e:
        run(compose(*CNN, "teacher_signal=cached", "teacher_cache.max_gb=0.001"))
    assert e.value.key == "teacher_cache.max_gb" and "1148 x 162 x 10 x 4 bytes" in str(e.value)
    assert not (tmp_path / "results" / "teachers").exists()  # the teacher was not even trained
    with pytest.raises(ConfigError) as e:
        run(compose(*CNN, "teacher_signal=cached", "distill=kd_teacher_grad"))
    assert e.value.key == "teacher_signal"


def test_a_resident_cache_gives_the_memory_mapped_lookups_and_the_same_run(compose, teachers_dir):
    """teacher_cache.on_device=true: the tables are copied into the device's memory (on a GPU: its
    memory; here the host's), looked up there, and the run is the one read from the memory map."""
    from kdbench.data import Batch
    from kdbench.signals.cached import CachedSignal
    from kdbench.train import run

    shared = f"paths.teachers_dir={teachers_dir}"
    mapped = run(compose(*CNN, shared, "teacher_signal=cached", "experiment_name=mm", "teacher_cache.on_device=false"))
    resident = run(compose(*CNN, shared, "teacher_signal=cached", "experiment_name=rs", "teacher_cache.on_device=true"))
    assert resident["run_id"] == mapped["run_id"]  # where the table lives changes nothing computed
    assert resident["history"] == mapped["history"] and resident["metrics"] == mapped["metrics"]
    (folder,) = [p.parent for p in Path(mapped["teacher"]["path"]).glob("cache/*/meta.json")]
    import json

    meta = json.loads((folder / "meta.json").read_text())
    a, b = CachedSignal(folder, meta, on_device=False).to("cpu"), CachedSignal(folder, meta, on_device=True).to("cpu")
    assert not a.resident and b.resident
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, a.tables["train"].shape[0], (64,), generator=g)
    view = torch.randint(0, a.tables["train"].shape[1], (64,), generator=g)
    batch = Batch(torch.zeros(64, 1), torch.zeros(64, dtype=torch.long), idx, view)
    assert torch.equal(a(batch, "train"), b(batch, "train"))
    first = Batch(batch.x[:8], batch.y[:8], torch.arange(8), torch.zeros(8, dtype=torch.long))
    assert torch.equal(a(first, "test"), b(first, "test"))
