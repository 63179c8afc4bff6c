"""The teacher cache trusts nothing it reads back: a broken cache (truncated, garbage meta.json, another
plan or teacher, a changed value, a pickle) is rebuilt under its lock, a teacher that gives a NaN is refused
naming the row, and a file where the cache's folder should be is said as such. One small cache (digits, flip:
2 views) is built once for the module; each test tampers with a copy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

META = {"key": "k1", "name": "mlp-digits-test"}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(conf, data, teacher, pristine entry folder with its built cache, the cache's folder name)."""
    from kdbench.config import compose_job, resolve
    from kdbench.models import build_model
    from kdbench.runner import load_data
    from kdbench.signals import build_signal

    conf = resolve(compose_job(["teacher_signal=cached", "dataset.augment=flip", "logger=none"]))
    data = load_data(conf["dataset"])
    torch.manual_seed(0)
    teacher = build_model("mlp", data.num_classes, data.input_shape, hidden=[16]).eval()
    entry = tmp_path_factory.mktemp("entry")
    sig = build_signal("cached", teacher=teacher, conf=conf, data=data, teacher_meta={**META, "path": str(entry)})
    return conf, data, teacher, entry, sig.folder.name


def open_cache(made, entry: Path, teacher=None, key: str = "k1"):
    from kdbench.signals import build_signal

    conf, data, t, _, _ = made
    return build_signal("cached", teacher=teacher or t, conf=conf, data=data,
                        teacher_meta={**META, "key": key, "path": str(entry)})


def copy_of(made, tmp_path) -> tuple[Path, Path]:
    entry = tmp_path / "entry"
    shutil.copytree(made[3], entry)
    return entry, entry / "cache" / made[4]


def tables(sig) -> dict[str, np.ndarray]:
    return {s: np.array(t) for s, t in sig.tables.items()}


def rebuilt(made, entry: Path, capsys, says: str) -> None:
    """Opening the cache again warns that it is broken (saying ``says``) and rebuilds the very tables."""
    pristine = tables(open_cache(made, made[3]))
    capsys.readouterr()
    sig = open_cache(made, entry)
    err = capsys.readouterr().err
    assert "is broken (" in err and says in err and "rebuilding it" in err, err
    got = tables(sig)
    assert got.keys() == pristine.keys() and all(np.array_equal(got[s], pristine[s]) for s in got)
    capsys.readouterr()
    open_cache(made, entry)  # and now it is sound: no warning
    assert "broken" not in capsys.readouterr().err


def test_a_truncated_array_is_rebuilt(made, tmp_path, capsys):
    """It was `ValueError: mmap length is greater than file size` in every later cached run of that teacher."""
    entry, folder = copy_of(made, tmp_path)
    path = folder / "train.npy"
    path.write_bytes(path.read_bytes()[:-100])
    rebuilt(made, entry, capsys, "train.npy is ")


@pytest.mark.parametrize("meta", ["{not json", "[1, 2]", "missing"])
def test_a_garbage_list_or_missing_meta_json_is_rebuilt(made, tmp_path, capsys, meta):
    entry, folder = copy_of(made, tmp_path)
    if meta == "missing":
        (folder / "meta.json").unlink()
    else:
        (folder / "meta.json").write_text(meta)
    rebuilt(made, entry, capsys, {"{not json": "unreadable (JSONDecodeError", "[1, 2]": "not a mapping (a JSON list)",
                                  "missing": "meta.json is missing"}[meta])


def test_a_meta_json_for_another_plan_or_without_checksums_is_rebuilt(made, tmp_path, capsys):
    entry, folder = copy_of(made, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "num_classes": 7}))
    rebuilt(made, entry, capsys, "meta.json says num_classes=7, the run needs 10")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "arrays"}))
    rebuilt(made, entry, capsys, "records no checksums (built by an earlier kdbench)")


def test_a_nan_written_into_the_cache_is_found_by_its_checksum_and_rebuilt(made, tmp_path, capsys):
    """The defect: one NaN in the cache made every run 'diverge' at step 3, and every re-run again."""
    entry, folder = copy_of(made, tmp_path)
    arr = np.load(folder / "train.npy", mmap_mode="r+")
    arr[17, 1, 3] = np.nan
    arr.flush()
    del arr
    rebuilt(made, entry, capsys, "train.npy does not match its checksum")


