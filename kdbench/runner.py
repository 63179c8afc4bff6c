"""One distillation run from a composed config, end to end (the library behind ``python -m kdbench.train``).

validate -> data -> teacher signal -> student -> method -> fit/test -> record (JSON, atomic) + W&B.
Each step's machinery lives in its own module; this one only wires them, top to bottom.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from kdbench.config import check_class_counts, is_scratch, resolve, unusual_values, validate
from kdbench.errors import ConfigError, DivergedError
from kdbench.identity import run_id_of
from kdbench.provenance import device_name, in_multirun, overrides, versions
from kdbench.records import complete_record, jsonable, run_lock, summary, write_record

log = logging.getLogger("kdbench")


def abs_path(path: Any) -> Path:
    return Path(hydra.utils.to_absolute_path(str(path)))


def load_data(dataset: dict):
    """The dataset as in-memory tensors, with the validation split held out of the training set."""
    from kdbench.data import load_dataset, split_train_val

    d = {**dataset, **{k: str(abs_path(dataset[k])) for k in ("root", "cache_dir") if dataset.get(k)}}
    data = load_dataset(d)
    try:
        return split_train_val(data, d["val_size"], seed=d["split_seed"])
    except ValueError as e:  # val_size >= the training set: a config error, known only once the data is loaded
        raise ConfigError("dataset.val_size", str(e)) from None


def run(cfg: DictConfig) -> dict:
    """One run; returns its record. Raises KDBenchError for bad input (before anything is written),
    :class:`~kdbench.interrupts.RunInterrupted` on Ctrl-C / SIGTERM (the record says ``interrupted``)."""
    from kdbench.interrupts import trapped

    with trapped() as trap:
        try:
            return _run(cfg, trap)
        except BaseException as e:
            trap.raise_if_caught(e)  # whatever Lightning made of the signal (SystemExit, KeyboardInterrupt)
            raise


def _run(cfg: DictConfig, trap) -> dict:
    from kdbench import teachers
    from kdbench.signals import build_signal, needs_teacher, preflight_signal

    t0 = time.time()
    validate(cfg)
    if int(cfg.get("fuse", 1)) != 1:
        raise ConfigError("fuse", f"fuse={cfg.fuse} fuses the jobs of a sweep: run `python -m kdbench.sweep ... "
                                  f"fuse={cfg.fuse}` (one run of kdbench.train is one job)")
    for w in unusual_values(cfg):
        log.warning(w)
        print(f"kdbench: warning: {w}", file=sys.stderr)
    conf = resolve(cfg)  # every `auto` resolved, credentials redacted: what is hashed and recorded
    run_id = run_id_of(conf)
    ignored = sorted(set(cfg.distill) - set(conf["distill"]))
    if ignored:
        log.warning("distill.%s: not read by method %s (ignored)", ", distill.".join(ignored), conf["distill"]["method"])
    runs_dir, ckpt_root = abs_path(cfg.paths.runs_dir), abs_path(cfg.paths.checkpoints_dir)
    record_path = runs_dir / cfg.experiment_name / f"{run_id}.json"
    done = None if cfg.force else complete_record(record_path)
    if done is not None:
        log.info("run %s is already complete (%s); skipping (force=true re-runs it)", run_id, record_path)
        print(f"kdbench: {run_id} already complete, record {record_path}")
        return done

    # data -> teacher signal
    data = load_data(conf["dataset"])
    check_class_counts(data.num_classes, cfg)
    scratch, trainer = is_scratch(cfg), conf["trainer"]
    preflight_signal(conf["teacher_signal"], conf, data)  # e.g. a teacher cache that cannot fit: before any work
    teacher, tmeta = None, None
    if (not scratch and needs_teacher(conf["teacher_signal"])) or cfg.teacher_only:
        teacher, tmeta = teachers.for_run(conf["teacher"], conf["dataset"], trainer, data,
                                          teachers_dir=abs_path(cfg.paths.teachers_dir), checkpoints_dir=ckpt_root,
                                          eval_batch_size=conf["dataset"]["eval_batch_size"], log=log.info)
    if cfg.teacher_only:
        acc = (tmeta.get("test") or {}).get("acc")
        print(f"kdbench: teacher {tmeta.get('name')} ready at {tmeta.get('path')}"
              + (f" (test acc {100 * acc:.2f}%)" if acc is not None else ""))
        return {"teacher": tmeta, "metrics": {}}
    signal = build_signal(conf["teacher_signal"], teacher=teacher, conf=conf, data=data, teacher_meta=tmeta)

    # student -> method -> module
    module, spec = build_student_module(cfg, conf, data, signal)
    record = new_record(cfg, conf, run_id, data, signal, tmeta, overrides())
    with run_lock(ckpt_root / cfg.experiment_name / f"{run_id}.lock", record_path, run_id, wait=in_multirun()):
        done = None if cfg.force else complete_record(record_path)
        if done is not None:  # another job of the sweep was this run, and finished it while we waited
            print(f"kdbench: {run_id} already complete, record {record_path}")
            return done
        return _fit_and_record(cfg, conf, run_id, record_path, record, module, data, spec, t0=t0, trap=trap)


def build_student_module(cfg, conf: dict, data, signal, module_cls=None):
    """The run's student, method and DistillModule (``module_cls``: a subclass, for fused runs), and its
    FitSpec; the student's init is drawn under the run's ``seed``."""
    import pytorch_lightning as pl

    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, check_every
    from kdbench.methods import build_method
    from kdbench.models import build_model

    scratch, d, trainer = is_scratch(cfg), conf["distill"], conf["trainer"]
    pl.seed_everything(int(conf["seed"]), verbose=False)
    student = build_model(conf["student"]["arch"], data.num_classes, data.input_shape,
                          **(conf["student"].get("kwargs") or {}))
    method = None if scratch else build_method(d["method"], d)
    dbg = conf.get("debug") or {}
    spec = FitSpec.from_trainer(trainer, max_epochs=int(trainer["max_epochs"]), extra=debug_trainer_args(dbg),
                                callbacks=dict(conf.get("callbacks") or {}),
                                batch_size=int(conf["dataset"]["batch_size"]),
                                eval_batch_size=int(conf["dataset"]["eval_batch_size"]),
                                augment=conf["dataset"]["augment"], data_seed=int(conf["data_seed"]))
    module = (module_cls or DistillModule)(
        student, data.num_classes, OptimSpec(**conf["optim"]), SchedSpec(**conf["sched"]), method=method,
        signal=signal, check_finite_every=check_every(trainer["check_finite_every"], trainer["accelerator"]),
        reference=_true_law(data))
    return module, spec


def new_record(cfg, conf: dict, run_id: str, data, signal, tmeta: dict | None, job_overrides: list[str]) -> dict:
    """A run's record as it starts (status ``running``)."""
    scratch, d, trainer = is_scratch(cfg), conf["distill"], conf["trainer"]
    record: dict[str, Any] = {
        "run_id": run_id, "experiment": cfg.experiment_name, "variant": d["variant"], "seed": int(conf["seed"]),
        "status": "running", "error": None, "config": conf, "overrides": job_overrides,
        "dataset": conf["dataset"]["name"], "dataset_info": jsonable(data.info),
        "teacher_arch": None if scratch else conf["teacher"]["arch"], "student_arch": conf["student"]["arch"],
        # what the loss actually used: a scratch run trains on labels only, alpha = 1
        "distill": d, "teacher_signal": signal.kind,  # a scratch run: {variant, method none, alpha 1}
        "metrics": {}, "teacher": None, "history": [], "reliability": {},
        "versions": versions(), "device": device_name(trainer["accelerator"]), "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "val_is_test": data.val_x is None,
        # what was asked for; replaced by what Lightning actually set once the fit is done
        "deterministic": trainer["deterministic"] not in (False, None),
    }
    if (tmeta or getattr(signal, "header", None)) and not scratch:  # a captured signal names its teacher
        t = tmeta or {**signal.header["teacher"], "path": None, "capture": str(conf["teacher_capture"]["path"])}
        record["teacher"] = {k: t.get(k) for k in ("key", "name", "arch", "test", "path", "capture") if k in t}
    return record


