"""Tests for kdbench.data: the dataset sources, TensorLoader, augmentation and split_train_val.

Real data comes from /work/shared/data (skipped where absent); everything else is made in tmp_path.
Nothing here touches the network: every torchvision dataset is built with download=False.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch

from kdbench.data import (
    DATASETS,
    Batch,
    TensorData,
    TensorLoader,
    dataset_names,
    load_dataset,
    register_dataset,
    split_train_val,
)
from kdbench.data.augment import AUGMENTS, apply, apply_views, decode_view, draw_views, num_views
from kdbench.data.build import finish
from kdbench.data.bundled import oracle_teacher
from kdbench.data.imagefolder import CIFAR10_CLASSES, CIFAR10_JPEG_NOTE
from kdbench.errors import ConfigError, DataError

SHARED = Path(os.environ.get("KDBENCH_SHARED_DATA", "/work/shared/data"))
MNIST_RAW = SHARED / "MNIST" / "raw"
CIFAR_JPEG = SHARED / "cifar10-jpeg.tar.gz"
needs_mnist = pytest.mark.skipif(not (MNIST_RAW / "train-images-idx3-ubyte").is_file(),
                                 reason="real MNIST not available")
needs_cifar_jpeg = pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="CIFAR-10 JPEG archive not available")


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    """Keep every default cache inside tmp_path, and make sure no test can reach the network."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KDBENCH_DATA_ROOT", raising=False)
    import urllib.request

    def _no_network(*a, **k):
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)


@pytest.fixture(scope="module")
def mnist():
    if not (MNIST_RAW / "train-images-idx3-ubyte").is_file():
        pytest.skip("real MNIST not available")
    return load_dataset({"name": "mnist", "root": str(SHARED)})


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"})


# --------------------------------------------------------------------------------------------- registry


def test_registry_and_bad_names():
    names = dataset_names()
    for n in ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"):
        assert n in names and DATASETS[n].name == n
    assert DATASETS["cifar10"].default_augment == "crop_flip" and DATASETS["mnist"].default_augment == "none"
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DATASETS["digits"])
    with pytest.raises(ConfigError) as e:
        load_dataset({"name": "imagenet"})
    assert e.value.key == "dataset.name" and "mnist" in e.value.message
    with pytest.raises(ConfigError):
        load_dataset({})
    with pytest.raises(ConfigError) as e:
        load_dataset({"name": "digits", "train_subset": 0})
    assert e.value.key == "dataset.train_subset"
    with pytest.raises(ConfigError):
        load_dataset({"name": "synthetic", "n_train": "many"})


def test_omegaconf_struct_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "synthetic", "n_train": 50, "n_test": 20, "root": None})
    OmegaConf.set_struct(cfg, True)
    d = load_dataset(cfg)
    assert d.train_x.shape == (50, 20) and d.test_x.shape == (20, 20)


# --------------------------------------------------------------------------------------------- digits


