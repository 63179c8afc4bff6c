"""Bench section ``fused``: K students per teacher pass (``fuse=K``, :mod:`kdbench.fused`) vs K separate runs.

MNIST, the Hinton MLP pair (784-1200-1200-10 teacher, 784-800-800-10 student), online teacher, KD at
tau 4; K students that differ only in their init seed (``data_seed=0``: one batch stream). For K = 1, 4, 8:
K runs one after another in this process vs one fused group, each timed per epoch (training and
validation of all K students, from their ``progress.json``) and end to end (setup, fit, both tests).
The teacher is a 1-epoch one (its quality does not change the time). Never a timed test: a bench.

``python -m kdbench.bench --only fused [--device cpu|cuda] [--full]`` (run from the repository root; MNIST in
``../shared/data``).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kdbench.bench.table import Section

TARGET = 1.5  # issue #13: fused K = 8 at least 1.5x faster than 8 separate runs (CPU, online teacher)


def _cfgs(results: Path, experiment: str, k: int, device: str, quick: bool, data_root: str,
          extra: tuple[str, ...] = ()) -> list:
    from kdbench.config import compose_job

    size = (["dataset.train_subset=6000", "dataset.test_subset=2000", "dataset.val_size=1000"] if quick
            else [])
    base = [f"paths.results_dir={results}", "dataset=mnist", f"dataset.root={data_root}", "teacher=hinton_teacher",
            "student=hinton_student", "distill=kd", "distill.tau=4", "teacher.recipe.epochs=1",
            f"trainer.max_epochs={2 if quick else 3}", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            "trainer.progress=false", "logger=none", "data_seed=0", f"experiment_name={experiment}", *size]
    return [compose_job([*base, *extra, f"seed={i}"]) for i in range(k)]


def _s_per_epoch(results: Path, experiment: str, run_id: str) -> float:
    p = json.loads((results / "checkpoints" / experiment / run_id / "progress.json").read_text())
    return float(p["s_per_epoch"])


def bench_fused(device: torch.device | str, quick: bool, ks: tuple[int, ...] = (1, 4, 8),
                data_root: str = "../shared/data", repeats: int = 3,
                on_row: Callable[[dict], object] | None = None) -> list[dict]:
    """One row per K: seconds per epoch (training + validation of all K students) and end to end (every
    run's setup, fit and both tests, in this process: no process start-up counted) for K separate runs
    and for one fused group, each the minimum over ``repeats`` alternated measurements (a shared machine's
    background load only ever adds time); speed-ups. ``on_row`` sees each row as it is measured."""
    import contextlib
    import io

    from kdbench.fused import run_group
    from kdbench.runner import quiet_libraries, run

    quiet_libraries()
    dev = torch.device(device).type
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdbench-bench-fused-") as tmp:
        results = Path(tmp) / "results"
        with contextlib.redirect_stdout(io.StringIO()):  # the teacher, once (not timed)
            run(_cfgs(results, "warm", 1, dev, quick, data_root, ("teacher_only=true",))[0])
        for k in ks:
            sep_epoch, sep_wall, fus_epoch, fus_wall, same = [], [], [], [], True
            for rep in range(repeats):
                exp = f"sep{k}r{rep}"
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    sep = [run(c) for c in _cfgs(results, exp, k, dev, quick, data_root)]
                sep_wall.append(time.perf_counter() - t)
                sep_epoch.append(sum(_s_per_epoch(results, exp, r["run_id"]) for r in sep))
                exp = f"fus{k}r{rep}"
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    fus = run_group(_cfgs(results, exp, k, dev, quick, data_root))
                fus_wall.append(time.perf_counter() - t)
                fus_epoch.append(_s_per_epoch(results, exp, fus[0]["run_id"]))
                same = same and all(
                    abs(a["metrics"]["last"]["test"]["acc"] - b["metrics"]["last"]["test"]["acc"]) < 1e-6
                    for a, b in zip(sep, fus, strict=True))
            se, fe, sw, fw = min(sep_epoch), min(fus_epoch), min(sep_wall), min(fus_wall)
            rows.append({"K": k, "separate s/epoch": se, "fused s/epoch": fe, "speed-up /epoch": se / fe,
                         "separate s (whole runs)": sw, "fused s (whole group)": fw, "speed-up whole": sw / fw,
                         "same test acc": "yes" if same else "NO"})
            if on_row is not None:
                on_row(rows[-1])
    return rows


def fused_targets(rows: list[dict]) -> list[str]:
    """The target line of the K = 8 row (none without one)."""
    out = []
    for r in rows:
        if r["K"] == 8:
            ok = r["speed-up whole"] >= TARGET
            out.append(f"Target, fused K = 8 at least {TARGET}x faster than 8 separate runs: "
                       f"{'MET' if ok else 'MISSED'}: K=8 whole runs {r['speed-up whole']:.2f}x "
                       f"(>= {TARGET}x); per epoch {r['speed-up /epoch']:.2f}x")
    return out


def section(device: torch.device, quick: bool) -> Section:
    rows = bench_fused(device, quick=quick)
    return Section("K students per teacher pass: K separate runs vs one fused group (MNIST, Hinton MLP pair, online "
                   "teacher; min of 3 alternated repeats)", rows, targets=fused_targets(rows))
