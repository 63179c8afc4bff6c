"""``python -m kdbench.train``: one distillation run from a Hydra config, end to end.

validate config -> load data -> teacher from the registry (trained once) -> student ->
DistillModule -> Trainer.fit/test -> run record (JSON, atomic) + W&B (offline by default).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kdbench.errors import DivergedError, KDBenchError

log = logging.getLogger("kdbench")

#: config parts that do not change what is computed (so they stay out of the run id)
_NOT_IN_RUN_ID = ("paths", "logger", "hydra", "resume", "force", "tags")
_SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "credential")


def redact(obj: Any) -> Any:
    """Blank out any value whose key looks like a credential (records and W&B configs never carry one)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def resolved(cfg: DictConfig) -> dict:
    return redact(OmegaConf.to_container(cfg, resolve=True))


def run_id_of(cfg: DictConfig) -> str:
    """Deterministic id: the same computation (config minus paths/logging) gives the same id, so a
    re-run resumes or skips it, and two different configs never share a record."""
    c = {k: v for k, v in resolved(cfg).items() if k not in _NOT_IN_RUN_ID}
    for k in ("progress", "log_every_n_steps"):
        c.get("trainer", {}).pop(k, None)
    digest = hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.distill.variant}-s{cfg.seed}-{digest}"


def _data_cfg(cfg: DictConfig) -> dict:
    d = OmegaConf.to_container(cfg.dataset, resolve=True)
    for key in ("root", "cache_dir"):
        if d.get(key):
            d[key] = hydra.utils.to_absolute_path(str(d[key]))
    return d


def dataset_identity(cfg: DictConfig, data) -> dict:
    d = OmegaConf.to_container(cfg.dataset, resolve=True)
    for k in ("root", "download", "cache_dir", "batch_size", "eval_batch_size", "augment"):
        d.pop(k, None)
    d["num_classes"] = data.num_classes
    d["n_train"] = int(data.train_x.shape[0])
    return d


def load_data(cfg: DictConfig):
    from kdbench.data import load_dataset, split_train_val

    data = load_dataset(_data_cfg(cfg))
    try:
        return split_train_val(data, cfg.dataset.val_size, seed=cfg.dataset.split_seed)
    except ValueError as e:  # val_size >= the training set: a config error, known only once the data is loaded
        from kdbench.errors import ConfigError

        raise ConfigError("dataset.val_size", str(e)) from None


def fit_spec(cfg: DictConfig, *, epochs: int, batch_size: int, augment: str, seed: int, progress: bool | None = None):
    from kdbench.engine import FitSpec, resolve_accelerator

    t = cfg.trainer
    acc = resolve_accelerator(t.accelerator)
    return FitSpec(
        max_epochs=int(epochs), batch_size=int(batch_size), eval_batch_size=int(cfg.dataset.eval_batch_size),
        augment=augment, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=t.precision,
        deterministic=t.deterministic, channels_last=t.channels_last,
        progress=bool(t.progress if progress is None else progress), seed=int(seed),
        limit_train_batches=t.limit_train_batches, gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=int(t.log_every_n_steps),
    ), acc


def _check_every(cfg: DictConfig, acc: str) -> int:
    v = cfg.trainer.check_finite_every
    return (1 if acc == "cpu" else 50) if v == "auto" else int(v)