def test_digits(digits):
    from sklearn.datasets import load_digits

    d = digits
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 8, 8)
    assert d.train_y.dtype == torch.int64 and d.num_classes == 10
    assert d.train_x.shape[0] + d.test_x.shape[0] == 1797
    assert d.test_x.shape[0] == round(0.25 * 1797)
    assert int(d.train_x.max()) == 255 and int(d.train_x.min()) == 0
    # train + test is exactly the dataset (a partition): compare the multisets of (image, label) rows
    ref = load_digits()
    ref_x = torch.from_numpy(ref.images).mul(255 / 16).round().to(torch.uint8).reshape(1797, -1)
    ref_rows = sorted(map(tuple, torch.cat([ref_x, torch.from_numpy(ref.target)[:, None].to(torch.uint8)], 1).tolist()))
    got = torch.cat([torch.cat([d.train_x, d.test_x]).reshape(1797, -1),
                     torch.cat([d.train_y, d.test_y])[:, None].to(torch.uint8)], 1)
    assert sorted(map(tuple, got.tolist())) == ref_rows
    # deterministic, and class-balanced test split
    again = load_dataset({"name": "digits"})
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)
    counts = torch.bincount(d.test_y, minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    mean = d.train_x.double().div(255).mean().item()
    assert abs(d.mean[0] - mean) < 1e-3 and d.std[0] > 0.1


def test_subsets_are_fixed_balanced_prefixes(digits):
    small = load_dataset({"name": "digits", "train_subset": 100, "test_subset": 30})
    big = load_dataset({"name": "digits", "train_subset": 200})
    assert small.train_x.shape[0] == 100 and small.test_x.shape[0] == 30
    assert big.test_x.shape[0] == digits.test_x.shape[0]
    assert torch.bincount(small.train_y, minlength=10).tolist() == [10] * 10
    assert small.info["sizes"] == {"train": 100, "test": 30} and small.info["full_sizes"]["train"] == 1348
    # the 100-subset is contained in the 200-subset (prefixes of one fixed order)
    rows = {tuple(r) for r in big.train_x.reshape(200, -1).tolist()}
    assert all(tuple(r) in rows for r in small.train_x.reshape(100, -1).tolist())
    huge = load_dataset({"name": "digits", "train_subset": 10**6})
    assert torch.equal(huge.train_x, digits.train_x)


def test_label_range_is_checked():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError) as e:
        finish("toy", {}, train_x=x, train_y=torch.tensor([0, 1, 2, 3]), test_x=x,
               test_y=torch.tensor([0, 1, 1, 0]), num_classes=3, mean=(0.0,), std=(1.0,), default_augment="none")
    assert e.value.key == "dataset" and "[0, 3)" in e.value.message
    with pytest.raises(DataError):
        finish("toy", {}, train_x=x, train_y=torch.tensor([0, 1, -1, 0]), test_x=x,
               test_y=torch.tensor([0, 1, 1, 0]), num_classes=3, mean=(0.0,), std=(1.0,), default_augment="none")


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_oracle_and_determinism():
    d = load_dataset({"name": "synthetic", "n_train": 500, "n_test": 300, "dim": 7, "num_classes": 4, "seed": 3})
    assert d.train_x.shape == (500, 7) and d.train_x.dtype == torch.float32 and d.num_classes == 4
    assert not d.is_image and d.default_augment == "none"
    teacher = oracle_teacher(d)
    assert all(not p.requires_grad for p in teacher.parameters())
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        assert torch.equal(teacher(x).argmax(1), y)
    assert d.info["oracle_test_acc"] == 1.0
    assert len(torch.unique(d.train_y)) == 4
    same = load_dataset({"name": "synthetic", "n_train": 500, "n_test": 300, "dim": 7, "num_classes": 4, "seed": 3})
    assert torch.equal(same.train_x, d.train_x) and torch.equal(same.test_y, d.test_y)
    other = load_dataset({"name": "synthetic", "n_train": 500, "n_test": 300, "dim": 7, "num_classes": 4, "seed": 4})
    assert not torch.equal(other.train_x, d.train_x)
    # label noise changes labels, never features
    noisy = load_dataset({"name": "synthetic", "n_train": 500, "n_test": 300, "dim": 7, "num_classes": 4,
                          "seed": 3, "noise": 2.0})
    assert torch.equal(noisy.train_x, d.train_x)
    agree = (noisy.train_y == d.train_y).float().mean().item()
    assert 0.3 < agree < 0.95 and noisy.info["oracle_test_acc"] < 1.0
    with pytest.raises(DataError):
        oracle_teacher(load_dataset({"name": "digits", "train_subset": 10}))


def test_synthetic_defaults():
    d = load_dataset({"name": "synthetic"})
    assert d.train_x.shape == (4000, 20) and d.test_x.shape == (1000, 20) and d.num_classes == 5


# --------------------------------------------------------------------------------------------- MNIST


@needs_mnist
def test_mnist_real(mnist):
    d = mnist
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert int(d.train_y[0]) == 5 and d.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert int(d.test_y[0]) == 7
    assert d.train_y.min() == 0 and d.train_y.max() == 9 and d.num_classes == 10
    assert d.mean == (0.1307,) and d.std == (0.3081,) and d.default_augment == "none"
    assert len(d.class_names) == 10


