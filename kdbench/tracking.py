"""Experiment trackers for a run: W&B (offline unless asked) and CSV, as Lightning loggers.

Online mode without credentials falls back to offline with a warning; a W&B run is always
finished (even when the run fails), so the next run in the same process gets its own.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from kdbench.identity import wandb_id
from kdbench.records import DIRECTIONS

log = logging.getLogger("kdbench")


def wandb_settings(mode: str):
    """The settings of every kdbench W&B run. ``mode`` goes in here too: once a process has opened and
    finished one W&B run (the teacher's), a later ``WandbLogger(offline=True)`` whose settings do not say
    the mode asks for a login (wandb 0.31), and a run without credentials failed there."""
    import wandb

    return wandb.Settings(init_timeout=30, console="off", silent=True, mode=mode)


#: override keys that never make a W&B run name: the variant and seed are shown anyway; the others are shared
#: by the runs of a group (its experiment, their length, the teacher's recipe, a debug preset)
_NAME_SKIP = {"experiment", "seed", "distill", "trainer.max_epochs", "debug"}
_NAME_SKIP_PREFIX = ("hydra", "teacher.recipe.", "debug.")


def run_name(variant: str, seed: int, overrides: list[str]) -> str:
    """``kd tau=4 alpha=0.5 s0``: the variant, the values of the keys the command line set that can tell two
    runs of one group (experiment) apart, then the seed. Keys that never change a number (experiment_name,
    fuse, paths, logger, ...), what the runs of a group share (max_epochs, the teacher's recipe) and paths (a
    capture store: its ``k`` or the signal say what differs) are left out."""
    from kdbench.identity import is_computational

    shown = []
    for o in overrides:
        k, _, v = o.lstrip("+~").partition("=")
        if k in _NAME_SKIP or k.startswith(_NAME_SKIP_PREFIX) or not is_computational(k) or "/" in v:
            continue
        shown.append(f"{k.rsplit('.', 1)[-1]}={v}")
    return " ".join([variant, *shown, f"s{seed}"])


def run_tags(config: dict) -> list[str]:
    """What a W&B runs table filters by, besides the variant and dataset: the teacher signal, the method and
    the two architectures (a scratch run has no teacher)."""
    d, tags = config.get("distill") or {}, []
    signal = config.get("teacher_signal")
    if signal:
        tags.append(f"signal:{signal}")
    if d.get("method"):
        tags.append(f"method:{d['method']}")
    teacher = (config.get("teacher") or {}).get("arch")
    if teacher and signal not in (None, "none"):
        tags.append(f"teacher:{teacher}")
    student = (config.get("student") or {}).get("arch")
    if student:
        tags.append(f"student:{student}")
    return [t[:64] for t in tags]  # W&B's limit on a tag


def make_loggers(lg: Any, *, run_id: str, name: str, group_tags: list[str], config: dict,
                 wandb_dir: Path, experiment: str, csv_dir: Path | None = None, fresh: bool = False) -> list:
    """Lightning loggers for the ``logger`` config: W&B and/or CSV (none when neither is set).

    The W&B run's id is derived from the kdbench run id (:func:`kdbench.identity.wandb_id`) and resumed when it exists,
    so a resumed kdbench run continues its W&B run; ``fresh`` (``force=true``: trained again from
    scratch) gives it a new id. Each job's W&B run is its own (``reinit="create_new"``), beside the others of
    a fused group or of a sweep in one process; :func:`finish_loggers` closes it."""
    loggers: list = []
    lg = lg or {}
    if lg.get("wandb") and lg["wandb"].get("mode") != "disabled":
        from kdbench.report.tracking import wandb_credentials

        w = lg["wandb"]
        mode = w.get("mode")
        if mode == "online" and not wandb_credentials():
            warnings.warn("logger.wandb.mode=online but no W&B credentials were found: logging offline instead "
                          "(run `wandb login`, then `wandb sync` the offline run)", stacklevel=2)
            mode = "offline"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        wid = wandb_id(experiment, run_id)
        if fresh:
            import time

            wid = f"{wid[:50]}-{int(time.time())}"
        tags = list(dict.fromkeys([str(t) for t in (w.get("tags") or [])] + group_tags + run_tags(config)))
        loggers.append(RunLogger(
            project=w.get("project"), entity=w.get("entity"), group=w.get("group"), job_type=w.get("job_type"),
            name=name, tags=tags, save_dir=str(wandb_dir),
            offline=(mode == "offline"), config={**config, "kdbench_run_id": run_id}, settings=wandb_settings(mode),
            id=wid, resume="allow", reinit="create_new"))
    if lg.get("csv"):
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(csv_dir or lg["csv"]["save_dir"]), name=experiment, version=run_id))
    return loggers


def define_summaries(loggers: list) -> str | None:
    """Tell W&B which way is better for each metric (its run summary keeps the best); return its run dir."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            exp = lg.experiment
            # one meaning per summary key: the two protocols are `last/*` and `best/*` (log_final), so the
            # history's per-epoch `val/*` and Lightning's `epoch` (its count of epochs after the fit, one more
            # than `last/epoch`) stay out of the summary; the test passes log as `last/test/*` and `best/test/*`
            for metric in DIRECTIONS:
                exp.define_metric(f"val/{metric}", summary="none")
            exp.define_metric("epoch", summary="none")
            exp.define_metric("train/loss", summary="last")
            return getattr(exp, "dir", None)
    return None


def log_final(loggers: list, last: dict, best: dict, teacher_test: dict, record: dict | None = None) -> None:
    """The two reporting protocols side by side in the W&B summary (``last/*``: final epoch, CRD;
    ``best/*``: best validation epoch, DKD), each from one epoch, and a reliability diagram."""
    flat: dict[str, Any] = {}
    for proto, m in (("last", last), ("best", best)):
        flat[f"{proto}/epoch"] = m.get("epoch")
        for split in ("val", "test"):
            flat.update({f"{proto}/{split}/{k}": v for k, v in (m.get(split) or {}).items()})
    flat.update({f"teacher/{k}": v for k, v in teacher_test.items()})
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            exp = lg.experiment
            exp.summary.update({k: v for k, v in flat.items() if v is not None})
            if record is not None and (record.get("reliability") or {}).get("last"):
                _log_reliability(exp, record)
        else:
            lg.log_metrics({k: v for k, v in flat.items() if isinstance(v, (int, float))})


def _log_reliability(exp, record: dict) -> None:
    import tempfile

    import wandb

    from kdbench.report.plots import plot_reliability

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_reliability([record], Path(tmp) / "reliability.png")
            if path is not None:
                exp.log({"reliability": wandb.Image(str(path))})
    except Exception as e:  # noqa: BLE001 - a figure must never sink a finished run
        log.warning("could not log the reliability diagram to W&B: %s: %s", type(e).__name__, e)


def finish_loggers(loggers: list, exit_code: int = 0) -> None:
    """Close these loggers' own W&B runs (as failed on a non-zero ``exit_code``) and flush the CSV ones."""
    for lg in loggers:
        try:
            if isinstance(lg, WandbLogger):
                if lg._experiment is not None:
                    lg._experiment.finish(exit_code=exit_code)
            else:
                lg.save()
                lg.finalize("success" if exit_code == 0 else "failed")
        except Exception as e:  # noqa: BLE001 - never let tracker shutdown sink a run
            log.warning("could not finish a logger: %s: %s", type(e).__name__, e)


def log_teacher(lg: Any, teacher: dict | None, wandb_dir: Path) -> str | None:
    """The teacher as its own W&B run (``job_type=teacher``), once per teacher and W&B folder, with its
    registry weights as an artifact; returns the artifact's name for the student runs' config
    (``teacher_artifact``), or None without W&B or without a registry teacher."""
    lg = lg or {}
    w = lg.get("wandb") or {}
    path = Path(str((teacher or {}).get("path") or ""))
    if not w or w.get("mode") == "disabled" or not (path / "model.safetensors").is_file():
        return None
    import json

    import wandb

    from kdbench.report.tracking import wandb_credentials

    name = artifact_name(str(teacher.get("name") or path.name))  # the registry entry's own name
    marker = Path(wandb_dir) / "wandb" / ".kdbench-teachers" / f"{name}.json"  # beside the runs it refers to
    if marker.is_file():
        return json.loads(marker.read_text())["artifact"]
    mode = w.get("mode")
    if mode == "online" and not wandb_credentials():
        mode = "offline"
    meta = {k: teacher.get(k) for k in ("key", "name", "arch", "test")}
    try:
        run = wandb.init(project=w.get("project"), entity=w.get("entity"), job_type="teacher", name=path.name,
                         id=wandb_id("teachers", path.name), resume="allow", group="teachers", mode=mode,
                         dir=str(wandb_dir), config=meta, reinit="create_new", settings=wandb_settings(mode))
        try:
            art = wandb.Artifact(name, type="model", metadata=meta)
            art.add_file(str(path / "model.safetensors"))
            if (path / "meta.json").is_file():
                art.add_file(str(path / "meta.json"))
            run.log_artifact(art)
            run.summary.update({f"test/{k}": v for k, v in (teacher.get("test") or {}).items()})
        finally:
            run.finish()
    except Exception as e:  # noqa: BLE001 - tracking must never sink a run
        log.warning("could not log the teacher to W&B: %s: %s", type(e).__name__, e)
        return None
    ref = f"{name}:latest"
    from kdbench.files import atomic_write_text

    atomic_write_text(marker, json.dumps({"artifact": ref, "teacher": str(path)}) + "\n")
    return ref


def artifact_name(entry: str) -> str:
    """A W&B artifact name for a teacher registry entry: the entry's folder name (letters, digits, ``-``, ``_``
    and ``.`` are kept; anything else becomes ``_``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", entry)[:128]


class RunLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` that does not pass W&B the ``anonymous`` setting (W&B warns that it has
    no effect on every run) and logs the two test passes (last weights, then best weights; see
    :func:`kdbench.engine.test_last_and_best`) under their own keys, ``last/test/*`` and ``best/test/*``,
    instead of twice under ``test/*``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        getattr(self, "_wandb_init", {}).pop("anonymous", None)  # Lightning's wandb.init arguments
        self.test_passes = 0

    def log_metrics(self, metrics, step=None):
        if any(str(k).startswith("test/") for k in metrics):
            proto = "last" if self.test_passes == 0 else "best"
            self.test_passes += 1
            metrics = {(f"{proto}/{k}" if str(k).startswith("test/") else k): v for k, v in metrics.items()
                       if k != "epoch"}
        return super().log_metrics(metrics, step)