def get_teacher(cfg: DictConfig, data):
    """The frozen teacher for this run (registry lookup, or training it once), and its metadata."""
    import pytorch_lightning as pl

    from kdbench import teachers
    from kdbench.distill import DistillModule, LossSpec, OptimSpec, SchedSpec
    from kdbench.engine import fit_and_test
    from kdbench.models import build_model

    tc = cfg.teacher
    if tc.arch == "oracle":
        from kdbench.data.sources import oracle_teacher

        return teachers.freeze(oracle_teacher(data)), {"arch": "oracle", "key": "oracle", "name": "oracle"}
    kwargs = OmegaConf.to_container(tc.kwargs, resolve=True) or {}
    recipe = OmegaConf.to_container(tc.recipe, resolve=True)
    fields = {"arch": tc.arch, "kwargs": kwargs, "dataset": dataset_identity(cfg, data), "recipe": recipe,
              "seed": int(tc.seed)}
    key = teachers.teacher_key(fields)
    teachers_dir = Path(hydra.utils.to_absolute_path(cfg.paths.teachers_dir))
    if tc.checkpoint:
        entry = Path(hydra.utils.to_absolute_path(str(tc.checkpoint)))
        if not entry.is_dir():
            entry = teachers_dir / str(tc.checkpoint)
        if not teachers.entry_complete(entry):
            from kdbench.errors import TeacherError

            raise TeacherError("teacher.checkpoint", f"no registry entry at {entry} (expected {teachers.META} and "
                                                     f"{teachers.WEIGHTS})")
    else:
        entry = teachers_dir / teachers.entry_name(tc.arch, cfg.dataset.name, int(tc.seed), key)

    def build():
        return build_model(tc.arch, data.num_classes, data.input_shape, **kwargs)

    def train(model):
        spec, acc = fit_spec(cfg, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                             augment=recipe.get("augment", "default"), seed=int(tc.seed))
        pl.seed_everything(int(tc.seed), verbose=False)
        model.load_state_dict(build().state_dict())  # initial weights drawn under the teacher's seed
        module = DistillModule(model, None, data.num_classes, LossSpec(alpha=1.0), OptimSpec(**recipe["optim"]),
                               SchedSpec(**recipe["sched"]), check_finite_every=_check_every(cfg, acc))
        ckpt = Path(hydra.utils.to_absolute_path(cfg.paths.checkpoints_dir)) / "teachers" / entry.name
        res = fit_and_test(module, data, spec, ckpt_dir=ckpt)
        return res.last["test"]

    model, meta, _ = teachers.get_or_train(entry, build, tc.arch, data.num_classes,
                                           train if tc.train_if_missing else None,
                                           {**fields, "key": key, "name": entry.name}, log=log.info)
    meta = {**meta, "name": entry.name, "path": str(entry)}
    return model, meta


def make_loggers(cfg: DictConfig, run_id: str, name: str) -> list:
    """W&B (offline unless asked; online without credentials falls back to offline) and/or CSV."""
    loggers: list = []
    lg = cfg.get("logger") or {}
    if lg.get("wandb") and lg.wandb.mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        w = lg.wandb
        mode = w.mode
        if mode == "online" and not _wandb_has_credentials():
            warnings.warn("logger.wandb.mode=online but no W&B credentials were found: logging offline instead "
                          "(run `wandb login`, then `wandb sync` the offline run)", stacklevel=2)
            mode = "offline"
        save_dir = Path(hydra.utils.to_absolute_path(cfg.paths.wandb_dir))
        save_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(WandbLogger(
            project=w.project, entity=w.entity, group=w.group, job_type=w.job_type, name=name,
            tags=[str(t) for t in (w.tags or [])] + [cfg.distill.variant, cfg.dataset.name],
            save_dir=str(save_dir), offline=(mode == "offline"), config=resolved(cfg),
            settings=_wandb_settings()))
    if lg.get("csv"):
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=hydra.utils.to_absolute_path(lg.csv.save_dir), name=cfg.experiment_name,
                                 version=run_id))
    return loggers


def _wandb_settings():
    import wandb

    return wandb.Settings(init_timeout=30, console="off", silent=True)


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _define_wandb_summaries(loggers: list) -> str | None:
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            exp = lg.experiment
            for k in ("val/acc", "test/acc", "test/agreement"):
                exp.define_metric(k, summary="max")
            for k in ("val/ece", "val/nll", "test/ece", "test/nll", "test/brier", "test/kl_teacher", "train/loss"):
                exp.define_metric(k, summary="min")
            return getattr(exp, "dir", None)
    return None


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            # finish it, so that the next run in this process (Hydra's basic launcher runs a whole sweep in
            # one process) gets its own W&B run instead of logging into this one
            wandb.finish()
    except Exception as e:  # never let tracker shutdown sink a run
        log.warning("could not finish the W&B run: %s: %s", type(e).__name__, e)


def versions() -> dict:
    from kdbench.teachers import versions as v

    return v()


def device_name(acc: str) -> str:
    import torch

    if acc in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def teacher_drift(registered: dict | None, measured: dict | None, n_test: int) -> str | None:
    """A warning when the teacher's test accuracy measured in this run differs from the one stored
    in its registry entry by more than 0.1 % of the test set (and at least 3 images): the stored
    weights are then not the ones those metrics describe (an entry written by older code, a
    hand-edited file) or the test data differ. None when they agree or either is missing."""
    a, b = (registered or {}).get("acc"), (measured or {}).get("acc")
    if a is None or b is None or n_test <= 0:
        return None
    diff = round(abs(float(a) - float(b)) * n_test)
    if diff < 3 or diff <= 0.001 * n_test:
        return None
    return (f"measured test accuracy {100 * float(b):.2f}% differs from the registry's {100 * float(a):.2f}% "
            f"by {diff} of {n_test} test images: the stored weights or the test data are not the ones the "
            "entry's metrics describe (re-register the teacher, or check the dataset)")


