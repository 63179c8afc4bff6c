"""Hyper-parameter search (issue 24 #13): ``python -m kdbench.train -m hparams_search=<method>`` with Hydra's
Optuna sweeper; the objective is the validation accuracy the trial's record states, never a test metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, train_main

FAST = ("trainer.max_epochs=2", "teacher.recipe.epochs=2", "logger=none", "trainer.progress=false")


def _search(tmp_path: Path, *extra: str, method: str = "kd", teachers: Path | None = None) -> int:
    args = ["-m", f"hparams_search={method}", f"paths.results_dir={tmp_path / 'results'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", *FAST, *extra]
    if teachers is not None:
        args.append(f"paths.teachers_dir={teachers}")
    return train_main(args)


def test_a_test_metric_objective_is_refused_in_one_line_before_any_trial(tmp_path, capsys):
    assert _search(tmp_path, "hydra.callbacks.search.objective=test/acc") == 2
    out, err = capsys.readouterr()
    assert err.strip() == (
        "kdbench: error: hydra.callbacks.search.objective: 'test/acc' is a test-set metric: hyper-parameters chosen "
        "on the test set make its numbers optimistic; allowed: val/acc (the best epoch's validation accuracy), "
        "val/acc_last (the last epoch's validation accuracy)")
    assert "Traceback" not in out + err
    assert not (tmp_path / "results").exists() and not (tmp_path / "multirun").exists()  # no trial ran


@pytest.fixture(scope="module")
def search_cfg():
    """The composed config of ``-m hparams_search=kd`` with Hydra's node (what the callback sees)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=kd"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("key, value, message", [
    ("objective", "val/loss", "hydra.callbacks.search.objective: unknown objective 'val/loss'"),
    ("hydra.sweeper.direction", "minimize",
     "hydra.sweeper.direction: the objective val/acc is better when higher: one direction, maximize; got minimize"),
    ("dataset.val_size", 0, "dataset.val_size: 0 validates on the test set, so the search would tune on test"),
    ("task", "seed=0,1,2", "hydra.sweeper.params.seed: seed=0,1,2: a search over seeds picks the luckiest draw"),
    ("task", "data_seed=choice(0,1)", "hydra.sweeper.params.data_seed: data_seed=choice(0,1): a search over seeds"),
])
def test_a_search_that_would_not_pick_on_validation_is_refused(search_cfg, key, value, message):
    import copy

    from omegaconf import OmegaConf, open_dict

    from kdbench.errors import ConfigError
    from kdbench.tuning import check_search

    cfg = copy.deepcopy(search_cfg)
    OmegaConf.set_readonly(cfg, False)
    objective = value if key == "objective" else "val/acc"
    with open_dict(cfg):
        if key == "task":
            cfg.hydra.overrides.task = [value]
        elif key != "objective":
            OmegaConf.update(cfg, key, value)
    check_search(search_cfg, "val/acc")  # the example itself passes
    with pytest.raises(ConfigError) as e:
        check_search(cfg, objective)
    assert str(e.value).startswith(message)


def _rec(runs: Path, exp: str, variant: str, rid: str, val: float, test: float, status: str = "complete", **distill):
    from kdbench.records import write_record

    metrics = {w: {"epoch": 1, "val": {"acc": val}, "test": {"acc": test}} for w in ("best", "last")}
    write_record(runs / exp / f"{rid}.json", {
        "run_id": rid, "experiment": exp, "variant": variant, "seed": 0, "status": status,
        "config": {"seed": 0, "distill": {"variant": variant, "method": variant, **distill}},
        "metrics": metrics if status == "complete" else {}})