@needs_mnist
def test_mnist_subset_and_root_forms(mnist):
    d = load_dataset({"name": "mnist", "root": str(MNIST_RAW), "train_subset": 1000, "test_subset": 100})
    assert d.train_x.shape == (1000, 1, 28, 28) and d.test_x.shape[0] == 100
    assert torch.bincount(d.train_y, minlength=10).tolist() == [100] * 10
    # the subset rows are real MNIST rows, in dataset order
    first = d.train_x[0]
    assert any(torch.equal(first, mnist.train_x[i]) for i in range(200))


@pytest.mark.parametrize("name, folder, expect", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "meta"),
])
def test_missing_files_name_what_was_expected(tmp_path, name, folder, expect):
    with pytest.raises(DataError) as e:
        load_dataset({"name": name, "root": str(tmp_path), "download": False})
    assert e.value.key == "dataset.root"
    assert expect in e.value.message and str(tmp_path / folder) in e.value.message
    assert "download=true" in e.value.message and "\n" not in str(e.value)


def _mnist_copy(tmp_path: Path, broken: str, data: bytes) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW.iterdir():
        if f.name == broken:
            (raw / f.name).write_bytes(data)
        else:
            (raw / f.name).symlink_to(f)
    return tmp_path


@needs_mnist
@pytest.mark.parametrize("broken, cut", [("train-images-idx3-ubyte", 100_000), ("t10k-labels-idx1-ubyte", 9),
                                         ("train-labels-idx1-ubyte", 60_007)])
def test_truncated_idx_is_a_data_error(tmp_path, broken, cut):
    data = (MNIST_RAW / broken).read_bytes()[:cut]
    root = _mnist_copy(tmp_path, broken, data)
    with pytest.raises(DataError) as e:
        load_dataset({"name": "mnist", "root": str(root)})
    assert e.value.key == "dataset.root" and broken in e.value.message and "truncated" in e.value.message


@needs_mnist
def test_corrupted_idx_header_is_a_data_error(tmp_path):
    data = bytearray((MNIST_RAW / "t10k-images-idx3-ubyte").read_bytes())
    data[2] = 0x1F
    root = _mnist_copy(tmp_path, "t10k-images-idx3-ubyte", bytes(data))
    with pytest.raises(DataError) as e:
        load_dataset({"name": "mnist", "root": str(root)})
    assert "t10k-images-idx3-ubyte" in e.value.message


def test_gz_only_copy_gets_a_hint(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as e:
        load_dataset({"name": "mnist", "root": str(tmp_path)})
    assert "gunzip" in e.value.message


def test_corrupted_cifar_pickle_is_a_data_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
              "batches.meta"]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        load_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert e.value.key == "dataset.root" and "md5" in e.value.message


# --------------------------------------------------------------------------------------------- image folders


COLORS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}


def _write_image(path: Path, img: torch.Tensor) -> None:
    from torchvision.io import encode_jpeg, encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_png(img) if path.suffix == ".png" else encode_jpeg(img, quality=95)
    path.write_bytes(bytes(data.numpy().tobytes()))


def _make_tree(root: Path, size: int = 8, test_classes=("cat", "dog")) -> Path:
    for split, classes, n in (("train", tuple(COLORS), 4), ("test", test_classes, 2)):
        for c in classes:
            for i in range(n):
                img = torch.tensor(COLORS[c], dtype=torch.uint8)[:, None, None].expand(3, size, size).clone()
                img[:, 0, 0] = i  # a per-file marker in one corner pixel
                _write_image(root / split / c / f"{i:03d}.png", img)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden").mkdir()
    return root


def _tar(tree: Path, out: Path, arcprefix: str = "") -> Path:
    with tarfile.open(out, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=f"{arcprefix}{split}")
    return out


