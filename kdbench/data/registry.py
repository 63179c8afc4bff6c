"""The dataset registry: every dataset the harness knows, loaded whole into a :class:`TensorData`.

``load_dataset(cfg)`` reads the ``dataset`` config section (a dict or an OmegaConf DictConfig)::

    name: digits | synthetic | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder | cifar10_jpeg
          | markov | bytes_text
    root: where the files are (torchvision's own layout, or an image-folder tree / tar archive)
    download: false          # passed to torchvision; never downloads unless asked
    cache_dir: null          # decoded-image cache (image folders); default <root>/.kdbench_cache
    train_subset: null       # keep k training examples (fixed, class-balanced, seed-independent)
    test_subset: null

Every failure a user can cause (missing, truncated or inconsistent files) is a one-line
:class:`~kdbench.errors.DataError` naming the config key and the file; bad config values are
:class:`~kdbench.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from kdbench.data import hf_text, keys, text
from kdbench.data.bundled import load_digits, load_synthetic
from kdbench.data.core import TensorData
from kdbench.data.imagefolder import load_imagefolder
from kdbench.data.torchvision_sets import load_cifar, load_mnist_like
from kdbench.errors import ConfigError


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`."""

    name: str
    loader: Callable[[Mapping], TensorData]
    #: None where the config decides (synthetic, image folders)
    num_classes: int | None
    #: "image" (uint8 ``[N, C, H, W]``), "features" (float32 ``[N, D]``) or "tokens" (int64 ``[N, T]``)
    kind: str
    description: str
    #: default normalisation; None where it is computed from the training data
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    default_augment: str = "none"


#: name -> spec, in the order ``dataset_names`` lists them
DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset under ``spec.name`` (a name is registered once)."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


for builtin in (
    DatasetSpec("digits", load_digits, 10, "image",
                "scikit-learn's 1,797 8x8 handwritten digits (offline), fixed 75/25 split",
                default_augment="none"),
    DatasetSpec("synthetic", load_synthetic, None, "features",
                "Gaussian features labelled by a hidden linear rule (with an oracle teacher)",
                mean=(0.0,), std=(1.0,)),
    DatasetSpec("mnist", partial(load_mnist_like, name="mnist", title="MNIST", cls_name="MNIST",
                                 folder="MNIST", mean=(0.1307,), std=(0.3081,)),
                10, "image", "MNIST 28x28 digits (torchvision layout: <root>/MNIST/raw)",
                mean=(0.1307,), std=(0.3081,)),
    DatasetSpec("fashion_mnist", partial(load_mnist_like, name="fashion_mnist", title="Fashion-MNIST",
                                         cls_name="FashionMNIST", folder="FashionMNIST",
                                         mean=(0.2860,), std=(0.3530,)),
                10, "image", "Fashion-MNIST 28x28 clothing (torchvision layout: <root>/FashionMNIST/raw)",
                mean=(0.2860,), std=(0.3530,)),
    DatasetSpec("cifar10", partial(load_cifar, name="cifar10", title="CIFAR-10", cls_name="CIFAR10",
                                   num_classes=10, mean=(0.4914, 0.4822, 0.4465),
                                   std=(0.2470, 0.2435, 0.2616)),
                10, "image", "CIFAR-10 32x32 RGB (torchvision layout: <root>/cifar-10-batches-py)",
                mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), default_augment="crop_flip"),
    DatasetSpec("cifar100", partial(load_cifar, name="cifar100", title="CIFAR-100", cls_name="CIFAR100",
                                    num_classes=100, mean=(0.5071, 0.4865, 0.4409),
                                    std=(0.2673, 0.2564, 0.2762)),
                100, "image", "CIFAR-100 32x32 RGB (torchvision layout: <root>/cifar-100-python)",
                mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), default_augment="crop_flip"),
    DatasetSpec("imagefolder", load_imagefolder, None, "image",
                "train/<class>/* and test/<class>/* images (folder or tar archive), decoded once and cached",
                default_augment="crop_flip"),
    DatasetSpec("cifar10_jpeg", partial(load_imagefolder, name="cifar10_jpeg"), 10, "image",
                "imagefolder holding CIFAR-10 re-encoded as JPEG; results must say 'CIFAR-10 (JPEG q75 copy)'",
                default_augment="crop_flip"),
    DatasetSpec("markov", text.load_markov, None, "tokens",
                "sequences of a seeded sparse Markov chain (known next-token law: an exact oracle teacher)"),
    DatasetSpec("bytes_text", text.load_bytes_text, 256, "tokens",
                "byte-level windows of CPython's own documentation (pydoc_data.topics), offline"),
    DatasetSpec("hf_text", hf_text.load_hf_text, None, "tokens",
                "local JSONL prompt/response or plain text, tokenized with dataset.tokenizer (a local HF tokenizer)"),
):
    register_dataset(builtin)
del builtin


def dataset_names() -> list[str]:
    """The names ``dataset.name`` accepts."""
    return list(DATASETS)


def load_dataset(cfg: Mapping) -> TensorData:
    """Load the dataset the ``dataset`` config section names (see the module docstring for the keys)."""
    if cfg is None or not hasattr(cfg, "get"):
        raise ConfigError("dataset", f"must be a mapping with at least a name, got {cfg!r}")
    name = keys.get(cfg, "name")
    if not name:
        raise ConfigError("dataset.name", f"is required; one of {', '.join(dataset_names())}")
    spec = DATASETS.get(str(name))
    if spec is None:
        raise ConfigError("dataset.name", f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    for split in ("train", "test"):
        keys.subset(cfg, split)  # fail fast, before a long load
    data = spec.loader(cfg)
    data.info.setdefault("dataset", spec.name)
    return data