def debug_trainer_args(debug: dict) -> dict:
    """Lightning Trainer arguments of a ``debug=`` config (``conf/debug/``)."""
    out: dict = {}
    if debug.get("fast_dev_run"):
        out["fast_dev_run"] = True
    if debug.get("limit_batches"):
        out["limit_train_batches"] = int(debug["limit_batches"])
    if debug.get("limit_eval_batches"):
        out["limit_val_batches"] = out["limit_test_batches"] = int(debug["limit_eval_batches"])
    if debug.get("overfit_batches"):
        out["overfit_batches"] = int(debug["overfit_batches"])
    return out


def _true_law(data):
    """The data's true next-token law when it has one (``dataset=markov``): test records then hold
    ``kl_to_true`` for the student (and a dense teacher)."""
    if ((getattr(data, "info", None) or {}).get("oracle") or {}).get("transition") is None:
        return None
    from kdbench.data.text import markov_oracle

    return markov_oracle(data)  # a metric only: never the run's teacher


def _fit_and_record(cfg, conf, run_id, record_path, record, module, data, spec, *, t0: float, trap) -> dict:
    """Write the ``running`` record, fit and test, then the final record (whatever ended the run) and close W&B."""
    from kdbench import teachers, tracking
    from kdbench.engine import fit_and_test

    d = conf["distill"]
    ckpt_root = abs_path(cfg.paths.checkpoints_dir)
    write_record(record_path, record)

    # fit / test -> record
    wandb_dir, exit_code = None, 0
    try:
        art = tracking.log_teacher(conf.get("logger"), record["teacher"], abs_path(cfg.paths.wandb_dir))
        loggers = tracking.make_loggers(
            conf.get("logger"), run_id=run_id, name=tracking.run_name(d["variant"], conf["seed"], record["overrides"]),
            config={**conf, **({"teacher_artifact": art} if art else {})}, fresh=bool(cfg.force),
            group_tags=[d["variant"], conf["dataset"]["name"]], wandb_dir=abs_path(cfg.paths.wandb_dir),
            experiment=cfg.experiment_name,
            csv_dir=abs_path(cfg.logger.csv.save_dir) if (cfg.get("logger") or {}).get("csv") else None)
        wandb_dir = tracking.define_summaries(loggers)
        res = fit_and_test(module, data, spec, ckpt_dir=ckpt_root / cfg.experiment_name / run_id,
                           logger=loggers or None, resume=bool(cfg.resume) and not cfg.force)
        # a debug run (debug=fast|limit|overfit) ran, but on a few batches: never a result
        record.update(status="debug" if conf.get("debug") else "complete",
                      metrics={"last": res.last, "best": res.best}, history=res.history,
                      reliability=res.reliability, deterministic=res.deterministic, resumed_from=res.resumed_from)
        if record["teacher"] is not None and res.teacher_test:
            warning = teachers.drift(record["teacher"].get("test"), res.teacher_test, int(len(data.test_y)))
            if warning:
                log.warning("teacher %s: %s", record["teacher"].get("name"), warning)
                record["teacher"]["drift"] = warning
            record["teacher"].update(registry_test=record["teacher"].get("test"), test=res.teacher_test)
        tracking.log_final(loggers, res.last, res.best, res.teacher_test, record)
    except DivergedError as e:
        record.update(status="diverged", error=str(e), diverged_step=e.step, history=module.history)
        exit_code = 3
        raise
    except BaseException as e:
        if trap.signum is not None:  # Ctrl-C / SIGTERM, whatever Lightning turned it into
            from kdbench.interrupts import RunInterrupted

            sig = RunInterrupted(trap.signum)
            done = len(module.history)
            record.update(status="interrupted", error=f"{sig} after {done} epoch(s); the next invocation resumes "
                                                     "from the last checkpoint", history=module.history)
            exit_code = sig.exit_code
        else:
            record.update(status="failed", error=f"{type(e).__name__}: {e}".strip()[:2000],
                          traceback=traceback.format_exc(limit=8)[-4000:], history=module.history)
            exit_code = 1
        raise
    finally:
        record.update(wall_time_s=round(time.time() - t0, 3), wandb_dir=wandb_dir,
                      finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_record(record_path, record)
        tracking.finish_wandb(exit_code)
    record["record_path"] = str(record_path)
    print(summary(record, record_path))
    return record


_NOISE = (".*does not have many workers.*", ".*The `srun` command is available.*", ".*LeafSpec.*",
          ".*smaller than the logging interval.*", ".*module\\(s\\) in eval mode.*", ".*anonymous setting.*",
          ".*litlogger.*", ".*GPU available but not used.*",
          # resuming (the folder holds the run's own checkpoints) and testing the best weights after a
          # multi-device fit (on a fresh one-device trainer, without the checkpoint callbacks)
          ".*Checkpoint directory .* exists and is not empty.*", ".*callbacks used to create the checkpoint.*")


def quiet_libraries() -> None:
    """Keep the console to what a user needs: Lightning's INFO chatter and known-benign warnings off."""
    import pytorch_lightning  # noqa: F401  (sets its own logger level on import; override it after)

    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)

