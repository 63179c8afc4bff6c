"""Every experiment in conf/experiment/ (and, for the pair experiments, every pair in conf/pair/)
composes, validates and resolves; the pair files hold sane published numbers; the sweep grids expand.

Compose only: nothing is trained, no data is read. New experiment or pair files are picked up by the globs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdbench.config import validate
from kdbench.data import dataset_names
from kdbench.models import model_names

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PAIRS = sorted(p.stem for p in (CONF / "pair").glob("*.yaml"))
PAIR_KEYS = {"name", "teacher_arch", "student_arch", "lr", "published"}
#: table variants a pair may publish, plus the two strings that say where the numbers come from
#: the rows a pair's published block may hold: the teacher, the scratch student and method variants (the
#: feature methods' from RepDistiller's README)
PUBLISHED_VARIANTS = {"teacher", "scratch", "kd", "dkd", "dist", "fitnet", "at", "sp", "vid", "rkd", "pkt", "nst",
                      "crd", "ttm", "wttm", "ctkd", "ctkd_ls", "mlkd", "mlkd_ls", "kd_ls", "dkd_ls"}
PUBLISHED_TEXT = {"source", "protocol"}


def _defaults(name: str) -> list:
    return list(OmegaConf.load(CONF / "experiment" / f"{name}.yaml").get("defaults") or [])


def _uses_pair(name: str) -> bool:
    """True when the experiment's own defaults list picks a pair (``- /pair: <default>``)."""
    return any(hasattr(d, "keys") and any(str(k).lstrip("/") == "pair" for k in d.keys())
               for d in _defaults(name))


PAIR_EXPERIMENTS = [e for e in EXPERIMENTS if _uses_pair(e)]


def _pair(name: str):
    return OmegaConf.load(CONF / "pair" / f"{name}.yaml")


def _resolved(cfg) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(c, dict)
    return c


def test_the_globs_found_the_configs():
    assert {"cifar10", "cifar100", "cifar10_jpeg_smoke", "mnist_ablation", "quickstart"} <= set(EXPERIMENTS)
    assert len(PAIRS) == 10
    assert {"cifar10", "cifar100"} <= set(PAIR_EXPERIMENTS)
    # the per-pair overlays are gone: pairs are data in conf/pair/
    assert not [e for e in EXPERIMENTS if any(e.endswith("_" + p) for p in PAIRS)]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_validates_and_resolves(compose, name):
    cfg = compose(f"experiment={name}")
    validate(cfg)
    c = _resolved(cfg)
    assert c["experiment_name"] and "${" not in c["experiment_name"]
    assert c["student"]["arch"] in model_names()
    if c["distill"]["enabled"]:
        assert c["teacher"]["arch"] in model_names() + ["oracle"]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("experiment", PAIR_EXPERIMENTS)
def test_pair_experiment(compose, experiment, pair):
    p = _pair(pair)
    cfg = compose(f"experiment={experiment}", f"pair={pair}")
    validate(cfg)
    c = _resolved(cfg)
    assert c["pair"]["name"] == pair
    assert c["teacher"]["arch"] == p.teacher_arch
    assert c["student"]["arch"] == p.student_arch
    assert c["optim"]["lr"] == p.lr
    assert c["experiment_name"] == f"{experiment}_{pair}"
    # the standard CIFAR KD recipe (CRD / DKD); the CIFAR-10 methods study (issue 15) names a short student
    # schedule (60 epochs, cosine) and trains its teachers with the standard one
    if experiment == "cifar10_methods":
        assert c["trainer"]["max_epochs"] == 60 and c["sched"]["name"] == "cosine"
        assert c["teacher"]["recipe"]["epochs"] == 240 and c["teacher"]["recipe"]["sched"]["milestones"] == [150, 180, 210]
        assert c["teacher_signal"] == "cached" and c["dataset"]["name"] == "cifar10_jpeg"
    else:
        assert c["trainer"]["max_epochs"] == 240
        assert c["sched"]["name"] == "multistep" and c["sched"]["milestones"] == [150, 180, 210]
        assert c["sched"]["gamma"] == pytest.approx(0.1)
    assert (c["distill"]["alpha"], c["distill"]["tau"]) == (pytest.approx(0.1), pytest.approx(4.0))
    assert c["dataset"]["batch_size"] == 64 and c["dataset"]["augment"] == "default"
    assert c["optim"]["name"] == "sgd" and c["optim"]["momentum"] == pytest.approx(0.9)
    assert c["optim"]["weight_decay"] == pytest.approx(5e-4) and c["optim"]["nesterov"] is False


def test_default_pair_and_command_line_order(compose):
    """Without pair= the experiments use resnet32x4 -> resnet8x4; pair= works before or after experiment=."""
    c = _resolved(compose("experiment=cifar100"))
    assert (c["teacher"]["arch"], c["student"]["arch"], c["pair"]["name"]) == ("resnet32x4", "resnet8x4",
                                                                               "resnet32x4_resnet8x4")
    c = _resolved(compose("pair=vgg13_mobilenetv2", "experiment=cifar10"))
    arch = (c["dataset"]["name"], c["teacher"]["arch"], c["student"]["arch"])
    assert arch == ("cifar10", "vgg13", "MobileNetV2")
    assert c["optim"]["lr"] == pytest.approx(0.01) and c["experiment_name"] == "cifar10_vgg13_mobilenetv2"


