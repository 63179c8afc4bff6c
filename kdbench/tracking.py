"""Experiment trackers for a run: W&B (offline unless asked) and CSV, as Lightning loggers.

Online mode without credentials falls back to offline with a warning; a W&B run is always
finished (even when the run fails), so the next run in the same process gets its own.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from kdbench.records import DIRECTIONS

log = logging.getLogger("kdbench")


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_settings():
    import wandb

    return wandb.Settings(init_timeout=30, console="off", silent=True)


def make_loggers(lg: Any, *, run_id: str, name: str, group_tags: list[str], config: dict,
                 wandb_dir: Path, experiment: str, csv_dir: Path | None = None) -> list:
    """Lightning loggers for the ``logger`` config: W&B and/or CSV (none when neither is set)."""
    loggers: list = []
    lg = lg or {}
    if lg.get("wandb") and lg["wandb"].get("mode") != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        w = lg["wandb"]
        mode = w.get("mode")
        if mode == "online" and not wandb_has_credentials():
            warnings.warn("logger.wandb.mode=online but no W&B credentials were found: logging offline instead "
                          "(run `wandb login`, then `wandb sync` the offline run)", stacklevel=2)
            mode = "offline"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(WandbLogger(
            project=w.get("project"), entity=w.get("entity"), group=w.get("group"), job_type=w.get("job_type"),
            name=name, tags=[str(t) for t in (w.get("tags") or [])] + group_tags, save_dir=str(wandb_dir),
            offline=(mode == "offline"), config=config, settings=wandb_settings()))
    if lg.get("csv"):
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(csv_dir or lg["csv"]["save_dir"]), name=experiment, version=run_id))
    return loggers


def define_summaries(loggers: list) -> str | None:
    """Tell W&B which way is better for each metric (its run summary keeps the best); return its run dir."""
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            exp = lg.experiment
            for split in ("val", "test"):
                for metric, better in DIRECTIONS.items():
                    exp.define_metric(f"{split}/{metric}", summary=better)
            exp.define_metric("train/loss", summary="min")
            return getattr(exp, "dir", None)
    return None


def log_final(loggers: list, last_test: dict, best_test: dict, teacher_test: dict) -> None:
    flat = {f"final/last_{k}": v for k, v in last_test.items()}
    flat.update({f"final/best_{k}": v for k, v in best_test.items()})
    flat.update({f"teacher/{k}": v for k, v in teacher_test.items()})
    for lg in loggers:
        lg.log_metrics(flat)


def finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run, as failed when ``exit_code`` is not 0 (a failed, diverged or interrupted run)."""
    try:
        import wandb

        if wandb.run is not None:
            # finish it, so that the next run in this process (Hydra's basic launcher runs a whole sweep in
            # one process) gets its own W&B run instead of logging into this one
            wandb.finish(exit_code=exit_code)
    except Exception as e:  # never let tracker shutdown sink a run
        log.warning("could not finish the W&B run: %s: %s", type(e).__name__, e)
