"""The W&B side of reports: read finished runs from the W&B API, log a report's tables and figures.

:func:`wandb_credentials` is also the check of training runs (:mod:`kdbench.tracking`); offline and
disabled modes never reach the network.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from kdbench.report.frame import ReportError, published_fields

__all__ = ["wandb_credentials", "load_wandb_runs", "log_report"]


def wandb_credentials() -> bool:
    """Are W&B credentials configured (``WANDB_API_KEY`` or a netrc entry)?"""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def load_wandb_runs(path: str, experiment: str, timeout: int = 30):
    """Runs of ``experiment`` (W&B group) in ``ENTITY/PROJECT`` as the same flat columns as the records.

    Only finished runs logged online are visible to the API; histories and reliability bins are not
    read, so tables can be built this way but not the plots.
    """
    import pandas as pd

    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportError("--from-wandb", f"reading the W&B API needs WANDB_MODE=online (it is '{mode}'); offline "
                                          "runs are invisible to the API: build the table from the local records")
    if "/" not in path:
        raise ReportError("--from-wandb", f"expected ENTITY/PROJECT, got '{path}'")
    if not wandb_credentials():
        raise ReportError("--from-wandb", "no W&B credentials (run `wandb login` or set WANDB_API_KEY)")
    try:
        import wandb

        runs = list(wandb.Api(timeout=timeout).runs(path, filters={"group": experiment}))
    except Exception as e:  # network, auth, unknown project: one line
        raise ReportError("--from-wandb", f"cannot read runs of {path}: {type(e).__name__}: "
                                          f"{(str(e).splitlines() or [''])[0][:200]}") from None
    rows = []
    for run in runs:
        cfg = dict(run.config or {})
        summ = dict(run.summary or {})
        distill = cfg.get("distill") or {}
        done = run.state == "finished" and summ.get("final/last_acc") is not None
        row: dict[str, Any] = {
            "run_id": cfg.get("run_id") or run.name or run.id, "experiment": run.group or experiment,
            "variant": distill.get("variant"), "seed": cfg.get("seed"),
            "status": "complete" if done else ("running" if run.state == "running" else "failed"),
            "error": None if done else f"W&B state: {run.state}",
            "dataset": (cfg.get("dataset") or {}).get("name"), "teacher_arch": (cfg.get("teacher") or {}).get("arch"),
            "student_arch": (cfg.get("student") or {}).get("arch"),
        }
        row.update({f"distill_{k}": v for k, v in distill.items()})
        for k, v in summ.items():
            m = re.fullmatch(r"(last|best)/(val|test)/(\w+)", k)
            old = re.fullmatch(r"final/(last|best)_(\w+)", k)  # runs logged before the per-protocol summary
            if m:
                row[f"{m[1]}_{m[2]}_{m[3]}"] = v
            elif old:
                row[f"{old[1]}_test_{old[2]}"] = v
            elif k.startswith("teacher/"):
                row[f"teacher_test_{k[8:]}"] = v
        row.update(published_fields(cfg, row["dataset"], row["variant"]))
        rows.append(row)
    if not rows:
        raise ReportError("--from-wandb", f"no W&B runs in group '{experiment}' of {path}")
    return pd.DataFrame(rows)


def log_report(experiment: str, out_dir: Path, display, summary, plots: dict[str, Path],
               settings: dict | None = None) -> str | None:
    """Log the display table, the numeric summary and the figures to a ``job_type="report"`` W&B run;
    returns the run's folder. ``settings`` is the sweep's ``logger.wandb`` (project, entity, mode);
    without it, ``WANDB_PROJECT`` / ``WANDB_ENTITY`` / ``WANDB_MODE`` (offline by default)."""
    import wandb

    from kdbench.identity import wandb_id

    settings = settings or {}
    mode = settings.get("mode") or os.environ.get("WANDB_MODE", "offline")
    if mode == "online" and not wandb_credentials():
        print("kdbench-report: warning: WANDB_MODE=online but no W&B credentials: logging offline", file=sys.stderr)
        mode = "offline"
    wdir = out_dir.parent
    wdir.mkdir(parents=True, exist_ok=True)
    run_ids = sorted(str(r) for r in display.run_ids)
    run = wandb.init(project=settings.get("project") or os.environ.get("WANDB_PROJECT", "kdbench"),
                     entity=settings.get("entity") or os.environ.get("WANDB_ENTITY"),
                     group=experiment, job_type="report", name=f"report-{experiment}", mode=mode, dir=str(wdir),
                     id=wandb_id("report", experiment), resume="allow",  # one report run per experiment
                     config={"experiment": experiment, "n_runs": len(run_ids), "run_ids": run_ids,
                             "group_cols": [str(c) for c in display.group_cols]},
                     reinit="create_new", settings=wandb.Settings(console="off", silent=True))
    try:
        clean = summary.table.astype(object).where(summary.table.notna(), None)
        payload: dict[str, Any] = {"report/table": wandb.Table(dataframe=display.table.astype(str)),
                                   "report/summary": wandb.Table(dataframe=clean)}
        payload.update({f"report/{k}": wandb.Image(str(p)) for k, p in plots.items()})
        run.log(payload)
        run_dir = getattr(run, "dir", None)
    finally:
        run.finish()
    return run_dir
