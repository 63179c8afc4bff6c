"""conf/pair's published CIFAR-100 numbers for the feature methods: the ones REFERENCE.md quotes, under
variant names a run records, so a report prints "published vs ours" for each row."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

PAIRS = Path(__file__).resolve().parents[1] / "conf" / "pair"


def test_resnet32x4_resnet8x4_feature_rows_are_repdistillers():
    pub = yaml.safe_load((PAIRS / "resnet32x4_resnet8x4.yaml").read_text())["published"]["cifar100"]
    # REFERENCE.md, "Published CIFAR-100 top-1 for these methods" (RepDistiller's README)
    assert {k: pub[k] for k in ("fitnet", "at", "sp", "vid", "rkd", "pkt", "nst", "crd", "kd")} == {
        "fitnet": 73.50, "at": 73.44, "sp": 72.94, "vid": 73.09, "rkd": 71.90, "pkt": 73.64, "nst": 73.30,
        "crd": 75.51, "kd": 73.33}
    assert "RepDistiller" in pub["source"]


@pytest.mark.parametrize("path", sorted(PAIRS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_published_row_is_a_variant_kdbench_can_run(path):
    conf_distill = {p.stem for p in (PAIRS.parent / "distill").glob("*.yaml")}
    pub = yaml.safe_load(path.read_text())["published"]["cifar100"]
    rows = set(pub) - {"teacher", "scratch", "source", "protocol"}
    assert rows <= conf_distill, sorted(rows - conf_distill)
    assert all(50 < pub[r] < 90 for r in rows)
