"""``make gpu-check`` (issue 30): its refusals before any work, its plan, its CUDA-test selection, and its
CPU rehearsal (``--dry-run``): the output folder's layout, every section with numbers, a part that runs out
of time reported while the others run, and the 10-epoch run's kill (SIGKILL) and resume."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdbench.gpucheck import PARTS
from kdbench.gpucheck.main import main
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(), reason="needs ../shared/data")
ALLOWED = re.compile(r"^[A-Za-z0-9._-]+$")  # the names the `run` tool brings back


def layout(out: Path) -> list[Path]:
    """The files under ``out``, checked against what the `run` tool brings back: <= 8, <= 2 folders down."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for f in files:
        rel = f.relative_to(out)
        assert len(rel.parts) <= 3 and all(ALLOWED.match(x) for x in rel.parts), rel
    return files


@pytest.mark.parametrize("argv, key", [
    (["--parts", "checks,bogus"], "--parts"),
    (["--budget", "bench=0"], "--budget"),
    (["--budget", "warmup=5"], "--budget"),
    (["--total", "-1"], "--total"),
    (["--jobs", "0"], "--jobs"),
    (["--data", "{tmp}"], "--data"),
    (["--out", "{full}"], "--out"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, key):
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("a user's file")
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path, full=full) for a in argv]
    args = ["--dry-run", *(["--out", str(out)] if "--out" not in argv else []), *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdbench-gpucheck: error: {key}: ") and "\n" not in err, err
    assert not out.exists() and [p.name for p in full.iterdir()] == ["mine.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_it_asks_for_dry_run(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out")]) == 2
    assert "--dry-run: no CUDA device here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_gpu_plan_is_the_issues_and_fits_eight_minutes(tmp_path):
    from kdbench.gpucheck.main import GRACE_S, RESERVE_S
    from kdbench.gpucheck.plan import REPO, make_plan

    gpu = make_plan(False, tmp_path, tmp_path, list(PARTS), {}, None, None)
    assert gpu.device == "cuda" and gpu.trainer == ["trainer=gpu"] and gpu.total_s <= 480
    assert sum(gpu.budgets.values()) <= gpu.total_s - RESERVE_S - GRACE_S  # time for the summary, a stop
    assert gpu.bench["pairs"][0] == ["resnet32x4", "resnet8x4"]  # the target pair first (kdbench.bench.harness)
    assert all((REPO / "conf" / "pair" / f"{t}_{s}.yaml").is_file() for t, s in gpu.bench["pairs"])
    assert {tuple(p) for p in gpu.bench["pairs"]} == {("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
                                                      ("resnet56", "resnet20")}
    assert gpu.bench["batches"] == [64, 256] and gpu.bench["ks"] == [1, 4, 8]
    assert gpu.bench["signals"] == ["online", "cached"] and gpu.run["epochs"] == 10
    assert 0 < gpu.run["kill_after"] < gpu.run["epochs"] and "tests/test_gpu_path.py" in gpu.test_files
    dry = make_plan(True, tmp_path, tmp_path, list(PARTS), {"bench": 7.0}, None, None)
    assert dry.device == "cpu" and dry.bench["ks"] == [1, 2] and dry.budgets["bench"] == 7.0
    assert "trainer.accelerator=cpu" in dry.trainer and dry.run["kill_after"] < dry.run["epochs"]


def test_the_cuda_test_plugin_keeps_the_tests_skipped_without_cuda():
    from kdbench.gpucheck.cuda_tests import pytest_collection_modifyitems

    def item(name, reason=None):
        marks = [SimpleNamespace(kwargs={"reason": reason})] if reason else []
        return SimpleNamespace(name=name, iter_markers=lambda kind, m=marks: m if kind == "skipif" else [])

    items = [item("test_cuda_training_steps"), item("test_plain"), item("test_x", "needs a CUDA GPU (sync)"),
             item("test_y", "needs ../shared/data/MNIST"), item("test_z", "a GPU is here")]
    dropped = []
    config = SimpleNamespace(hook=SimpleNamespace(pytest_deselected=lambda items: dropped.extend(items)))
    pytest_collection_modifyitems(config, items)
    assert [i.name for i in items] == ["test_cuda_training_steps", "test_x", "test_z"]
    assert [i.name for i in dropped] == ["test_plain", "test_y"]


def test_error_lines_are_found_and_kinds_named():
    from kdbench.gpucheck.parts import error_of

    tb = "Traceback (most recent call last):\n  File x\nRuntimeError: expected scalar type BFloat16 but found Float\n"
    assert error_of(tb) == ("RuntimeError: expected scalar type BFloat16 but found Float", "dtype/device")
    assert error_of("torch._inductor.exc.InductorError: LoweringException: x")[1] == "compiler"
    assert error_of("kdbench: error: distill.alpha: must be in [0, 1], got 2") == (
        "kdbench: error: distill.alpha: must be in [0, 1], got 2", "error")


@needs_data
def test_a_part_out_of_time_is_reported_and_the_summary_written(tmp_path):
    """A 1-second budget: the part's first command is stopped, the part says TIMED OUT, the rest of the
    summary (every section, the parts not selected) is written all the same, in the folder's layout."""
    out = tmp_path / "out"
    rc = main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--parts", "checks",
               "--budget", "checks=1"])
    assert rc == 1
    files = layout(out)
    assert {f.name for f in files} == {f"{torch.device('cpu').type}_{__import__('os').cpu_count()}core.md",
                                       "gpucheck.log", "records.tar.gz", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parts"]["checks"]["status"] == "TIMED OUT"
    assert summary["parts"]["bench"]["status"] == summary["parts"]["run"]["status"] == "not selected"
    items = summary["parts"]["checks"]["items"]
    assert {i["status"] for i in items} <= {"TIMED OUT", "not run"} and items[0]["kind"] == "budget"
    assert any(re.match(r"checks / teacher: (TIMED OUT|not run) \(budget\)", line) for line in summary["failures"])
    md = next(out.glob("*.md")).read_text()
    for heading in ("## Parts", "## Failures", "## (a) CUDA tests and smoke runs", "## (b) bench",
                    "## (c) 10-epoch CIFAR-10 run, killed and resumed"):
        assert heading in md


@pytest.mark.slow
@needs_data
def test_dry_run_rehearses_every_part_and_resumes_a_killed_run(tmp_path):
    """The whole check on CPU (minutes on 2 cores), with MNIST files that are not MNIST: the fused bench
    section fails and is reported, the harness section after it still runs, every other section has numbers;
    (c)'s first process is SIGKILLed after epoch 1 and the same command resumes it (its record says so)."""
    import gzip

    data = tmp_path / "data"
    (data / "MNIST" / "raw").mkdir(parents=True)
    (data / "cifar10-jpeg.tar.gz").symlink_to(SHARED_DATA / "cifar10-jpeg.tar.gz")
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / "MNIST" / "raw" / f"{f}.gz").write_bytes(gzip.compress(b"not an IDX file"))
    out = tmp_path / "out"
    rc = main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(data)])
    assert rc == 1
    layout(out)
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    assert parts["checks"]["status"] == "ok" and parts["run"]["status"] == "ok", summary["failures"]
    assert parts["bench"]["status"] == "FAILED"
    sections = parts["bench"]["sections"]
    assert sections["fused"]["status"] == "FAILED" and sections["fused"]["error"]
    assert [f for f in summary["failures"] if f.startswith("bench / fused: FAILED")]
    assert list(sections) == ["step", "harness resnet56 -> resnet20", "fused", "harness wrn_40_2 -> wrn_16_2"]
    assert all(sections[k]["status"] == "ok" for k in sections if k != "fused")  # the section after it ran too
    assert all(r["images/s"] > 0 for r in sections["step"]["rows"])
    for key in ("harness resnet56 -> resnet20", "harness wrn_40_2 -> wrn_16_2"):
        rows = sections[key]["rows"]
        assert {r["signal"] for r in rows} == {"online", "cached"} and all(r["speed-up"] > 0 for r in rows)
    assert parts["bench"]["harness_targets"][0] == "Targets:" and len(parts["bench"]["harness_targets"]) > 1
    items = {i["name"]: i for i in parts["checks"]["items"]}
    assert set(items) == {"teacher", "cuda-tests", "tokens", "kd", "dkd", "topk", "fitnet", "crd"}
    for name, it in items.items():
        assert it["status"] == "ok", it
        if name != "cuda-tests":
            assert 0 <= it["acc"] <= 1, it
        if name not in ("cuda-tests", "teacher"):  # what each record says ran: the dry run's path
            assert (it["precision"], it["compiled"]) == ("32-true", False), it
    assert items["cuda-tests"]["tests"] >= 1 and items["cuda-tests"]["skipped"] == items["cuda-tests"]["tests"]
    run = parts["run"]
    assert run["first"]["killed_after_epochs"] == 1 and run["resumed_from_epoch"] == 1
    assert run["history_epochs"] == 2 and 0 <= run["final_acc"] <= 1 and run["wall_s"] > 0
    with tarfile.open(out / "records.tar.gz") as tar:
        name = next(n for n in tar.getnames() if n.startswith("results/runs/gpucheck_cifar10/"))
        record = json.loads(tar.extractfile(name).read())
    assert record["status"] == "complete" and record["resumed_from"] and len(record["history"]) == 2
    md = next(out.glob("*.md")).read_text()
    for heading in ("## (a) CUDA tests and smoke runs", "## (b) teacher forward", "## (b) harness vs reference loop",
                    "## (b) K students per teacher pass", "## (c) 10-epoch CIFAR-10 run"):
        assert heading in md
    assert re.search(r"\|\s+1\s+\|\s+1\s+\|\s+2\s+\|", md.split("## (c)")[1])  # killed after 1, resumed from 1, 2 epochs
    assert re.search(r"\| (fitnet|crd) +\| feature +\|.*\| ok +\| 32-true +\| +[\d.]+ +\| +[\d.]+ +\|", md)
