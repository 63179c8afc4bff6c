"""Hyper-parameter search with Hydra's Optuna sweeper: ``python -m kdbench.train -m hparams_search=kd``.

``conf/hparams_search/<method>.yaml`` picks the method, the search space (α, τ and the method's own
knobs), the sampler, and this module's :class:`Search` callback, which

- before any trial, refuses in one line an objective that is not a validation metric (tuning on the
  test set makes its numbers optimistic), a validation split that is the test set, a direction that
  does not match the objective, and a search over seeds;
- gives the sweeper each trial's objective as its run record states it (``metrics.best.val.acc``:
  the best epoch's validation accuracy);
- at the end writes and prints the best trial per method of the search's experiment (the trials'
  records live in their own experiment, ``<experiment>_search``): ``<results>/<experiment>/best_trials.md``
  and ``best_trials.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

__all__ = ["OBJECTIVES", "Search", "objective_value", "check_search", "best_trials", "write_best_trials"]

#: objective -> (the record's metrics block, what it means); both are maximised
OBJECTIVES: dict[str, tuple[str, str]] = {
    "val/acc": ("best", "the best epoch's validation accuracy"),
    "val/acc_last": ("last", "the last epoch's validation accuracy"),
}
#: keys whose search would pick a lucky draw rather than a setting
SEED_KEYS = ("seed", "data_seed", "teacher.seed", "dataset.split_seed")
KEY = "hydra.callbacks.search.objective"


def objective_value(record: Mapping, objective: str = "val/acc") -> float:
    """The objective as the run's record states it; NaN when the record does not hold it."""
    block = OBJECTIVES[objective][0]
    v = (((record.get("metrics") or {}).get(block) or {}).get("val") or {}).get("acc")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _params(config) -> dict[str, str]:
    """The search's parameters as the sweeper sees them: ``hydra.sweeper.params``, then the command line."""
    from omegaconf import OmegaConf

    params = {str(k): str(v) for k, v in (OmegaConf.to_container(config.hydra.sweeper.params, resolve=True)
                                           or {}).items()}
    for o in config.hydra.overrides.task:
        k, _, v = str(o).partition("=")
        params[k.lstrip("+~")] = v
    return params


def _is_sweep(key: str, value: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"{key}={value}").is_sweep_override()
    except Exception:  # noqa: BLE001 - Hydra refuses what it cannot parse, with its own message
        return False


def check_search(config, objective: str) -> None:
    """Refuse, before any trial, a search whose winner would not be a validation result (ConfigError)."""
    from kdbench.errors import ConfigError

    allowed = ", ".join(f"{k} ({v[1]})" for k, v in OBJECTIVES.items())
    if objective not in OBJECTIVES:
        if "test" in str(objective).lower():
            raise ConfigError(KEY, f"{objective!r} is a test-set metric: hyper-parameters chosen on the test set "
                                   f"make its numbers optimistic; allowed: {allowed}")
        raise ConfigError(KEY, f"unknown objective {objective!r}; allowed: {allowed}")
    direction = config.hydra.sweeper.get("direction", "maximize")
    directions = [str(d) for d in direction] if not isinstance(direction, str) else [direction]
    if [d.lower() for d in directions] != ["maximize"]:
        raise ConfigError("hydra.sweeper.direction", f"the objective {objective} is better when higher: "
                                                     f"one direction, maximize; got {', '.join(directions)}")
    if str(config.get("dataset", {}).get("val_size")) in ("0", "0.0"):
        raise ConfigError("dataset.val_size", "0 validates on the test set, so the search would tune on test: "
                                              "give a validation split (e.g. dataset.val_size=0.1)")
    for k, v in _params(config).items():
        if k in SEED_KEYS and _is_sweep(k, v):
            raise ConfigError(f"hydra.sweeper.params.{k}", f"{k}={v}: a search over seeds picks the luckiest "
                                                           f"draw; fix it ({k}=0), then run the best setting "
                                                           "over several seeds")


def search_experiment(config) -> str:
    """The experiment the trials' records go to (``experiment_name`` as the trials get it)."""
    return str(_params(config).get("experiment_name") or config.experiment_name)