def test_imagefolder_directory(tmp_path):
    tree = _make_tree(tmp_path / "tree")
    d = load_dataset({"name": "imagefolder", "root": str(tree), "cache_dir": str(tmp_path / "c")})
    assert d.class_names == ["cat", "dog", "emu"] and d.num_classes == 3
    assert d.train_x.shape == (12, 3, 8, 8) and d.test_x.shape == (4, 3, 8, 8)
    assert d.train_x.dtype == torch.uint8 and d.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.test_y.tolist() == [0, 0, 1, 1]
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, lab in zip(x, y):
            assert img[:, 4, 4].tolist() == list(COLORS[d.class_names[lab]])  # PNG is lossless
    assert d.train_x[:4, 0, 0, 0].tolist() == [0, 1, 2, 3]  # files in sorted order
    assert d.default_augment == "flip" and len(d.mean) == 3
    assert abs(d.mean[0] - d.train_x[:, 0].double().div(255).mean().item()) < 1e-3
    assert not d.info["cached"]
    again = load_dataset({"name": "imagefolder", "root": str(tree), "cache_dir": str(tmp_path / "c")})
    assert again.info["cached"] and torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)
    # changing a file invalidates the cache
    _write_image(tree / "train" / "emu" / "009.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    third = load_dataset({"name": "imagefolder", "root": str(tree), "cache_dir": str(tmp_path / "c")})
    assert not third.info["cached"] and third.train_x.shape[0] == 13
    sub = load_dataset({"name": "imagefolder", "root": str(tree), "train_subset": 6, "cache_dir": str(tmp_path / "c")})
    assert sub.train_x.shape[0] == 6 and torch.bincount(sub.train_y).tolist() == [2, 2, 2]


def test_imagefolder_archive_and_jpeg(tmp_path):
    tree = _make_tree(tmp_path / "tree", size=32)
    ref = load_dataset({"name": "imagefolder", "root": str(tree), "cache_dir": str(tmp_path / "c")})
    assert ref.default_augment == "crop_flip"
    for name, prefix in (("data.tar.gz", ""), ("wrapped.tgz", "mydata/"), ("dot.tar", "./")):
        arc = _tar(tree, tmp_path / name, prefix)
        d = load_dataset({"name": "imagefolder", "root": str(arc), "cache_dir": str(tmp_path / "c")})
        assert torch.equal(d.train_x, ref.train_x) and torch.equal(d.test_y, ref.test_y)
        assert d.class_names == ref.class_names and d.info["archive"]
    # JPEG (lossy) decodes to the right shape and roughly the right colours; gray PNGs give one channel
    jtree = tmp_path / "jpg"
    for split in ("train", "test"):
        for c in ("a", "b"):
            _write_image(jtree / split / c / "x.jpg", torch.full((3, 16, 16), 120 if c == "a" else 30,
                                                                 dtype=torch.uint8))
            _write_image(jtree / split / c / "y.jpeg", torch.full((3, 16, 16), 120 if c == "a" else 30,
                                                                  dtype=torch.uint8))
    d = load_dataset({"name": "imagefolder", "root": str(jtree)})
    assert d.train_x.shape == (4, 3, 16, 16) and (d.train_x[:2].float().mean() - 120).abs() < 3
    gtree = tmp_path / "gray"
    for split in ("train", "test"):
        _write_image(gtree / split / "only" / "g.png", torch.full((1, 5, 7), 9, dtype=torch.uint8))
    g = load_dataset({"name": "imagefolder", "root": str(gtree)})
    assert g.train_x.shape == (1, 1, 5, 7) and g.num_classes == 1


def test_imagefolder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(empty)})
    assert e.value.key == "dataset.root" and "no images found" in e.value.message and "train" in e.value.message

    no_test = tmp_path / "notest"
    _write_image(no_test / "train" / "a" / "1.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(no_test)})
    assert "test" in e.value.message

    extra = _make_tree(tmp_path / "extra")
    _write_image(extra / "test" / "yak" / "1.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(extra)})
    assert "yak" in e.value.message

    odd = _make_tree(tmp_path / "odd")
    _write_image(odd / "train" / "dog" / "002.png", torch.zeros(3, 9, 8, dtype=torch.uint8))
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(odd)})
    assert "dog/002.png" in e.value.message and "size" in e.value.message

    bad = _make_tree(tmp_path / "bad")
    (bad / "train" / "emu" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(bad)})
    assert "emu/001.png" in e.value.message

    with pytest.raises(DataError):
        load_dataset({"name": "imagefolder", "root": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError):
        load_dataset({"name": "imagefolder"})
    notar = tmp_path / "x.tar.gz"
    notar.write_bytes(b"hello")
    with pytest.raises(DataError):
        load_dataset({"name": "imagefolder", "root": str(notar)})
    with pytest.raises(DataError) as e:
        load_dataset({"name": "cifar10_jpeg", "root": str(_make_tree(tmp_path / "notcifar"))})
    assert "CIFAR-10" in e.value.message


@pytest.mark.parametrize("evil", ["../evil.png", "train/cat/../../../evil.png", "/tmp/evil.png"])
def test_unsafe_archive_is_rejected(tmp_path, evil):
    tree = _make_tree(tmp_path / "tree")
    arc = tmp_path / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=split)
        payload = (tree / "train" / "cat" / "000.png").read_bytes()
        info = tarfile.TarInfo(evil)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError) as e:
        load_dataset({"name": "imagefolder", "root": str(arc), "cache_dir": str(tmp_path / "c")})
    assert "unsafe" in e.value.message and evil in e.value.message
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