@pytest.mark.parametrize("bad", ["float64", "shape", "pickle"])
def test_an_array_of_another_dtype_shape_or_a_pickle_is_rebuilt(made, tmp_path, capsys, bad):
    entry, folder = copy_of(made, tmp_path)
    path = folder / "test.npy"
    arr = np.load(path)
    if bad == "pickle":
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    else:
        np.save(path, arr.astype(np.float64) if bad == "float64" else arr[:, :, :5].copy())
    size = path.stat().st_size  # the meta's size made to match: the header's dtype and shape must be read
    meta = json.loads((folder / "meta.json").read_text())
    meta["arrays"]["test"]["bytes"] = size
    (folder / "meta.json").write_text(json.dumps(meta))
    rebuilt(made, entry, capsys, {"float64": "test.npy is float64", "shape": "(449, 1, 5), the run needs float32",
                                  "pickle": "test.npy is unreadable (ValueError"}[bad])


def test_a_cache_folder_of_another_teacher_is_rebuilt(made, tmp_path, capsys):
    """Another teacher's cache copied under this one's key (same plan): its meta names the other teacher."""
    from kdbench.signals.cached import cache_key, plan

    conf, data = made[0], made[1]
    entry, folder = copy_of(made, tmp_path)
    mine = folder.with_name(cache_key("k2", conf, data, plan(conf, data)))
    shutil.copytree(folder, mine)
    pristine = tables(open_cache(made, made[3]))
    capsys.readouterr()
    sig = open_cache(made, entry, key="k2")
    assert sig.folder == mine and "it was built for other teacher than this run's" in capsys.readouterr().err
    assert json.loads((mine / "meta.json").read_text())["fields"]["teacher"] == "k2"
    assert all(np.array_equal(tables(sig)[s], pristine[s]) for s in pristine)  # the same weights, here


def test_a_verified_array_is_hashed_once_after_each_change(made, tmp_path, monkeypatch):
    """Sizes every time; the checksum once after the file changed (a build checks what it wrote)."""
    from kdbench.signals import cached

    entry, folder = copy_of(made, tmp_path)
    calls: list[str] = []
    real = cached._sha256
    monkeypatch.setattr(cached, "_sha256", lambda p: calls.append(Path(p).name) or real(p))
    open_cache(made, entry)
    assert sorted(calls) == ["test.npy", "train.npy", "val.npy"]  # copies: other inodes than the ones checked
    calls.clear()
    open_cache(made, entry)
    assert calls == []
    os.utime(folder / "val.npy")  # touched: its (size, mtime) is not the one checked
    open_cache(made, entry)
    open_cache(made, entry)
    assert calls == ["val.npy"]
    calls.clear()
    (folder / "verified.json").write_text("{garbage")  # what it remembers is unreadable: checked again
    open_cache(made, entry)
    assert sorted(calls) == ["test.npy", "train.npy", "val.npy"]
    calls.clear()
    open_cache(made, made[3])
    assert calls == []  # the built one: checked when built


def test_a_nan_planted_behind_the_stamp_is_said_as_the_caches_fault_and_rebuilt_next_time(made, tmp_path, capsys):
    """A value changed with the file's mtime put back passes the cheap check; the lookups see the NaN, and
    the run stops naming the cache and the row (not 'diverged'); the next opening hashes and rebuilds it."""
    from kdbench.data import Batch
    from kdbench.errors import TeacherError

    entry, folder = copy_of(made, tmp_path)
    open_cache(made, entry)  # the copy verified (and stamped) once
    path = folder / "train.npy"
    st = path.stat()
    arr = np.load(path, mmap_mode="r+")
    arr[17, 1, 3] = np.inf
    arr.flush()
    del arr
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    sig = open_cache(made, entry)
    idx = torch.tensor([3, 17, 17, 5])
    out = sig(Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), idx, torch.tensor([0, 0, 1, 1])), "train")
    assert not torch.isfinite(out).all()
    with pytest.raises(TeacherError) as e:
        sig.check_finite()
    assert f"the teacher cache {folder} gave a non-finite logit (NaN/Inf) for train row 17 (view 1)" in str(e.value)
    rebuilt(made, entry, capsys, "train.npy does not match its checksum")


class Overflows(torch.nn.Module):
    """A teacher with finite weights whose logits overflow to Inf (then NaN) for one training image."""

    def __init__(self, inner, target: torch.Tensor):
        super().__init__()
        self.inner, self.target = inner, target

    def forward(self, x):
        out = self.inner(x)
        hit = torch.isclose(x.flatten(1), self.target.flatten(1).to(x.device)).all(1)
        return torch.where(hit[:, None], out * 1e38 * 1e38, out)