@pytest.mark.parametrize("pair", PAIRS)
def test_pair_file(pair):
    p = _pair(pair)
    assert set(p.keys()) == PAIR_KEYS, f"conf/pair/{pair}.yaml: keys must be exactly {sorted(PAIR_KEYS)}"
    assert p.name == pair
    assert p.teacher_arch in model_names() and p.student_arch in model_names()
    assert p.teacher_arch != p.student_arch
    assert isinstance(p.lr, float) and 0 < p.lr <= 0.1
    published = OmegaConf.to_container(p.published)
    assert published, "a pair without published numbers has no place in the table"
    for dataset, row in published.items():
        assert dataset in dataset_names()
        unknown = set(row) - PUBLISHED_VARIANTS - PUBLISHED_TEXT
        assert not unknown, f"{dataset}: unknown keys {sorted(unknown)}"
        assert PUBLISHED_TEXT <= set(row), f"{dataset}: say where the numbers come from (source, protocol)"
        assert all(isinstance(row[k], str) and row[k].strip() for k in PUBLISHED_TEXT)
        numbers = {k: v for k, v in row.items() if k in PUBLISHED_VARIANTS}
        assert {"teacher", "scratch"} <= set(numbers)
        for k, v in numbers.items():
            assert isinstance(v, float) and 0 < v < 100, f"{dataset}.{k}: top-1 in percent, got {v!r}"
        assert numbers["teacher"] > numbers["scratch"]
        # in these tables KD lands above the student alone and at most about the teacher
        if "kd" in numbers:
            assert numbers["scratch"] < numbers["kd"] < numbers["teacher"] + 1


def test_published_numbers_agree_across_pairs():
    """A teacher (or student) shared by several pairs has one published accuracy per dataset."""
    seen: dict[tuple, set] = defaultdict(set)
    for pair in PAIRS:
        p = _pair(pair)
        for dataset, row in OmegaConf.to_container(p.published).items():
            seen[(dataset, "teacher", p.teacher_arch)].add(row["teacher"])
            seen[(dataset, "scratch", p.student_arch)].add(row["scratch"])
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


def _grid_size(params: dict) -> int:
    return math.prod(len(str(v).split(",")) for v in params.values())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_sweep_grid_expands(name):
    from kdbench.sweep import expand_jobs

    jobs, base = expand_jobs([f"experiment={name}"])
    params = base.hydra.sweeper.params
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    assert len(jobs) == _grid_size(params) >= 1
    assert all(f"experiment={name}" in job for job in jobs)
    assert len({tuple(sorted(job)) for job in jobs}) == len(jobs)
    if name == "cifar10_methods":  # issue 15: 2 pairs x 8 variants x 3 seeds
        assert params == {"pair": "resnet56_resnet20,wrn_40_2_wrn_16_2",
                          "distill": "kd,dkd,dist,kd_ls,kd_reverse,kd_no_tau2,kd_kl_mean,none", "seed": "0,1,2"}
        assert len(jobs) == 48
    elif name in PAIR_EXPERIMENTS:
        assert params == {"distill": "kd,none", "seed": "0,1,2,3,4"}


@pytest.mark.parametrize("experiment", PAIR_EXPERIMENTS)
def test_sweep_over_pairs(compose, experiment):
    """pair=a,b on the command line multiplies the grid; each job resolves to its own pair and name."""
    from kdbench.sweep import expand_jobs

    a, b = PAIRS[0], PAIRS[-1]
    jobs, _ = expand_jobs([f"experiment={experiment}", f"pair={a},{b}"])
    assert len(jobs) == (2 * 8 * 3 if experiment == "cifar10_methods" else 2 * 2 * 5)  # the command line's pairs
    assert {o for job in jobs for o in job if o.startswith("pair=")} == {f"pair={a}", f"pair={b}"}
    last = _resolved(compose(*jobs[-1]))
    pair = next(o for o in jobs[-1] if o.startswith("pair=")).split("=", 1)[1]
    assert last["experiment_name"] == f"{experiment}_{pair}"
    p = _pair(pair)
    assert (last["teacher"]["arch"], last["student"]["arch"]) == (p.teacher_arch, p.student_arch)


def test_sweep_over_every_pair_with_glob():
    """`pair=glob(*)` (a sweep over a group's options) expands to every file in conf/pair/."""
    from kdbench.sweep import expand_jobs

    jobs, _ = expand_jobs(["experiment=cifar100", "pair=glob(*)", "distill=kd", "seed=0"])
    assert sorted(o.split("=", 1)[1] for job in jobs for o in job if o.startswith("pair=")) == sorted(PAIRS)
