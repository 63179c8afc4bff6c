"""Datasets made or shipped offline: ``synthetic`` (with its oracle teacher) and scikit-learn's ``digits``."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from kdbench.data import keys
from kdbench.data.build import channel_stats, check_labels, finish, stratified_order
from kdbench.data.core import TensorData
from kdbench.errors import DataError

#: seed of the fixed train/test split of ``digits``
DIGITS_SPLIT_SEED = 0


def load_synthetic(cfg: Mapping) -> TensorData:
    """Gaussian features, labels from a hidden linear rule ``argmax(W x + b + noise * gumbel)``.

    ``W ~ N(0, 9 / dim)`` (clean logits have std ~3 whatever ``dim``) and ``b ~ N(0, 0.25)`` come from
    ``seed``; so do the features and the Gumbel draws, drawn in an order that does not depend on
    ``noise``: the same seed gives the same features at every noise level, only labels change.
    ``noise`` is a temperature: labels are samples from ``softmax((W x + b) / noise)``.
    """
    n_train = keys.integer(cfg, "n_train", 4000, minimum=1)
    n_test = keys.integer(cfg, "n_test", 1000, minimum=1)
    dim = keys.integer(cfg, "dim", 20, minimum=1)
    num_classes = keys.integer(cfg, "num_classes", 5, minimum=2)
    noise = keys.number(cfg, "noise", 0.0, 0.0)
    seed = keys.integer(cfg, "seed", 0, minimum=0)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) * (3.0 / math.sqrt(dim))
    bias = torch.randn(num_classes, generator=g) * 0.5
    train_x = torch.randn(n_train, dim, generator=g)
    test_x = torch.randn(n_test, dim, generator=g)

    def gumbel(n: int) -> torch.Tensor:
        u = torch.rand(n, num_classes, generator=g).clamp_(1e-12, 1.0 - 1e-7)
        return -torch.log(-torch.log(u))

    g_train, g_test = gumbel(n_train), gumbel(n_test)
    clean_test = (test_x @ weight.T + bias).argmax(1)
    train_y = (train_x @ weight.T + bias + noise * g_train).argmax(1)
    test_y = (test_x @ weight.T + bias + noise * g_test).argmax(1)
    info = {
        "source": "synthetic", "n_train": n_train, "n_test": n_test, "dim": dim, "noise": noise, "seed": seed,
        "oracle": {"weight": weight, "bias": bias},
        "oracle_test_acc": float((clean_test == test_y).float().mean()),
    }
    return finish("synthetic", cfg, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                  num_classes=num_classes, mean=(0.0,), std=(1.0,), default_augment="none",
                  class_names=[f"class_{i}" for i in range(num_classes)], info=info)


def oracle_teacher(data: TensorData) -> torch.nn.Linear:
    """The synthetic data's hidden rule as a frozen ``nn.Linear`` (its argmax is the noise-free label).

    With ``noise > 0`` the true posterior is ``softmax(oracle(x) / noise)``.
    """
    oracle = (data.info or {}).get("oracle")
    if not oracle:
        raise DataError("dataset", f"{data.name} has no oracle teacher (only dataset.name=synthetic does)")
    weight, bias = oracle["weight"], oracle["bias"]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    layer.requires_grad_(False)
    return layer.eval()


def load_digits(cfg: Mapping) -> TensorData:
    """scikit-learn's 1,797 8x8 digits (bundled, offline) as uint8 ``[N, 1, 8, 8]``, fixed split."""
    import sklearn.datasets

    test_fraction = keys.number(cfg, "test_fraction", 0.25, 0.0, 1.0, open_lo=True, open_hi=True)
    d = sklearn.datasets.load_digits()
    x = torch.from_numpy(d.images).mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(d.target).to(torch.int64)
    y = check_labels("digits", "all", y, x.shape[0], 10)
    order = stratified_order(y, DIGITS_SPLIT_SEED)
    n_test = max(1, min(x.shape[0] - 1, int(round(test_fraction * x.shape[0]))))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    train_x = x[train_idx].contiguous()
    mean, std = channel_stats(train_x)
    info = {"source": "sklearn.datasets.load_digits", "test_fraction": test_fraction,
            "split_seed": DIGITS_SPLIT_SEED}
    return finish("digits", cfg, train_x=train_x, train_y=y[train_idx], test_x=x[test_idx].contiguous(),
                  test_y=y[test_idx], num_classes=10, mean=mean, std=std, default_augment="none",
                  class_names=[str(i) for i in range(10)], info=info)
