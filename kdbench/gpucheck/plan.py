"""What ``make gpu-check`` will do on this machine (sizes, budgets, paths), checked before any work; and
``make gpu-wheels``, which prepares what a bare GPU machine lacks (wheels, data) in ``.gpucarry/``."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kdbench.errors import ConfigError
from kdbench.gpucheck import PARTS

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / ".gpucarry"  # ignored by git; the `run` tool's `carry` takes it to the GPU machine
CIFAR = "cifar10-jpeg.tar.gz"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
#: module -> distribution, for what kdbench imports and a bare GPU image lacks (W&B is not needed: logger=none)
CARRIED = (("hydra", "hydra-core"), ("omegaconf", "omegaconf"), ("antlr4", "antlr4-python3-runtime"))
#: seconds per part on a GPU: 8 minutes in all, with what a part leaves unused passed on to the next
GPU_BUDGETS = {"checks": 120.0, "run": 170.0, "bench": 150.0}
GPU_TOTAL = 480.0
#: the pairs of the GPU bench, the target pair (``kdbench.bench.harness.TARGET_PAIR``) first
GPU_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"))


@dataclass
class Plan:
    """Everything the parts read (written to ``<work>/plan.json``; each part runs in its own process)."""

    device: str                    # cuda | cpu
    dry_run: bool
    work: str                      # scratch folder: results, logs, the parts' results
    data: str                      # the folder holding the CIFAR-10 JPEG archive and MNIST/raw
    parts: list[str]
    budgets: dict[str, float]
    total_s: float
    jobs: int                      # smoke runs at a time
    trainer: list[str]             # the overrides that put a run on the device
    test_files: list[str]
    smoke: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    site: str | None = None        # where the carried wheels were installed (on PYTHONPATH of every part)
    data_dir: str = ""             # the runs' paths.data_dir (their decoded-data cache: <data_dir>/.cache)

    @property
    def cifar(self) -> str:
        return str(Path(self.data) / CIFAR)

    def save(self) -> Path:
        path = Path(self.work) / "plan.json"
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, work: str | Path) -> Plan:
        return cls(**json.loads((Path(work) / "plan.json").read_text()))


def make_plan(dry_run: bool, work: Path, data: Path, parts: list[str], budgets: dict[str, float],
              total: float | None, jobs: int | None) -> Plan:
    """The GPU plan, or its CPU rehearsal (``dry_run``): the same steps at tiny sizes, float32, not compiled."""
    if dry_run:
        trainer = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.compile=false"]
        smoke = {"train_subset": 128, "test_subset": 64, "n_tokens": 128}
        bench = {"pairs": [["resnet56", "resnet20"], ["wrn_40_2", "wrn_16_2"]], "batches": [64], "n_train": 128, "epochs": 2,
                 "augment": "none", "signals": ["online", "cached"], "ks": [1, 2], "fused_repeats": 1,
                 "step_steps": 1}
        run = {"epochs": 2, "kill_after": 1, "teacher_epochs": 1, "teacher_batch": 64, "train_subset": 256,
               "test_subset": 128}
        tests = ["tests/test_gpu_path.py"]
        default_budgets, default_total, default_jobs = {p: 900.0 for p in PARTS}, 2400.0, 1
    else:
        trainer = ["trainer=gpu"]
        smoke = {"train_subset": 1024, "test_subset": 512, "n_tokens": 512}
        bench = {"pairs": [list(p) for p in GPU_PAIRS], "batches": [64, 256], "n_train": 2048, "epochs": 3,
                 "augment": "crop_flip", "signals": ["online", "cached"], "ks": [1, 4, 8], "fused_repeats": 1,
                 "step_steps": 10}
        run = {"epochs": 10, "kill_after": 5, "teacher_epochs": 5, "teacher_batch": 256, "train_subset": None,
               "test_subset": None}
        tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "torch.cuda.is_available()" in p.read_text() and p.name != "test_gpu_check.py")
        default_budgets, default_total, default_jobs = dict(GPU_BUDGETS), GPU_TOTAL, 6
    # a dry run shares the cache of this checkout's runs (paths.data_dir's default); a GPU machine starts bare
    data_dir = REPO / "data" if dry_run else work / "data_cache"
    return Plan(device="cpu" if dry_run else "cuda", dry_run=dry_run, work=str(work), data=str(data), parts=parts,
                budgets={**default_budgets, **budgets}, total_s=float(total or default_total),
                jobs=int(jobs or default_jobs), trainer=trainer, test_files=tests, smoke=smoke, bench=bench,
                run=run, data_dir=str(data_dir))


# ---- checks before any work: one line naming the option and what is allowed ----------------------------

def parse_budgets(items: list[str]) -> dict[str, float]:
    """``NAME=SECONDS`` pairs (``--budget bench=300``)."""
    out = {}
    for item in items:
        name, _, sec = item.partition("=")
        if name not in PARTS:
            raise ConfigError("--budget", f"unknown part {name!r} in {item!r}; allowed: {', '.join(PARTS)}")
        try:
            out[name] = float(sec)
        except ValueError:
            out[name] = -1.0
        if not out[name] > 0:
            raise ConfigError("--budget", f"must be NAME=SECONDS with SECONDS > 0, got {item!r}")
    return out


def parse_parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PARTS]
    if bad or not names:
        raise ConfigError("--parts", f"unknown part {bad[0]!r}; allowed: {', '.join(PARTS)}" if bad
                          else f"names no part; allowed: {', '.join(PARTS)}")
    return [p for p in PARTS if p in names]


def check_out(out: Path) -> None:
    """The output folder must be new or empty: the check never writes over what is there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("--out", f"{out} exists and is not an empty folder; the check writes only into a new "
                                   "or empty one (pick another path)")