def test_the_best_trial_per_method_is_chosen_on_validation_never_on_test(tmp_path):
    from kdbench.tuning import best_trials, write_best_trials

    runs = tmp_path / "results" / "runs"
    _rec(runs, "s", "kd", "kd-a", 0.90, 0.80, alpha=0.1, tau=2.0)
    _rec(runs, "s", "kd", "kd-b", 0.85, 0.99, alpha=0.5, tau=2.0)  # the best test top-1: not the best trial
    _rec(runs, "s", "kd", "kd-c", 0.0, 0.0, status="diverged", alpha=0.9, tau=8.0)
    _rec(runs, "s", "dkd", "dkd-a", 0.70, 0.72, dkd_beta=2.0)
    _rec(runs, "s", "dkd", "dkd-b", 0.75, 0.71, dkd_beta=8.0)
    table = best_trials(runs, "s")
    rows = {r["method"]: r for r in table.to_dict("records")}
    assert rows["kd"]["run id"] == "kd-a" and rows["kd"]["trials"] == "2/3"
    assert (rows["kd"]["val top-1 (%)"], rows["kd"]["test top-1 last (%)"]) == ("90.00", "80.00")
    assert rows["kd"]["setting"] == "alpha=0.1"  # tau did not vary among the complete trials
    assert rows["dkd"]["run id"] == "dkd-b" and rows["dkd"]["setting"] == "dkd_beta=8"
    paths = write_best_trials(table, runs, "s", "val/acc")
    assert paths["md"] == tmp_path / "results" / "s" / "best_trials.md"
    assert "| kd       | 2/3" in paths["md"].read_text()
    csv = paths["csv"].read_text().splitlines()
    assert csv[0].startswith("method,complete,trials,objective,objective_value,last_test_acc,run_id")
    assert csv[1].startswith("dkd,2,2,val/acc,0.75,0.71,dkd-b")


def test_every_example_search_composes_and_tunes_its_methods_own_knobs():
    for method, knobs in (("kd", {"distill.alpha", "distill.tau"}),
                          ("dkd", {"distill.dkd_alpha", "distill.dkd_beta", "distill.tau"}),
                          ("dist", {"distill.dist_beta", "distill.dist_gamma", "distill.tau"})):
        conf = yaml.safe_load((REPO / "conf" / "hparams_search" / f"{method}.yaml").read_text())
        params = conf["hydra"]["sweeper"]["params"]
        assert {k for k, v in params.items() if "(" in str(v)} == knobs, method
        assert params["distill"] == method and params["experiment_name"] == "${experiment_name}_search"
        assert conf["hydra"]["callbacks"]["search"]["objective"] == "val/acc"


@pytest.mark.slow
def test_a_four_trial_search_on_digits_optimises_the_records_validation_accuracy(tmp_path, teachers_dir, capsys):
    assert _search(tmp_path, "hydra.sweeper.n_trials=4", teachers=teachers_dir) == 0
    out = capsys.readouterr().out
    assert "kdbench search: 4 trials of kd over distill.alpha=interval(0.05, 0.95) distill.tau=choice(" in out
    runs = tmp_path / "results" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["default_search"]  # the trials' own experiment only
    recs = [json.loads(p.read_text()) for p in (runs / "default_search").glob("*.json")]
    assert len(recs) == 4 and all(r["status"] == "complete" for r in recs)
    best = max(recs, key=lambda r: r["metrics"]["best"]["val"]["acc"])
    found = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    # what Optuna maximised is the records' validation accuracy, and its best trial is that record's setting
    assert found["best_value"] == pytest.approx(best["metrics"]["best"]["val"]["acc"], abs=1e-7)
    assert found["best_params"]["distill.alpha"] == pytest.approx(best["config"]["distill"]["alpha"], abs=1e-12)
    assert found["best_params"]["distill.tau"] == pytest.approx(best["config"]["distill"]["tau"], abs=1e-12)
    md = (tmp_path / "results" / "default_search" / "best_trials.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| kd "))
    assert best["run_id"] in row and "| 4/4 " in row
    assert f"{100 * best['metrics']['last']['test']['acc']:.2f}" in row
    table = out.split("best trial per method")[1].split("best trials:")[0]
    assert "kd " in table and max(len(ln) for ln in table.splitlines()) <= 100


def test_the_objective_is_read_from_the_records_best_or_last_epoch():
    from kdbench.tuning import objective_value

    rec = {"metrics": {"best": {"val": {"acc": 0.91}, "test": {"acc": 0.99}},
                       "last": {"val": {"acc": 0.88}, "test": {"acc": 0.98}}}}
    assert objective_value(rec, "val/acc") == 0.91 and objective_value(rec, "val/acc_last") == 0.88
    assert objective_value({"metrics": {}}) != objective_value({"metrics": {}})  # NaN: nothing to optimise