@needs_cifar_jpeg
def test_real_cifar10_jpeg_slice(tmp_path):
    cfg = {"name": "imagefolder", "root": str(CIFAR_JPEG), "train_subset": 500, "test_subset": 200,
           "cache_dir": str(tmp_path / "c")}
    d = load_dataset(cfg)
    assert d.train_x.shape == (500, 3, 32, 32) and d.test_x.shape == (200, 3, 32, 32)
    assert tuple(d.class_names) == CIFAR10_CLASSES and d.num_classes == 10
    assert torch.bincount(d.train_y, minlength=10).tolist() == [50] * 10
    assert d.info["note"] == CIFAR10_JPEG_NOTE and d.info["full_sizes"] == {"train": 50000, "test": 10000}
    assert d.default_augment == "crop_flip"
    assert all(abs(m - r) < 0.03 for m, r in zip(d.mean, (0.4914, 0.4822, 0.4465)))
    again = load_dataset(cfg)
    assert again.info["cached"] and torch.equal(again.train_x, d.train_x)
    alias = load_dataset({**cfg, "name": "cifar10_jpeg"})
    assert alias.name == "cifar10_jpeg" and torch.equal(alias.test_y, d.test_y)


# --------------------------------------------------------------------------------------------- TensorLoader


def test_loader_covers_every_index_once_and_is_deterministic(digits):
    n = digits.train_x.shape[0]
    loader = TensorLoader(digits.train_x, digits.train_y, 100, shuffle=True, seed=7)
    assert len(loader) == -(-n // 100)
    epochs = []
    for _ in range(2):
        idx = torch.cat([b.idx for b in loader])
        assert torch.equal(idx.sort().values, torch.arange(n))
        epochs.append(idx)
    assert not torch.equal(epochs[0], epochs[1]) and loader.epoch == 2
    other = TensorLoader(digits.train_x, digits.train_y, 100, shuffle=True, seed=7)
    other.set_epoch(1)
    assert torch.equal(torch.cat([b.idx for b in other]), epochs[1])
    for xb, yb, ib, _ in TensorLoader(digits.train_x, digits.train_y, 64, shuffle=True, seed=1):
        assert torch.equal(yb, digits.train_y[ib]) and xb.dtype == torch.float32
    dl = TensorLoader(digits.train_x, digits.train_y, 100, drop_last=True)
    assert len(dl) == n // 100 and sum(b.x.shape[0] for b in dl) == (n // 100) * 100


def test_loader_normalises_with_mean_std(digits):
    loader = TensorLoader(digits.test_x, digits.test_y, 50, mean=digits.mean, std=digits.std)
    xb, yb, ib, vb = next(iter(loader))
    expect = (digits.test_x[:50].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(xb, expect) and torch.equal(ib, torch.arange(50))
    assert vb.dtype == torch.int64 and torch.equal(vb, torch.zeros(50, dtype=torch.long))
    rgb = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    xb = next(iter(TensorLoader(rgb, torch.zeros(6, dtype=torch.long), 6, mean=mean, std=std))).x
    for c in range(3):
        assert torch.allclose(xb[:, c], (rgb[:, c].float() / 255 - mean[c]) / std[c])
    feats = torch.randn(10, 4)
    xb = next(iter(TensorLoader(feats, torch.zeros(10, dtype=torch.long), 10, mean=(1.0,), std=(2.0,)))).x
    assert torch.allclose(xb, (feats - 1) / 2)


@needs_mnist
def test_augment_shapes_and_channels_last(mnist):
    x, y = mnist.train_x[:64], mnist.train_y[:64]
    for aug in ("crop_flip", "jitter", "flip", "none"):
        xb = next(iter(TensorLoader(x, y, 32, augment=aug, shuffle=True, mean=mnist.mean, std=mnist.std))).x
        assert xb.shape == (32, 1, 28, 28) and torch.isfinite(xb).all()
    rgb = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    xb = next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8, augment="crop_flip",
                                channels_last=True))).x
    assert xb.shape == (8, 3, 32, 32) and xb.is_contiguous(memory_format=torch.channels_last)
    xb = next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8))).x
    assert xb.is_contiguous() and not xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8, augment="rotate")))


