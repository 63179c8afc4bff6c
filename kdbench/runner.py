"""One distillation run from a composed config, end to end (the library behind ``python -m kdbench.train``).

validate -> data -> teacher signal -> student -> method -> fit/test -> record (JSON, atomic) + W&B.
Each step's machinery lives in its own module; this one only wires them, top to bottom.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from datetime import datetime, timezone
from typing import Any

from omegaconf import DictConfig

from kdbench.config import check_class_counts, is_scratch, validate
from kdbench.errors import ConfigError
from kdbench.features import Out, probe
from kdbench.files import abs_path
from kdbench.provenance import device_name, in_multirun, overrides, versions
from kdbench.records import jsonable

log = logging.getLogger("kdbench")


def load_data(dataset: dict):
    """The dataset as in-memory tensors, with the validation split held out of the training set."""
    from kdbench.data import load_dataset, split_train_val

    d = {**dataset, **{k: str(abs_path(dataset[k])) for k in ("root", "cache_dir") if dataset.get(k)}}
    data = load_dataset(d)
    try:
        return split_train_val(data, d["val_size"], seed=d["split_seed"])
    except ValueError as e:  # val_size >= the training set: a config error, known only once the data is loaded
        raise ConfigError("dataset.val_size", str(e)) from None


def student_data(full, conf: dict):
    """The student's transfer set (``dataset.transfer_subset`` / ``train_exclude_classes``) of the loaded data;
    the teacher trains on ``full``. A captured store indexes the whole training split: refused with a restriction;
    so is ``metrics.per_class_acc`` on token data (a "class" per vocabulary id)."""
    from kdbench.data.transfer import restricts, transfer_set

    if (conf.get("metrics") or {}).get("per_class_acc") and full.is_tokens:
        raise ConfigError("metrics.per_class_acc", "is for labelled examples; token data has a class per vocabulary "
                                                   f"id ({full.num_classes}): leave it false")
    if restricts(conf["dataset"]) and conf.get("teacher_signal") == "captured" and not is_scratch(conf):
        key = "transfer_subset" if conf["dataset"].get("transfer_subset") is not None else "train_exclude_classes"
        raise ConfigError(f"dataset.{key}", "restricts the student's training split, which a captured store "
                                            "indexes whole: use teacher_signal=online or cached")
    return transfer_set(full, conf["dataset"])


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
    from kdbench import lifecycle
    from kdbench.signals import build_signal, needs_teacher, preflight_signal
    from kdbench.teachers import train as teacher_training

    t0 = time.time()
    if int(cfg.get("fuse", 1)) != 1:  # before validation: a fused sweep's key, not this command's
        validate(cfg)
        raise ConfigError("fuse", f"fuse={cfg.fuse} fuses the jobs of a sweep: run `python -m kdbench.sweep ... "
                                  f"fuse={cfg.fuse}` (one run of kdbench.train is one job)")
    job = lifecycle.Job.of(cfg, overrides())
    conf = job.conf
    done = job.complete()
    if done is not None:
        return done

    # data (the teacher's training split, the student's transfer set) -> teacher signal
    full = load_data(conf["dataset"])
    check_class_counts(full.num_classes, cfg)
    data = student_data(full, conf)
    scratch, trainer = is_scratch(cfg), conf["trainer"]
    preflight_needs(conf)  # what the method needs of the teacher against what the signal gives
    preflight_signal(conf["teacher_signal"], conf, data)  # e.g. a teacher cache that cannot fit: before any work
    preflight_features(conf, data)
    teacher, tmeta = None, None
    if (not scratch and needs_teacher(conf["teacher_signal"])) or cfg.teacher_only:
        teacher, tmeta = teacher_training.for_run(conf["teacher"], conf["dataset"], trainer, full,
                                          teachers_dir=abs_path(cfg.paths.teachers_dir),
                                          checkpoints_dir=abs_path(cfg.paths.checkpoints_dir),
                                          eval_batch_size=conf["dataset"]["eval_batch_size"], log=log.info)
    if cfg.teacher_only:
        acc = (tmeta.get("test") or {}).get("acc")
        print(f"kdbench: teacher {tmeta.get('name')} ready at {tmeta.get('path')}"
              + (f" (test acc {100 * acc:.2f}%)" if acc is not None else ""))
        return {"teacher": tmeta, "metrics": {}}
    signal = build_signal(conf["teacher_signal"], teacher=teacher, conf=conf, data=data, teacher_meta=tmeta)

    # student -> method -> module -> the job's life
    job.module, job.spec = build_student_module(cfg, conf, data, signal)
    job.record = new_record(cfg, conf, job.run_id, data, signal, tmeta, job.overrides, job.module)
    with lifecycle.claimed([job], wait=in_multirun()) as (pending, done):
        if not pending:  # another job of the sweep was this run, and finished it while we waited
            return done[job.run_id]
        with lifecycle.living([job], trap, t0):
            from kdbench.engine import fit_and_test

            res = fit_and_test(job.module, data, job.spec, ckpt_dir=job.ckpt_dir, logger=job.loggers or None,
                               resume=bool(cfg.resume) and not cfg.force)
            lifecycle.finish(job, res, int(len(data.test_y)))
    return lifecycle.announce(job)


def build_student_module(cfg, conf: dict, data, signal, module_cls=None):
    """The run's student, method and DistillModule (``module_cls``: a subclass, for fused runs), and its
    FitSpec; the student's init is drawn under the run's ``seed``."""
    import pytorch_lightning as pl
    import torch

    from kdbench.distill import DistillModule, OptimSpec, SchedSpec
    from kdbench.engine import FitSpec, check_every
    from kdbench.methods import build_method
    from kdbench.models import build_model

    scratch, d, trainer = is_scratch(cfg), conf["distill"], conf["trainer"]
    pl.seed_everything(int(conf["seed"]), verbose=False)
    student = build_model(conf["student"]["arch"], data.num_classes, data.input_shape,
                          **(conf["student"].get("kwargs") or {}))
    method = None if scratch else build_method(d["method"], d)
    parts = None
    if declares_needs(method):  # its trainable modules, built from the two sides' shapes, under the seed
        teacher_out = Out(torch.zeros(2, data.num_classes))  # a logit-only teacher side: its shape is the classes
        if method.needs.teacher != ("logits",):
            signal.request(method.needs.teacher)
            teacher_out = signal.probe(data.input_shape, method.needs.teacher)
        parts = build_parts(method, probe(student, data.input_shape, method.needs.student), teacher_out,
                            len(data.train_y),
                            teacher_model=getattr(signal, "teacher", None), train_y=data.train_y)
    dbg = conf.get("debug") or {}
    spec = FitSpec.from_trainer(trainer, max_epochs=int(trainer["max_epochs"]), extra=debug_trainer_args(dbg),
                                callbacks=dict(conf.get("callbacks") or {}),
                                batch_size=int(conf["dataset"]["batch_size"]),
                                eval_batch_size=int(conf["dataset"]["eval_batch_size"]),
                                augment=conf["dataset"]["augment"], data_seed=int(conf["data_seed"]))
    module = (module_cls or DistillModule)(
        student, data.num_classes, OptimSpec(**conf["optim"]), SchedSpec(**conf["sched"]), method=method,
        signal=signal, check_finite_every=check_every(trainer["check_finite_every"], trainer["accelerator"]),
        reference=_true_law(data), parts=parts, per_class_acc=bool((conf.get("metrics") or {}).get("per_class_acc")))
    return module, spec


def declares_needs(method) -> bool:
    """A method of the feature seam: it declares its ``needs`` (intermediate features of either side, or
    logits only with trainable parts of its own, e.g. a learnable temperature) and is called with an
    :class:`~kdbench.features.Out` per side and its parts."""
    return getattr(method, "needs", None) is not None


def build_parts(method, student_out, teacher_out, n_train: int, **context):
    """A feature method's trainable modules (and per-sample state) for these shapes and a training set of
    ``n_train`` examples (None when it has none). A ``build`` that names a keyword of ``context`` gets it:
    ``teacher_model``, the teacher itself (OFD's BatchNorm statistics), ``train_y``, the training labels
    (CRD's negatives)."""
    import inspect

    build = getattr(method, "build", None)
    if not callable(build):
        return None
    named = inspect.signature(build).parameters
    return build(student_out, teacher_out, n_train, **{k: v for k, v in context.items() if k in named})


_FORMS = {"dense": "dense teacher logits", "topk": "top-k log-probs"}


def preflight_needs(conf: dict) -> None:
    """Before any work, refuse a method (or a harness switch) that needs what the teacher signal cannot give
    (:data:`kdbench.signals.CAPABILITIES`): dense logits or top-k log-probs, the teacher model in memory."""
    from kdbench.methods import build_method, teacher_reads
    from kdbench.signals import gives, signal_names

    d, kind = conf["distill"], conf["teacher_signal"]
    if d.get("method") in (None, "none") or not d.get("enabled", True):
        return
    has = gives(kind)

    def able(need: frozenset) -> str:
        ok = [k for k in signal_names() if k != kind and need <= gives(k)]
        return f"use teacher_signal={' or '.join(ok)}" if ok else "no registered signal gives it"

    for key in ("teacher_train_mode", "teacher_grad"):
        if d.get(key) and "model" not in has:
            raise ConfigError("teacher_signal", f"distill.{key}=true needs the teacher itself in memory (it changes or "
                                                f"differentiates it during training); teacher_signal={kind} gives "
                                                f"stored outputs: {able(frozenset({'model'}))}")
    reads = teacher_reads(build_method(d["method"], d))
    if not reads & has:
        given = " and ".join(_FORMS[f] for f in ("dense", "topk") if f in has) or "no teacher outputs"
        raise ConfigError("teacher_signal", f"variant {d.get('variant', d['method'])} (method {d['method']}) reads "
                                            f"{' or '.join(_FORMS[f] for f in sorted(reads))}; teacher_signal={kind} "
                                            f"gives {given} only: {able(frozenset({sorted(reads)[0]}))}")


def preflight_features(conf: dict, data) -> None:
    """Before any work, refuse a feature method that the run cannot feed: a teacher signal that gives
    only logits (cached, captured), or a pair whose shapes the method cannot use (probed on freshly
    built models of the two architectures, outside the run's random streams)."""
    import torch

    from kdbench.methods import build_method
    from kdbench.models import build_model
    from kdbench.signals import gives_features

    d = conf["distill"]
    if d.get("method") in (None, "none"):
        return
    method = build_method(d["method"], d)
    if not declares_needs(method):
        return
    needs, kind = method.needs, conf["teacher_signal"]
    if needs.teacher != ("logits",) and not gives_features(kind):
        raise ConfigError("teacher_signal", f"method {d['method']} reads the teacher's features "
                                            f"({', '.join(needs.teacher)}); teacher_signal={kind} gives only its "
                                            "outputs: use teacher_signal=online")
    views = tuple(getattr(method, "views", ("weak",)))
    if len(views) > 1 and kind != "online":
        raise ConfigError("teacher_signal", f"method {d['method']} trains on the {' and '.join(views)} views of each "
                                            f"image; teacher_signal={kind} gives the teacher on one view only: use "
                                            "teacher_signal=online")
    if len(views) > 1 and not data.is_image:
        raise ConfigError("distill.method", f"method {d['method']} trains on a {views[1]} view of each image; dataset "
                                            f"{conf['dataset']['name']} gives feature vectors or tokens: use an image "
                                            "dataset")
    s_arch, t_arch = conf["student"]["arch"], conf["teacher"]["arch"]
    try:
        with torch.random.fork_rng():
            s = build_model(s_arch, data.num_classes, data.input_shape, **(conf["student"].get("kwargs") or {}))
            t = build_model(t_arch, data.num_classes, data.input_shape, **(conf["teacher"].get("kwargs") or {}))
            build_parts(method, probe(s, data.input_shape, needs.student), probe(t, data.input_shape, needs.teacher),
                        len(data.train_y), teacher_model=t, train_y=data.train_y)
    except (ValueError, KeyError, AttributeError) as e:  # a method says so (ValueError); a hook path that is not a module
        raise ConfigError("distill.method", f"method {d['method']} cannot distil {t_arch} -> {s_arch}: "
                                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def new_record(cfg, conf: dict, run_id: str, data, signal, tmeta: dict | None, job_overrides: list[str],
               module=None) -> dict:
    """A run's record as it starts (status ``running``); ``module``: the run's DistillModule, whose
    parameters it counts (the deployed student's, and a feature method's training-only ones)."""
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
    if module is not None:
        parts = getattr(module, "parts", None)
        record["params"] = {"student": sum(p.numel() for p in module.student.parameters()),
                            "training_only": sum(p.numel() for p in parts.parameters()) if parts is not None else 0}
    if (tmeta or getattr(signal, "header", None)) and not scratch:  # a captured signal names its teacher
        t = tmeta or {**signal.header["teacher"], "path": None, "capture": str(conf["teacher_capture"]["path"])}
        record["teacher"] = {k: t.get(k) for k in ("key", "name", "arch", "test", "path", "capture") if k in t}
        if getattr(signal, "header", None):
            from kdbench.stores import store_identity

            record["teacher"]["store"] = store_identity(signal.header)
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

