"""`make bench`'s harness section (issue 13 part 1): both loops really run, alternated, on a tiny setup;
the target lines read the rows right. Speed itself is never asserted (bench output, not a timed test)."""

from __future__ import annotations

import math

import torch

from kdbench.bench.harness import EXTRAPOLATED, bench_harness, harness_targets, peak_tflops
from kdbench.bench.table import markdown


def test_kdbench_and_the_reference_loop_both_train_epoch_by_epoch():
    setup = dict(name="digits MLP", dataset={"name": "digits"}, augment="none", teacher=("mlp", {"hidden": [32]}),
                 student=("mlp", {"hidden": [16]}), n_train=256, batches=(64,), signals=("online", "cached"),
                 epochs=2)
    rows = bench_harness(torch.device("cpu"), [setup], given_peak=1.0)
    assert [(r["signal"], r["batch"]) for r in rows] == [("online", 64), ("cached", 64)]
    for r in rows:
        assert r["kdbench img/s"] > 0 and r["reference img/s"] > 0
        assert math.isclose(r["speed-up"], r["kdbench img/s"] / r["reference img/s"])
        assert r["kdbench MFU"].endswith("%") and r["kdbench peak MiB"] == "n/a"  # CPU: no device memory
        assert r[EXTRAPOLATED] == "-"  # not CIFAR
    assert rows[1]["kdbench TFLOP/s"] * rows[1]["kdbench img/s"] ** -1 < rows[0]["kdbench TFLOP/s"] * \
        rows[0]["kdbench img/s"] ** -1  # a cached epoch needs no teacher FLOPs
    assert "_pair" not in markdown(rows) and "kdbench img/s" in markdown(rows)  # the table leaves out the _ keys


def _row(signal, batch, kd, ref, full_min):
    return {"setup": "CIFAR-10 JPEG, resnet32x4 -> resnet8x4", "batch": batch, "signal": signal, "kdbench img/s": kd,
            "reference img/s": ref, "speed-up": kd / ref, "_pair": ("resnet32x4", "resnet8x4"), "_n_train": 10_000,
            "_build_s": 30.0, "_full_min": full_min}


def test_target_lines_mark_met_and_not_met():
    rows = [_row("online", 64, 9000, 1000, 6.0), _row("online", 256, 12000, 1100, 4.0),
            _row("cached", 64, 20000, 1000, 2.5), _row("cached", 256, 30000, 1100, 1.9)]
    lines = harness_targets(torch.device("cuda"), rows)
    assert any("12.0x" in x and x.endswith(": MET") for x in lines)  # best online batch vs the reference at 64
    assert any("online (batch 256)" in x and "4.0 min" in x and x.endswith(": MET") for x in lines)
    assert any("cached (batch 256)" in x and "1.9 min" in x and x.endswith(": MET") for x in lines)
    slow = [_row("online", 64, 5000, 1000, 9.0), _row("cached", 64, 8000, 1000, 3.0)]
    assert sum(x.endswith("NOT MET") for x in harness_targets(torch.device("cuda"), slow)) == 3
    assert any("not measured" in x for x in harness_targets(torch.device("cpu"), rows))


def test_mfu_peaks_come_from_the_table_or_the_flag():
    assert peak_tflops(torch.device("cpu")) is None and peak_tflops(torch.device("cpu"), 2.5) == 2.5