def run(cfg: DictConfig) -> dict:
    """One run; returns its record. Raises KDBenchError for bad input (before anything is written)."""
    import pytorch_lightning as pl

    from kdbench.config import check_class_counts, validate
    from kdbench.distill import DistillModule, LossSpec, OptimSpec, SchedSpec
    from kdbench.engine import fit_and_test
    from kdbench.models import build_model
    from kdbench.records import read_record, write_record

    t0 = time.time()
    validate(cfg)
    run_id = run_id_of(cfg)
    record_path = Path(hydra.utils.to_absolute_path(cfg.paths.runs_dir)) / cfg.experiment_name / f"{run_id}.json"
    if record_path.exists() and not cfg.force:
        try:
            old = read_record(record_path)
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("status") == "complete":
            log.info("run %s is already complete (%s); skipping (force=true re-runs it)", run_id, record_path)
            print(f"kdbench: {run_id} already complete, record {record_path}")
            return old

    data = load_data(cfg)
    check_class_counts(data.num_classes, cfg)
    teacher, tmeta = (None, None)
    if cfg.distill.enabled or cfg.get("teacher_only"):
        teacher, tmeta = get_teacher(cfg, data)
    if cfg.get("teacher_only"):
        acc = (tmeta.get("test") or {}).get("acc")
        print(f"kdbench: teacher {tmeta.get('name')} ready at {tmeta.get('path')}"
              + (f" (test acc {100 * acc:.2f}%)" if acc is not None else ""))
        return {"teacher": tmeta, "metrics": {}}

    pl.seed_everything(int(cfg.seed), verbose=False)
    skw = OmegaConf.to_container(cfg.student.kwargs, resolve=True) or {}
    student = build_model(cfg.student.arch, data.num_classes, data.input_shape, **skw)
    d = cfg.distill
    loss = LossSpec(alpha=float(d.alpha) if d.enabled else 1.0, tau=float(d.tau), kl=d.kl,
                    tau_squared=bool(d.tau_squared), kl_reduction=d.kl_reduction,
                    student_tau_one=bool(d.student_tau_one), teacher_train_mode=bool(d.teacher_train_mode),
                    teacher_grad=bool(d.teacher_grad))
    spec, acc = fit_spec(cfg, epochs=cfg.trainer.max_epochs, batch_size=cfg.dataset.batch_size,
                         augment=cfg.dataset.augment, seed=int(cfg.seed))
    module = DistillModule(student, teacher, data.num_classes, loss,
                           OptimSpec(**OmegaConf.to_container(cfg.optim, resolve=True)),
                           SchedSpec(**OmegaConf.to_container(cfg.sched, resolve=True)),
                           check_finite_every=_check_every(cfg, acc))

    record: dict[str, Any] = {
        "run_id": run_id, "experiment": cfg.experiment_name, "variant": d.variant, "seed": int(cfg.seed),
        "status": "running", "error": None, "config": resolved(cfg), "overrides": _overrides(),
        "dataset": cfg.dataset.name, "dataset_info": _jsonable(data.info),
        "teacher_arch": cfg.teacher.arch if d.enabled else None, "student_arch": cfg.student.arch,
        # what the loss actually used: a scratch run (enabled=false) trains on labels only, alpha = 1
        "distill": {**resolved(cfg)["distill"], "alpha": loss.alpha},
        "metrics": {}, "teacher": None, "history": [], "reliability": {},
        "versions": versions(), "device": device_name(acc), "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "val_is_test": data.val_x is None,
        # what was asked for; replaced by what Lightning actually set once the fit is done
        "deterministic": cfg.trainer.deterministic not in (False, None),
    }
    if tmeta is not None:
        record["teacher"] = {"key": tmeta.get("key"), "name": tmeta.get("name"), "arch": tmeta.get("arch"),
                             "test": tmeta.get("test"), "path": tmeta.get("path")}
    write_record(record_path, record)

    name = f"{d.variant}-s{cfg.seed}"
    wandb_dir = None
    try:
        loggers = make_loggers(cfg, run_id, name)
        wandb_dir = _define_wandb_summaries(loggers)
        ckpt_dir = Path(hydra.utils.to_absolute_path(cfg.paths.checkpoints_dir)) / cfg.experiment_name / run_id
        res = fit_and_test(module, data, spec, ckpt_dir=ckpt_dir, logger=loggers or None, resume=bool(cfg.resume) and not cfg.force)
        record.update(status="complete", metrics={"last": res.last, "best": res.best}, history=res.history,
                      reliability=res.reliability, deterministic=res.deterministic, resumed_from=res.resumed_from)
        if record["teacher"] is not None and res.teacher_test:
            warning = teacher_drift(record["teacher"].get("test"), res.teacher_test, int(len(data.test_y)))
            if warning:
                log.warning("teacher %s: %s", record["teacher"].get("name"), warning)
                record["teacher"]["drift"] = warning
            record["teacher"]["registry_test"] = record["teacher"].get("test")
            record["teacher"]["test"] = res.teacher_test
        _log_final(loggers, res)
    except DivergedError as e:
        record.update(status="diverged", error=str(e), diverged_step=e.step, history=module.history)
        raise
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}".strip()[:2000],
                      traceback=traceback.format_exc(limit=8)[-4000:], history=module.history)
        raise
    finally:
        record["wall_time_s"] = round(time.time() - t0, 3)
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record["wandb_dir"] = wandb_dir
        write_record(record_path, record)
        _finish_wandb()
    record["record_path"] = str(record_path)
    print_summary(record, record_path)
    return record


