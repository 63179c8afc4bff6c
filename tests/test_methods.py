"""Distillation methods through the harness: configs, validation, records, one grid over methods."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAST


@pytest.mark.parametrize("distill, params", [
    ("dkd", {"ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "tau": 4.0, "warmup_epochs": 20}),
    ("dist", {"ce_weight": 1.0, "dist_beta": 1.0, "dist_gamma": 1.0, "tau": 1.0}),
    ("kd_ls", {"standardize": True, "tau": 2.0, "ce_weight": 0.1, "kd_weight": 9.0}),
    ("dkd_ls", {"standardize": True}),
    ("kd_jsd", {"kl": "jsd", "jsd_beta": 0.5}),
    ("kd_skew", {"kl": "skew_forward", "skew_lambda": 0.1}),
])
def test_each_method_trains_from_config_and_records_its_parameters(compose, teachers_dir, distill, params):
    from kdbench.train import run

    rec = run(compose(*FAST, f"distill={distill}", "trainer.max_epochs=1", "logger=none",
                      f"paths.teachers_dir={teachers_dir}"))
    assert rec["status"] == "complete"
    assert rec["metrics"]["last"]["test"]["acc"] > 0.2  # it learned something in one epoch on digits
    for k, v in params.items():
        assert rec["distill"][k] == v and rec["config"]["distill"][k] == v


def test_a_shared_recipe_key_a_method_does_not_read_is_left_out_of_the_run(compose):
    """mnist_ablation / the CIFAR experiments set distill.alpha (KD's CE weight): under DKD it does nothing,
    so it is not in the record (no table column claims it) nor in the run id."""
    from kdbench.config import resolve, validate
    from kdbench.identity import run_id_of

    on_cifar = compose("experiment=cifar100", "distill=dkd")
    validate(on_cifar)  # the CIFAR recipe's distill.alpha=0.1 is no error under DKD ...
    assert on_cifar.distill.alpha == 0.1 and on_cifar.distill.tau == 4.0
    a = resolve(on_cifar)  # ... and not part of the run
    assert "alpha" not in a["distill"] and a["distill"]["dkd_beta"] == 8.0
    assert run_id_of(resolve(compose("distill=dkd", "+distill.alpha=0.3"))) == run_id_of(resolve(compose("distill=dkd")))
    assert resolve(compose("distill=kd", "distill.alpha=0.1"))["distill"]["alpha"] == 0.1


@pytest.mark.parametrize("override, key", [
    ("distill.dkd_beta=-1", "distill.dkd_beta"),
    ("distill.tau=inf", "distill.tau"),
    ("distill.warmup_epochs=2.5", "distill.warmup_epochs"),
    ("+distill.dkd_betta=8", "distill.dkd_betta"),  # a typo no method reads
    ("distill.standardize=maybe", "distill.standardize"),
])
def test_bad_method_parameters_are_one_line_errors_naming_the_key(compose, override, key):
    from kdbench.config import validate
    from kdbench.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate(compose("distill=dkd", override))
    assert e.value.key == key


def test_kd_rejects_an_infinite_temperature_and_unknown_divergence(compose):
    from kdbench.config import validate
    from kdbench.errors import ConfigError

    for override, key in (("distill.tau=inf", "distill.tau"), ("distill.kl=sideways", "distill.kl"),
                          ("distill.jsd_beta=1.5", "distill.jsd_beta")):
        with pytest.raises(ConfigError) as e:
            validate(compose(override))
        assert e.value.key == key


def test_dkd_warm_up_and_loss_composition():
    """min(epoch / 20, 1) with 1-based epochs (mdistiller), on top of CE with weight 1."""
    import torch.nn.functional as F

    from kdbench.data import Batch
    from kdbench.losses import dkd_loss
    from kdbench.methods import build_method

    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    b = Batch(s, y, torch.arange(8), torch.zeros(8, dtype=torch.long))
    m = build_method("dkd", {"ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "tau": 4.0, "warmup_epochs": 20})
    d = dkd_loss(s, t, y, alpha=1.0, beta=8.0, tau=4.0)
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        m.set_epoch(epoch)
        out = m(s, t, b)
        assert torch.allclose(out["loss"], F.cross_entropy(s, y) + factor * d, rtol=1e-6)


def test_one_grid_over_methods_plans_distinct_runs():
    from kdbench.sweep import plan

    jobs = plan(["experiment=quickstart", "distill=kd,dkd,dist,kd_ls", "seed=0"])
    assert len(jobs) == 4 and len({j["run_id"] for j in jobs}) == 4
    assert {j["cfg"].distill.method for j in jobs} == {"kd", "dkd", "dist"}


def test_records_hold_temperature_scaled_calibration_for_student_and_teacher(compose, teachers_dir):
    """ECE/NLL after temperature scaling, with T fitted on the validation set of the same weights: the last
    epoch's T for the last weights, the best epoch's (restored from its checkpoint) for the best."""
    from kdbench.train import run

    rec = run(compose(*FAST, "trainer.max_epochs=3", "dataset.val_size=300", "optim.lr=0.5", "logger=none",
                      f"paths.teachers_dir={teachers_dir}"))
    last, best = rec["metrics"]["last"], rec["metrics"]["best"]
    temps = {h["epoch"]: h["val_temperature"] for h in rec["history"]}
    assert last["test"]["temperature"] == pytest.approx(temps[last["epoch"]])
    assert best["test"]["temperature"] == pytest.approx(temps[best["epoch"]])
    for m in (last["test"], best["test"], rec["teacher"]["test"]):
        assert {"ece_ts", "nll_ts", "temperature"} <= set(m) and 0.05 <= m["temperature"] <= 20