def test_jitter_moves_content_by_at_most_two_pixels():
    x = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 14, 14] = 255
    y = torch.zeros(256, dtype=torch.long)
    xb = next(iter(TensorLoader(x, y, 256, augment="jitter", shuffle=True, seed=3))).x
    flat = xb.reshape(256, -1)
    assert torch.equal((flat > 0.5).sum(1), torch.ones(256, dtype=torch.long))  # the pixel never falls off
    pos = flat.argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 15  # all 25 offsets are possible; most show up
    # crop_flip: shifts of up to 4 px, then maybe a mirror (column 14 -> 13)
    batch = next(iter(TensorLoader(x, y, 256, augment="crop_flip", shuffle=True, seed=3)))
    xb = batch.x
    pos = xb.reshape(256, -1).argmax(1)
    assert (pos // 28 - 14).abs().max() <= 4 and ((pos % 28) - 13.5).abs().max() <= 4.5
    # the view codes say where the pixel went: crop corner (dy, dx) in the 36x36 padded image, then the mirror
    for p, v in zip(pos.tolist(), batch.view.tolist()):
        d = decode_view("crop_flip", v)
        col = 18 - d["dx"]
        assert (p // 28, p % 28) == (18 - d["dy"], 27 - col if d["flip"] else col)
    # deterministic per (seed, epoch)
    again = next(iter(TensorLoader(x, y, 256, augment="crop_flip", shuffle=True, seed=3))).x
    assert torch.equal(again, xb)


# --------------------------------------------------------------------------------------------- view codes

IMAGE_AUGMENTS = ("crop_flip", "jitter", "flip")


def _distinct_image(c: int = 2, h: int = 6, w: int = 7) -> torch.Tensor:
    """A float image whose pixels are all different and nonzero (zero is the padding), H != W."""
    return torch.arange(1, c * h * w + 1, dtype=torch.float32).view(c, h, w)


def _reference_view(img: torch.Tensor, pad: int, dy: int, dx: int, flip: int) -> torch.Tensor:
    """Zero-pad by hand, slice the crop, mirror: independent of the gather in apply_views."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = padded[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def test_num_views_and_encoding():
    assert AUGMENTS == ("none", "crop_flip", "jitter", "flip")
    assert [num_views(a) for a in AUGMENTS] == [1, 162, 25, 2]
    assert decode_view("none", 0) == {"dy": 0, "dx": 0, "flip": 0}
    assert decode_view("flip", 1) == {"dy": 0, "dx": 0, "flip": 1}
    assert decode_view("jitter", 12) == {"dy": 2, "dx": 2, "flip": 0}  # the unshifted crop
    assert decode_view("jitter", 7) == {"dy": 1, "dx": 2, "flip": 0}
    assert decode_view("crop_flip", (3 * 9 + 8) * 2 + 1) == {"dy": 3, "dx": 8, "flip": 1}
    for name, pad, flips in (("none", 0, False), ("flip", 0, True), ("jitter", 2, False), ("crop_flip", 4, True)):
        seen = set()
        for code in range(num_views(name)):
            d = decode_view(name, code)
            assert 0 <= d["dy"] <= 2 * pad and 0 <= d["dx"] <= 2 * pad and d["flip"] in ((0, 1) if flips else (0,))
            assert code == (d["dy"] * (2 * pad + 1) + d["dx"]) * (2 if flips else 1) + d["flip"]
            seen.add((d["dy"], d["dx"], d["flip"]))
        assert len(seen) == num_views(name)
    for bad in (-1, 162):
        with pytest.raises(ValueError):
            decode_view("crop_flip", bad)
    for f in (num_views, lambda n: decode_view(n, 0), lambda n: draw_views(n, 3, torch.Generator())):
        with pytest.raises(ValueError, match="rotate"):
            f("rotate")


@pytest.mark.parametrize("name", AUGMENTS)
def test_every_view_is_distinct_and_matches_a_hand_built_reference(name):
    pad = {"none": 0, "flip": 0, "jitter": 2, "crop_flip": 4}[name]
    img = _distinct_image()
    k = num_views(name)
    codes = torch.arange(k)
    out = apply_views(name, img.expand(k, *img.shape).contiguous(), codes)
    assert out.shape == (k, *img.shape) and out.dtype == img.dtype
    # as many distinct outputs as codes: distinct crops/flips really differ
    assert len({tuple(o.flatten().tolist()) for o in out}) == k
    for code in range(k):
        d = decode_view(name, code)
        assert torch.equal(out[code], _reference_view(img, pad, d["dy"], d["dx"], d["flip"])), (name, code)
    # the same codes in a shuffled, mixed batch of different images: each row depends only on its own (image, code)
    imgs = torch.rand(40, 3, 5, 9)
    views = torch.randint(0, k, (40,), generator=torch.Generator().manual_seed(1))
    mixed = apply_views(name, imgs, views)
    for i in range(40):
        d = decode_view(name, int(views[i]))
        assert torch.equal(mixed[i], _reference_view(imgs[i], pad, d["dy"], d["dx"], d["flip"]))
    with pytest.raises(ValueError):
        apply_views(name, img[None], torch.tensor([k]))
    with pytest.raises(ValueError):
        apply_views(name, img[None], torch.tensor([0, 0]))
    # feature vectors pass through and have only view 0
    feats = torch.randn(4, 3)
    assert apply_views(name, feats, torch.zeros(4, dtype=torch.long)) is feats
    if k > 1:
        with pytest.raises(ValueError):
            apply_views(name, feats, torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize("name, n", [("crop_flip", 162_000), ("jitter", 25_000), ("flip", 20_000)])
def test_draw_views_is_uniform(name, n):
    k = num_views(name)
    views = draw_views(name, n, torch.Generator().manual_seed(0))
    assert views.shape == (n,) and views.dtype == torch.int64 and views.device.type == "cpu"
    assert int(views.min()) >= 0 and int(views.max()) < k
    counts = torch.bincount(views, minlength=k).double()
    expected = n / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with k-1 degrees of freedom: mean k-1, sd sqrt(2(k-1)); 6 sd is far from flaky yet catches bias
    df = k - 1
    assert chi2 < df + 6 * (2 * df) ** 0.5 + 10, chi2
    assert counts.min() > 0
    # the same generator state gives the same codes; apply() is apply_views of freshly drawn codes
    assert torch.equal(draw_views(name, n, torch.Generator().manual_seed(0)), views)
    x = torch.rand(64, 3, 8, 8)
    assert torch.equal(apply(name, x, torch.Generator().manual_seed(5)),
                       apply_views(name, x, draw_views(name, 64, torch.Generator().manual_seed(5))))
    assert torch.equal(draw_views("none", 7, torch.Generator()), torch.zeros(7, dtype=torch.long))


@pytest.mark.parametrize("name, channels_last", [("crop_flip", False), ("crop_flip", True), ("jitter", False),
                                                 ("flip", True)])
def test_view_batch_replays_every_batch_bit_for_bit(name, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (203, 3, 10, 12), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (203,), generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    loader = TensorLoader(x, y, 32, shuffle=True, augment=name, seed=11, mean=mean, std=std,
                          channels_last=channels_last)
    assert loader.num_views == num_views(name)
    loader.set_epoch(3)
    batches = list(loader)
    assert len(batches) == 7 and loader.epoch == 4
    for b in batches:
        assert isinstance(b, Batch) and b._fields == ("x", "y", "idx", "view")
        assert b.view.dtype == torch.int64 and b.view.shape == b.idx.shape and b.view.device == b.x.device
        again = loader.view_batch(b.idx, b.view)
        assert torch.equal(again, b.x) and again.stride() == b.x.stride()
        # row by row, in any order or grouping: (idx, view) alone fixes the input
        perm = torch.randperm(len(b.idx), generator=g)[:5]
        assert torch.equal(loader.view_batch(b.idx[perm].tolist(), b.view[perm].tolist()), b.x[perm])
        assert torch.equal(b.y, y[b.idx])
    all_views = torch.cat([b.view for b in batches])
    assert len(set(all_views.tolist())) > num_views(name) // 2  # views really vary
    # the plan of an epoch is the batches' (idx, view), without building inputs or advancing the epoch
    plan = list(loader.plan(3))
    assert loader.epoch == 4 and len(plan) == len(batches)
    assert all(torch.equal(i, b.idx) and torch.equal(v, b.view) for (i, v), b in zip(plan, batches))
    # a shard replays too
    loader.set_shard(1, 3)
    for b in loader:
        assert torch.equal(loader.view_batch(b.idx, b.view), b.x)
    with pytest.raises(ValueError):
        loader.view_batch([0, 1], [0, num_views(name)])
    with pytest.raises(ValueError):
        loader.view_batch([0, 1], [0])


def test_view_is_zero_without_augmentation_and_for_features():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=g)
    feats = torch.randn(50, 4, generator=g)
    y = torch.zeros(50, dtype=torch.long)
    for x, aug in ((img, "none"), (feats, "none"), (feats, "crop_flip"), (feats, "jitter")):
        loader = TensorLoader(x, y, 16, shuffle=True, augment=aug, seed=2, mean=(0.5,), std=(2.0,))
        assert loader.num_views == 1
        for b in loader:
            assert torch.equal(b.view, torch.zeros(len(b.idx), dtype=torch.long))
            expect = (x[b.idx].float() / (255 if x.dtype == torch.uint8 else 1) - 0.5) / 2.0
            assert torch.equal(b.x, expect)
            assert torch.equal(loader.view_batch(b.idx), b.x) and torch.equal(loader.view_batch(b.idx, b.view), b.x)
        with pytest.raises(ValueError):
            loader.view_batch([0], [1])
    with pytest.raises(ValueError, match="rotate"):
        TensorLoader(img, y, 8, augment="rotate")


def test_same_seed_and_epoch_same_batches_other_epochs_other_views():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (100,), generator=g)

    def epoch(e, seed=5):
        ld = TensorLoader(x, y, 25, shuffle=True, augment="crop_flip", seed=seed)
        ld.set_epoch(e)
        return list(ld)

    a, b = epoch(2), epoch(2)
    for p, q in zip(a, b):
        assert all(torch.equal(s, t) for s, t in zip(p, q))
    for other in (epoch(3), epoch(2, seed=6)):
        views_a = torch.zeros(100, dtype=torch.long)
        views_o = torch.zeros(100, dtype=torch.long)
        for p, q in zip(a, other):
            views_a[p.idx], views_o[q.idx] = p.view, q.view
        assert (views_a != views_o).float().mean() > 0.9  # 1/162 chance per example to agree
    # an unshuffled loader still draws new views every epoch it is told to
    ld = TensorLoader(x, y, 100, augment="jitter")
    v0 = next(iter(ld)).view
    ld.set_epoch(1)
    assert not torch.equal(next(iter(ld)).view, v0)


# --------------------------------------------------------------------------------------------- split_train_val


def _indexed(n: int = 100) -> TensorData:
    x = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n) % 3
    return TensorData(name="toy", train_x=x, train_y=y, test_x=x[:5], test_y=y[:5], num_classes=3)


def test_split_train_val():
    d = _indexed()
    s = split_train_val(d, 20, seed=1)
    assert s.train_x.shape[0] == 80 and s.val_x.shape[0] == 20
    tr, va = set(s.train_x[:, 0].long().tolist()), set(s.val_x[:, 0].long().tolist())
    assert not tr & va and tr | va == set(range(100))
    assert torch.equal(s.val_y, s.val_x[:, 0].long() % 3)
    assert torch.equal(split_train_val(d, 20, seed=1).val_x, s.val_x)
    assert not torch.equal(split_train_val(d, 20, seed=2).val_x, s.val_x)
    assert split_train_val(d, 0.1).val_x.shape[0] == 10 and s.info["val_size"] == 20
    assert split_train_val(d, 0) is d
    with pytest.raises(ValueError):
        split_train_val(d, 100)