def _log_final(loggers: list, res) -> None:
    flat = {f"final/last_{k}": v for k, v in res.last["test"].items()}
    flat.update({f"final/best_{k}": v for k, v in res.best["test"].items()})
    flat.update({f"teacher/{k}": v for k, v in res.teacher_test.items()})
    for lg in loggers:
        lg.log_metrics(flat)


def _jsonable(obj: Any) -> Any:
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:
        return []
    return [_redact_override(o) for o in task]


def _redact_override(o: str) -> str:
    key, eq, _ = str(o).partition("=")
    return f"{key}=<redacted>" if eq and any(w in key.lower() for w in _SECRET_WORDS) else str(o)


def _scrub_hydra_files(cfg: DictConfig) -> None:
    """Blank credential-like config values in the files Hydra saved when the job started.

    Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` (and a sweep's ``multirun.yaml``) before the
    task runs, so a secret passed as an override is on disk before :func:`run` can reject it.
    """
    from kdbench.config import secret_entries
    from kdbench.records import atomic_write_text

    secrets = sorted({str(v) for _, v in secret_entries(cfg) if str(v)}, key=len, reverse=True)
    if not secrets:
        return
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:
        return
    files: list[Path] = []
    if hc.output_subdir:
        files += sorted((Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"))
    if _in_multirun():
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        clean = text
        for secret in secrets:
            clean = clean.replace(secret, "<redacted>")
        if clean != text:
            atomic_write_text(f, clean)


def print_summary(record: dict, path: Path) -> None:
    last = record["metrics"]["last"]["test"]
    best = record["metrics"]["best"]
    t = record.get("teacher") or {}
    parts = [f"kdbench {record['experiment']}/{record['run_id']}: {record['dataset']}"]
    if t:
        parts.append(f"teacher {t.get('arch')} acc {100 * (t.get('test') or {}).get('acc', float('nan')):.2f}%")
    parts.append(f"student {record['student_arch']} acc {100 * last['acc']:.2f}% (best-epoch {100 * best['test']['acc']:.2f}% "
                 f"@ {best['epoch']})")
    if "agreement" in last:
        parts.append(f"agreement {100 * last['agreement']:.2f}%")
    parts.append(f"ECE {last['ece']:.4f}")
    print(" | ".join(parts))
    print(f"  record: {path}")
    if record.get("wandb_dir"):
        print(f"  wandb:  {Path(record['wandb_dir']).parent}  (upload with `wandb sync` on it)")


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the best validation accuracy (for sweepers that optimise)."""
    _quiet_libraries()
    _scrub_hydra_files(cfg)
    try:
        rec = run(cfg)
    except KDBenchError as e:
        if _in_multirun():
            raise
        print(f"kdbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as e:
        if _in_multirun():
            raise
        print(f"kdbench: error: {e}; record status 'diverged'", file=sys.stderr)
        sys.exit(3)
    return float((((rec.get("metrics") or {}).get("best") or {}).get("val") or {}).get("acc", 0.0))


_NOISE = (".*does not have many workers.*", ".*The `srun` command is available.*", ".*LeafSpec.*",
          ".*smaller than the logging interval.*", ".*module\\(s\\) in eval mode.*", ".*anonymous setting.*",
          ".*litlogger.*", ".*GPU available but not used.*",
          # resuming (the folder holds the run's own checkpoints) and testing the best weights after a
          # multi-device fit (on a fresh one-device trainer, without the checkpoint callbacks)
          ".*Checkpoint directory .* exists and is not empty.*", ".*callbacks used to create the checkpoint.*")


def _quiet_libraries() -> None:
    """Keep the console to what a user needs: Lightning's INFO chatter and known-benign warnings off."""
    import pytorch_lightning  # noqa: F401  (sets its own logger level on import; override it after)

    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)


if __name__ == "__main__":
    main()