def default_data() -> Path:
    """``../shared/data`` where it is (a developer's checkout), else ``.gpucarry/data`` (``make gpu-wheels``'s
    copy, what the GPU machine gets: ``../shared`` does not travel)."""
    shared = REPO.parent / "shared" / "data"
    return shared if (shared / CIFAR).exists() else CARRY / "data"


def mnist_state(data: Path) -> str | None:
    """``raw`` (torchvision's files), ``gz`` (compressed, as carried) or None (missing)."""
    raw = data / "MNIST" / "raw"
    if all((raw / f).is_file() for f in MNIST_FILES):
        return "raw"
    if all((raw / f"{f}.gz").is_file() for f in MNIST_FILES):
        return "gz"
    return None


def check_data(data: Path, parts: list[str]) -> None:
    if not (data / CIFAR).is_file():
        raise ConfigError("--data", f"{data} has no {CIFAR} (the CIFAR-10 JPEG copy; ../shared/data holds it, "
                                    "make gpu-wheels copies it into .gpucarry/data)")
    if "bench" in parts and mnist_state(data) is None:
        raise ConfigError("--data", f"{data} has no MNIST/raw/{MNIST_FILES[0]} (or .gz): the fused bench reads "
                                    "MNIST (make gpu-wheels copies it into .gpucarry/data)")


def missing_packages() -> list[str]:
    """The carried distributions whose module this Python cannot import."""
    return [dist for mod, dist in CARRIED if importlib.util.find_spec(mod) is None]


def check_wheels(wheels: Path) -> list[str]:
    """The distributions to install from ``wheels`` (none when importable); refused when one has no wheel there."""
    missing = missing_packages()
    have = {w.name.split("-")[0].lower().replace("_", "-") for w in wheels.glob("*.whl")} if wheels.is_dir() else set()
    lacking = [d for d in missing if d not in have]
    if lacking:
        raise ConfigError("--wheels", f"{', '.join(lacking)} cannot be imported here and {wheels} has no wheel for "
                                      "it (run `make gpu-wheels` where pip works, then carry .gpucarry)")
    return missing


def check_device(dry_run: bool) -> None:
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise ConfigError("--dry-run", "no CUDA device here: run this on a GPU machine, or rehearse it on CPU "
                                       "with --dry-run")


# ---- the machine's setup: wheels and data -------------------------------------------------------------

def install(wheels: Path, dists: list[str], site: Path) -> str:
    """``pip install --no-index`` of ``dists`` from ``wheels`` into ``site``; a line saying what was done."""
    if not dists:
        return f"{', '.join(d for _, d in CARRIED)}: importable, nothing installed"
    site.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "--no-deps",
           "--no-compile", "--no-cache-dir", "--target", str(site), *dists]
    subprocess.run(cmd, check=True)
    return f"installed {', '.join(dists)} from {wheels} into {site}"


def unpack_mnist(data: Path, work: Path) -> Path:
    """The data folder the bench reads MNIST from: ``data`` itself, or a copy in ``work`` with the carried
    ``.gz`` files decompressed (torchvision's MNIST reads the raw files)."""
    if mnist_state(data) != "gz":
        return data
    out = work / "data"
    (out / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for f in MNIST_FILES:
        with gzip.open(data / "MNIST" / "raw" / f"{f}.gz", "rb") as src, open(out / "MNIST" / "raw" / f, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.symlink(data / CIFAR, out / CIFAR)
    return out


def pinned(dist: str) -> str:
    """``dist==version`` as constraints.txt pins it."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() == dist.lower() and version:
            return f"{name}=={version}"
    raise ConfigError("constraints.txt", f"pins no version of {dist}")


def prepare(dest: Path, data: Path) -> list[str]:
    """``make gpu-wheels``: the pure-Python wheels of :data:`CARRIED` (their pinned versions) in
    ``dest/wheels`` and the CIFAR-10 JPEG archive + gzipped MNIST in ``dest/data``; what exists is kept."""
    check_data(data, ["bench"])
    wheels, out = dest / "wheels", dest / "data"
    wheels.mkdir(parents=True, exist_ok=True)
    done = []
    want = [pinned(d) for _, d in CARRIED]
    have = {w.name.split("-")[0].lower().replace("_", "-") + "==" + w.name.split("-")[1] for w in wheels.glob("*.whl")}
    todo = [w for w in want if w.lower() not in have]
    if todo:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *todo], check=True)
    done.append(f"wheels: {', '.join(want)} in {wheels}")
    (out / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    if not (out / CIFAR).exists():
        shutil.copyfile(data / CIFAR, out / CIFAR)
    for f in MNIST_FILES:
        target = out / "MNIST" / "raw" / f"{f}.gz"
        if target.exists():
            continue
        src = data / "MNIST" / "raw" / f
        if src.is_file():
            with open(src, "rb") as s, gzip.open(target, "wb", compresslevel=6) as d:
                shutil.copyfileobj(s, d)
        else:
            shutil.copyfile(data / "MNIST" / "raw" / f"{f}.gz", target)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    done.append(f"data: {CIFAR} and MNIST (gzipped) in {out}; {dest} holds {size / 2**20:.1f} MiB")
    return done
