"""make bench's feature-methods section: real DistillModule steps per method, KD the reference."""

from __future__ import annotations

import torch


def test_feature_section_times_each_method_against_kd_and_counts_training_only_parameters():
    from kdbench.bench.features import bench_features

    rows = bench_features(torch.device("cpu"), ("resnet8", "resnet8"), batch=4, steps=1, repeats=1,
                          methods=("kd", "at", "fitnet"))
    by = {r["method"]: r for r in rows}
    assert list(by) == ["kd", "at", "fitnet"] and by["kd"]["x KD"] == 1.0
    assert all(r["ms/step"] > 0 for r in rows) and by["at"]["needs"] == "stages[1:]"
    # FitNet's hint (stages[2] of resnet8: 32 channels at 16x16 on both sides): a 1x1 conv with bias + BatchNorm
    assert by["fitnet"]["training-only params"] == 32 * 32 + 32 + 2 * 32
    assert by["kd"]["training-only params"] == by["at"]["training-only params"] == 0
