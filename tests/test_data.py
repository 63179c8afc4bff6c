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

from kdbench.data import DATASETS, TensorData, TensorLoader, dataset_names, load_dataset, split_train_val
from kdbench.data.sources import CIFAR10_CLASSES, CIFAR10_JPEG_NOTE, _finish, oracle_teacher
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
        _finish("toy", {}, train_x=x, train_y=torch.tensor([0, 1, 2, 3]), test_x=x,
                test_y=torch.tensor([0, 1, 1, 0]), num_classes=3, mean=(0.0,), std=(1.0,), default_augment="none")
    assert e.value.key == "dataset" and "[0, 3)" in e.value.message
    with pytest.raises(DataError):
        _finish("toy", {}, train_x=x, train_y=torch.tensor([0, 1, -1, 0]), test_x=x,
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
        idx = torch.cat([i for _, _, i in loader])
        assert torch.equal(idx.sort().values, torch.arange(n))
        epochs.append(idx)
    assert not torch.equal(epochs[0], epochs[1]) and loader.epoch == 2
    other = TensorLoader(digits.train_x, digits.train_y, 100, shuffle=True, seed=7)
    other.set_epoch(1)
    assert torch.equal(torch.cat([i for _, _, i in other]), epochs[1])
    for xb, yb, ib in TensorLoader(digits.train_x, digits.train_y, 64, shuffle=True, seed=1):
        assert torch.equal(yb, digits.train_y[ib]) and xb.dtype == torch.float32
    dl = TensorLoader(digits.train_x, digits.train_y, 100, drop_last=True)
    assert len(dl) == n // 100 and sum(x.shape[0] for x, _, _ in dl) == (n // 100) * 100


def test_loader_normalises_with_mean_std(digits):
    loader = TensorLoader(digits.test_x, digits.test_y, 50, mean=digits.mean, std=digits.std)
    xb, yb, ib = next(iter(loader))
    expect = (digits.test_x[:50].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(xb, expect) and torch.equal(ib, torch.arange(50))
    rgb = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    xb, _, _ = next(iter(TensorLoader(rgb, torch.zeros(6, dtype=torch.long), 6, mean=mean, std=std)))
    for c in range(3):
        assert torch.allclose(xb[:, c], (rgb[:, c].float() / 255 - mean[c]) / std[c])
    feats = torch.randn(10, 4)
    xb, _, _ = next(iter(TensorLoader(feats, torch.zeros(10, dtype=torch.long), 10, mean=(1.0,), std=(2.0,))))
    assert torch.allclose(xb, (feats - 1) / 2)


@needs_mnist
def test_augment_shapes_and_channels_last(mnist):
    x, y = mnist.train_x[:64], mnist.train_y[:64]
    for aug in ("crop_flip", "jitter", "flip", "none"):
        xb, _, _ = next(iter(TensorLoader(x, y, 32, augment=aug, shuffle=True, mean=mnist.mean, std=mnist.std)))
        assert xb.shape == (32, 1, 28, 28) and torch.isfinite(xb).all()
    rgb = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    xb, _, _ = next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8, augment="crop_flip",
                                      channels_last=True)))
    assert xb.shape == (8, 3, 32, 32) and xb.is_contiguous(memory_format=torch.channels_last)
    xb, _, _ = next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8)))
    assert xb.is_contiguous() and not xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        next(iter(TensorLoader(rgb, torch.zeros(8, dtype=torch.long), 8, augment="rotate")))


def test_jitter_moves_content_by_at_most_two_pixels():
    x = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 14, 14] = 255
    y = torch.zeros(256, dtype=torch.long)
    xb, _, _ = next(iter(TensorLoader(x, y, 256, augment="jitter", shuffle=True, seed=3)))
    flat = xb.reshape(256, -1)
    assert torch.equal((flat > 0.5).sum(1), torch.ones(256, dtype=torch.long))  # the pixel never falls off
    pos = flat.argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 15  # all 25 offsets are possible; most show up
    # crop_flip: shifts of up to 4 px, then maybe a mirror (column 14 -> 13)
    xb, _, _ = next(iter(TensorLoader(x, y, 256, augment="crop_flip", shuffle=True, seed=3)))
    pos = xb.reshape(256, -1).argmax(1)
    assert (pos // 28 - 14).abs().max() <= 4 and ((pos % 28) - 13.5).abs().max() <= 4.5
    # deterministic per (seed, epoch)
    again, _, _ = next(iter(TensorLoader(x, y, 256, augment="crop_flip", shuffle=True, seed=3)))
    assert torch.equal(again, xb)


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