class Search(Callback):
    """The Hydra callback of ``conf/hparams_search/*.yaml`` (see the module docstring)."""

    def __init__(self, objective: str = "val/acc") -> None:
        self.objective = str(objective)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from kdbench.errors import exit_codes

        with exit_codes(exit=True):  # one line, exit 2, before any trial
            check_search(config, self.objective)
        space = " ".join(f"{k}={v}" for k, v in _params(config).items() if _is_sweep(k, v))
        print(f"kdbench search: {config.hydra.sweeper.get('n_trials')} trials of {config.distill.variant} over "
              f"{space or 'nothing (no search parameter)'}; objective {self.objective} "
              f"({OBJECTIVES[self.objective][1]}); records in experiment {search_experiment(config)}", flush=True)

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED or job_return.cfg is None:
            return
        rec = _record_of(job_return.cfg)
        if rec is not None:
            job_return.return_value = objective_value(rec, self.objective)
        elif self.objective != "val/acc":  # the task's own return value is the best epoch's: not this objective
            job_return.return_value = math.nan

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from kdbench.files import abs_path

        runs = abs_path(config.paths.runs_dir)
        exp = search_experiment(config)
        table = best_trials(runs, exp, self.objective)
        if table is None:
            print(f"kdbench search: no complete trial in experiment {exp}")
            return
        from kdbench.browse import print_table

        paths = write_best_trials(table, runs, exp, self.objective)
        print_table(table.drop(columns=["_csv"], errors="ignore"),
                    title=f"best trial per method, {exp} (objective {self.objective}; test top-1 reported, "
                          "never optimised)")
        print(f"best trials: {paths['md']}\nrecords:     {runs / exp}")


def _record_of(cfg) -> dict | None:
    """The record of the run ``cfg`` (a job's config) wrote, if it is there."""
    from kdbench.config import resolve
    from kdbench.identity import run_id_of
    from kdbench.lifecycle import Job
    from kdbench.records import read_record

    try:
        conf = resolve(cfg)
        rec = read_record(Job(cfg, conf, run_id_of(conf), []).record_path)
        return rec if isinstance(rec, dict) else None
    except Exception:  # noqa: BLE001 - no readable record: the trial's own return value stands
        return None


def _searched_keys(records: Iterable[Mapping]) -> list[str]:
    """The config keys (dotted) that take several values among ``records``: what the search varied."""
    from kdbench.identity import computational
    from kdbench.report.frame import config_leaves

    leaves = [config_leaves(computational(r.get("config") or {})) for r in records]
    keys = sorted({k for flat in leaves for k in flat})
    return [k for k in keys if len({str(flat.get(k)) for flat in leaves}) > 1 and k not in SEED_KEYS]


def best_trials(runs_dir: str | Path, experiment: str, objective: str = "val/acc"):
    """One row per method (variant) of ``experiment``: its trials, the best one's objective, setting,
    test top-1 and run id (a pandas DataFrame of display strings; the full-precision values in column
    ``_csv``); None when no trial completed."""
    import pandas as pd

    from kdbench.report.frame import config_leaves, iter_experiment_records
    from kdbench.report.tables import fmt_num, fmt_value

    by_variant: dict[str, list[dict]] = {}
    for _, r in iter_experiment_records(runs_dir, experiment):
        by_variant.setdefault(str(r.get("variant")), []).append(r)
    rows = []
    for variant, recs in sorted(by_variant.items()):
        done = [r for r in recs if r.get("status") == "complete" and not math.isnan(objective_value(r, objective))]
        if not done:
            continue
        best = max(done, key=lambda r: (objective_value(r, objective), -done.index(r)))
        keys = _searched_keys(done)
        flat = config_leaves(best.get("config") or {})
        test = (((best.get("metrics") or {}).get("last") or {}).get("test") or {}).get("acc")
        rows.append({
            "method": variant, "trials": f"{len(done)}/{len(recs)}",
            "val top-1 (%)": fmt_value(objective_value(best, objective), 100.0),
            "test top-1 last (%)": fmt_value(test, 100.0),
            "setting": " ".join(f"{k.rsplit('.', 1)[-1]}={_short(flat.get(k), fmt_num)}" for k in keys) or "—",
            "run id": str(best.get("run_id")),
            "_csv": {"method": variant, "complete": len(done), "trials": len(recs), "objective": objective,
                     "objective_value": objective_value(best, objective), "last_test_acc": test,
                     "run_id": best.get("run_id"), **{k: flat.get(k) for k in keys}},
        })
    return pd.DataFrame(rows) if rows else None


def _short(v: Any, fmt_num) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return fmt_num(v)


def write_best_trials(table, runs_dir: str | Path, experiment: str, objective: str) -> dict[str, Path]:
    """``best_trials.md`` and ``best_trials.csv`` into ``<results>/<experiment>/`` (the report's writers)."""
    import pandas as pd

    from kdbench.report.frame import default_out_dir
    from kdbench.report.tables import markdown_table, write_text_files

    shown = table.drop(columns=["_csv"])
    md = (f"# {experiment}: best trial per method\n\nObjective: {objective} ({OBJECTIVES[objective][1]}), "
          "maximised by the search; test top-1 of the same trial, reported, never optimised. trials: complete / "
          "all records of the method. setting: the keys the method's trials varied.\n\n"
          + markdown_table(shown) + "\n")
    csv = pd.DataFrame(table["_csv"].tolist()).to_csv(index=False)
    return write_text_files(default_out_dir(runs_dir, experiment),
                            {"md": ("best_trials.md", md), "csv": ("best_trials.csv", csv)})