def test_a_teacher_that_gives_nan_is_refused_naming_the_row_and_nothing_is_cached(made, tmp_path):
    from kdbench.data import TensorLoader
    from kdbench.errors import TeacherError

    _, data, teacher, _, _ = made
    loader = TensorLoader(data.train_x, data.train_y, 8, augment="flip", mean=data.mean, std=data.std)
    target = loader.view_batch(torch.tensor([40]), torch.tensor([1]))
    entry = tmp_path / "entry"
    with pytest.raises(TeacherError) as e:
        open_cache(made, entry, teacher=Overflows(teacher, target))
    assert ("teacher mlp-digits-test gives a non-finite logit (NaN/Inf) for train row 40 (view 1) while its logits "
            "are cached") in str(e.value)
    assert [p.name for p in (entry / "cache").iterdir()] == [f"{made[4]}.lock"]  # no folder, no temporary one


@pytest.mark.parametrize("where", ["cache", "key", "lock"])
def test_a_file_where_the_cache_folder_should_be_is_said_so(made, tmp_path, capsys, where):
    """Defect 9: it was `could not write ...; the run record says 'failed'` (exit 4) when no record exists."""
    from kdbench.errors import exit_codes

    entry = tmp_path / "entry"
    (entry / "cache").mkdir(parents=True)
    planted = {"cache": entry / "cache", "key": entry / "cache" / made[4],
               "lock": entry / "cache" / f"{made[4]}.lock"}[where]
    if where == "cache":
        planted.rmdir()
    if where == "lock":
        planted.mkdir()
    else:
        planted.write_text("a user's file")
    with exit_codes(run=True) as ex:
        open_cache(made, entry)
    err = capsys.readouterr().err.strip()
    assert ex.code == 2 and len(err.splitlines()) == 1 and "record" not in err, err
    what = "is a folder where the teacher cache's lock file should be" if where == "lock" else \
        "is a file where the teacher cache's folder should be"
    assert err.startswith(f"kdbench: error: teacher_signal: {planted} {what}"), err
    assert planted.is_dir() if where == "lock" else planted.read_text() == "a user's file"


def test_a_temporary_folder_left_by_a_killed_build_is_removed_by_the_next_build(made, tmp_path, capsys):
    entry, folder = copy_of(made, tmp_path)
    stale = folder.with_name(f".{folder.name}.999999.tmp")
    stale.mkdir()
    (stale / "train.npy").write_bytes(b"half")
    (folder / "meta.json").unlink()
    rebuilt(made, entry, capsys, "meta.json is missing")
    assert not stale.exists()


def test_a_cache_of_other_teacher_weights_under_the_same_key_is_rebuilt(made, tmp_path, capsys):
    """An entry retrained or re-imported under the same key: the cache was of the old weights, and was used."""
    from kdbench.models import build_model

    _, data, teacher, _, _ = made
    entry, _ = copy_of(made, tmp_path)
    torch.manual_seed(1)
    other = build_model("mlp", data.num_classes, data.input_shape, hidden=[16]).eval()
    capsys.readouterr()
    sig = open_cache(made, entry, teacher=other)
    assert "it was built from other teacher weights" in capsys.readouterr().err
    from kdbench.data import TensorLoader

    n = len(data.test_y)
    x = TensorLoader(data.test_x, data.test_y, n, mean=data.mean, std=data.std).view_batch(
        torch.arange(n), torch.zeros(n, dtype=torch.long))
    with torch.inference_mode():
        want = other(x)
    torch.testing.assert_close(torch.from_numpy(tables(sig)["test"][:, 0]), want.float(), rtol=1e-5, atol=1e-5)
    open_cache(made, entry, teacher=other)
    assert "broken" not in capsys.readouterr().err


def test_a_stray_val_array_beside_a_cache_without_validation_split_is_not_read(made, tmp_path):
    """val_size 0 (validation on the test set): a val.npy planted there was looked up for validation."""
    from kdbench.data import Batch
    from kdbench.signals.cached import CachedSignal, build, verify

    conf, data, teacher, _, _ = made
    p = {"family": "none", "views": 1, "num_classes": 10, "dtype": "float32", "n_train": len(data.train_y),
         "n_val": 0, "n_test": len(data.test_y)}
    folder = tmp_path / "cache"
    data_no_val = type(data)(**{**data.__dict__, "val_x": None, "val_y": None})
    build(folder, teacher, conf, data_no_val, p)
    np.save(folder / "val.npy", np.full((len(data.test_y), 1, 10), 1e6, dtype=np.float32))
    meta = json.loads((folder / "meta.json").read_text())
    assert verify(folder, p) is None
    sig = CachedSignal(folder, meta)
    first = Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), torch.arange(4), torch.zeros(4, dtype=torch.long))
    assert torch.equal(sig(first, "val"), sig(first, "test"))
