"""Config validation: every bad value is rejected before any work, with one line naming the key."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench.credentials import redact, reject_secrets
from kdbench.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "multistep", "cosine", "onecycle")
AUGMENTS = ("none", "default", "crop_flip", "flip", "jitter")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "64-true")
WANDB_MODES = ("offline", "online", "disabled")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: the configs: kdbench/conf, a link to the top-level conf/ in a checkout, real files once installed
#: (absolute, so Hydra reads the folder however kdbench was started: -m, a console script, -c)
CONF_DIR = str((Path(__file__).parent / "conf").resolve())
#: the classes of each named dataset (imagefolder: known only once loaded)
DATASET_CLASSES = {"cifar10_jpeg": 10, "digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def compose_job(job: list[str]):
    """The train config one job of a grid composes to (its ``hydra.*`` overrides left out)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    task = [o for o in job if not (o.startswith("hydra.") or o.startswith("hydra/") or o.startswith("+hydra"))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=task)


def resolve_accelerator(accelerator: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``."""
    if accelerator == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> bf16 autocast on GPUs (the loss itself runs in float32), full float32 on CPU."""
    if precision == "16-mixed" and accelerator not in ("gpu", "cuda"):
        return "bf16-mixed"  # what Lightning runs on a CPU when asked for 16-mixed: the record says so
    if str(precision) == "32":
        return "32-true"  # Lightning's alias: one computation, one run id
    if precision != "auto":
        return precision
    return "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"


def resolve_channels_last(channels_last: bool | str, accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") if channels_last == "auto" else bool(channels_last)


def resolve_deterministic(deterministic: bool | str | None, accelerator: str) -> bool:
    """``auto`` -> deterministic algorithms on CPU (as always), off on GPUs (cuDNN then benchmarks its
    kernels); an explicit true/false is kept. Recorded either way."""
    if deterministic == "auto":
        return accelerator not in ("gpu", "cuda")
    return bool(deterministic)


def resolve_compile(compile_: bool | str | None, accelerator: str) -> bool:
    """``auto`` -> ``torch.compile`` the student (and an online teacher) on GPUs, not on CPU."""
    if compile_ == "auto":
        return accelerator in ("gpu", "cuda")
    return bool(compile_)


def _get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part, default)
    return node


def _number(cfg, key: str) -> float:
    v = _get(cfg, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, f"must be a number, got {v!r}")
    return float(v)


def _positive_int(cfg, key: str, allow_zero: bool = False) -> int:
    v = _get(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(key, f"must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")
    return v


def _choice(cfg, key: str, allowed) -> str:
    v = _get(cfg, key)
    if v not in allowed:
        raise ConfigError(key, f"unknown value {v!r}; allowed: {', '.join(map(str, allowed))}")
    return v


def is_scratch(cfg) -> bool:
    """A student trained on labels alone: no method, no teacher signal, no teacher."""
    return not _get(cfg, "distill.enabled", True) or _get(cfg, "distill.method", "kd") == "none"


def resolve(cfg) -> dict:
    """The config as plain data with every ``auto`` replaced by what it resolves to on this machine
    (accelerator, precision, memory format, teacher signal) and credentials redacted: what the run
    id hashes and what the record stores, so a CPU run and a GPU run of one config never share an id."""
    from omegaconf import OmegaConf

    c = redact(OmegaConf.to_container(cfg, resolve=True))
    t = c.get("trainer") or {}
    if "accelerator" in t:
        acc = t["accelerator"] = resolve_accelerator(t["accelerator"])
        t["precision"] = resolve_precision(t.get("precision", "auto"), acc)
        t["channels_last"] = resolve_channels_last(t.get("channels_last", "auto"), acc)
        t["deterministic"] = resolve_deterministic(t.get("deterministic", "auto"), acc)
        t["compile"] = resolve_compile(t.get("compile", False), acc)
    if is_scratch(cfg):
        c["teacher_signal"] = "none"
        # labels only: no distillation key does anything (the loss is CE, i.e. alpha = 1), so none is part
        # of the run: `distill=kd,none distill.tau=1,4` trains the scratch student once per seed
        if isinstance(c.get("distill"), dict):
            c["distill"] = {**{k: c["distill"][k] for k in ("variant", "method", "enabled") if k in c["distill"]},
                            "alpha": 1.0}
    elif isinstance(c.get("distill"), dict) and c["distill"].get("method") not in (None, "none"):
        # keys of a shared recipe that this method does not read (`alpha` under DKD) are not part of the
        # run: out of its id and record, so a table never shows a knob that did nothing
        from kdbench.methods import unused_keys

        for k in unused_keys(c["distill"]["method"], c["distill"]):
            c["distill"].pop(k)
        if c.get("teacher_signal") != "captured":
            # the top-k loss mode only exists for a captured (top-k) teacher: a dense teacher's run is the
            # same run whichever mode the grid names (`teacher_signal=online,captured +distill.topk_mode=...`)
            c["distill"].pop("topk_mode", None)
    return c


def validate_distill(cfg) -> None:
    """The method and its parameters (each method checks its own: one schema, the method's fields)."""
    from omegaconf import OmegaConf

    from kdbench.methods import build_method, method_names
    from kdbench.signals import signal_names

    _choice(cfg, "distill.method", ["none"] + method_names())
    _choice(cfg, "teacher_signal", signal_names())
    for key in ("enabled", "teacher_train_mode", "teacher_grad"):
        if not isinstance(_get(cfg, f"distill.{key}"), bool):
            raise ConfigError(f"distill.{key}", f"must be true or false, got {_get(cfg, f'distill.{key}')!r}")
    if not is_scratch(cfg):
        d = _get(cfg, "distill")
        build_method(_get(cfg, "distill.method"), OmegaConf.to_container(d, resolve=True) if hasattr(d, "_get_node")
                     else dict(d))


def validate_optim(cfg, prefix: str) -> None:
    _choice(cfg, f"{prefix}optim.name", OPTIMIZERS)
    lr = _number(cfg, f"{prefix}optim.lr")
    if lr < 0:
        raise ConfigError(f"{prefix}optim.lr", f"must be >= 0, got {lr:g}")
    for key in ("momentum", "weight_decay"):
        if _get(cfg, f"{prefix}optim.{key}") is not None:
            v = _number(cfg, f"{prefix}optim.{key}")
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{prefix}optim.{key}", f"must be a finite number >= 0, got {v:g}")
    _choice(cfg, f"{prefix}sched.name", SCHEDULERS)
    if _get(cfg, f"{prefix}sched.name") == "multistep":
        ms = _get(cfg, f"{prefix}sched.milestones")
        if ms is None or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms):
            raise ConfigError(f"{prefix}sched.milestones", f"must be a list of non-negative epochs, got {ms!r}")


def validate(cfg) -> None:
    """Check everything that can be checked without loading data or weights."""
    from kdbench.data import dataset_names
    from kdbench.models import model_names

    reject_secrets(cfg)  # first: a credential is refused whatever else is wrong
    validate_distill(cfg)
    ds = _get(cfg, "dataset.name")
    if ds not in dataset_names():
        raise ConfigError("dataset.name", f"unknown dataset {ds!r}; valid: {', '.join(dataset_names())}")
    models = model_names()
    if _get(cfg, "student.arch") not in models:
        raise ConfigError("student.arch", f"unknown model {_get(cfg, 'student.arch')!r}; valid: {', '.join(models)}")
    if not is_scratch(cfg) and _get(cfg, "teacher.arch") not in models + ["oracle"]:
        raise ConfigError("teacher.arch", f"unknown model {_get(cfg, 'teacher.arch')!r}; valid: oracle, "
                                          f"{', '.join(models)}")
    if _get(cfg, "teacher.arch") == "oracle" and not is_scratch(cfg) and ds not in ("synthetic", "markov"):
        raise ConfigError("teacher.arch", "the oracle teacher exists only for dataset=synthetic and dataset=markov")
    _positive_int(cfg, "trainer.max_epochs")
    _positive_int(cfg, "dataset.batch_size")
    _positive_int(cfg, "dataset.eval_batch_size")
    _choice(cfg, "dataset.augment", AUGMENTS)
    vs = _get(cfg, "dataset.val_size", 0)
    if isinstance(vs, bool) or not isinstance(vs, (int, float)) or vs < 0 or (isinstance(vs, float) and vs >= 1):
        raise ConfigError("dataset.val_size", f"must be a count (an integer >= 0; 0 = validate on test) or a "
                                              f"fraction in (0, 1), got {vs!r}")
    for key in ("train_subset", "test_subset"):
        if _get(cfg, f"dataset.{key}") is not None:
            _positive_int(cfg, f"dataset.{key}")
    for key in ("seed", "data_seed"):
        v = _get(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(key, f"must be an integer, got {v!r}")
        if not 0 <= v < 2**32:  # what the RNGs accept (numpy's seed range)
            raise ConfigError(key, f"must be in [0, 2**32 - 1], got {v}")
    for key in ("experiment_name", "distill.variant"):  # they become folder and file names
        v = _get(cfg, key)
        if not isinstance(v, str) or not _NAME.fullmatch(v):
            raise ConfigError(key, f"must be a plain name (letters, digits, '.', '_', '-'; not starting with '.'), "
                                   f"got {v!r}: it names a folder under the results folder")
    _choice(cfg, "trainer.accelerator", ACCELERATORS)
    ltb = _get(cfg, "trainer.limit_train_batches")
    if ltb is not None and (isinstance(ltb, bool) or not isinstance(ltb, (int, float)) or ltb <= 0
                            or (isinstance(ltb, float) and ltb > 1)):
        raise ConfigError("trainer.limit_train_batches", f"must be null, a batch count >= 1 or a fraction in (0, 1], "
                                                         f"got {ltb!r} (0 would record a run that never trained)")
    cfe = _get(cfg, "trainer.check_finite_every", "auto")
    if cfe != "auto" and (isinstance(cfe, bool) or not isinstance(cfe, int) or cfe < 1):
        raise ConfigError("trainer.check_finite_every", f"must be auto or a positive integer, got {cfe!r}")
    _choice(cfg, "trainer.precision", PRECISIONS)
    validate_devices(cfg)
    validate_optim(cfg, "")
    if not is_scratch(cfg) and _get(cfg, "teacher.arch") != "oracle":
        _positive_int(cfg, "teacher.recipe.epochs")
        _positive_int(cfg, "teacher.recipe.batch_size")
        validate_optim(cfg, "teacher.recipe.")
    for k in ("student.kwargs", "teacher.kwargs"):
        v = _get(cfg, k)
        if v is not None and not hasattr(v, "keys"):
            raise ConfigError(k, f"must be a mapping of model arguments, got {v!r}")
    logger = _get(cfg, "logger") or {}
    if "wandb" in logger:
        _choice(cfg, "logger.wandb.mode", WANDB_MODES)
    from kdbench import schema

    schema.check(cfg)  # the floor under the checks above: every key known, every value of its kind
    check_output_folders(cfg)


#: strategies that run a multi-device fit in processes spawned from this one (results come back to it)
MULTI_DEVICE_STRATEGIES = ("ddp_spawn",)


def validate_devices(cfg) -> None:
    """``trainer.devices`` is a count; more than one needs a strategy whose processes are spawned from this one.

    Lightning's plain ``ddp`` re-launches ``sys.argv`` in every extra process: under Hydra's ``-m`` that
    re-runs the whole sweep in each child, so it is refused (as are strategies this harness never tested).
    """
    dev = _get(cfg, "trainer.devices", 1)
    if isinstance(dev, bool) or not isinstance(dev, int) or dev < 1:
        raise ConfigError("trainer.devices", f"must be a positive integer (how many devices), got {dev!r}; "
                                             "pick GPUs with CUDA_VISIBLE_DEVICES")
    strategy = _get(cfg, "trainer.strategy", "auto")
    if dev > 1 and strategy not in MULTI_DEVICE_STRATEGIES:
        raise ConfigError("trainer.strategy", f"trainer.devices>1 is supported with trainer.strategy=ddp_spawn only, "
                                              f"got {strategy!r} (plain ddp re-launches the command line in every "
                                              "process, which under Hydra -m re-runs the sweep)")


def check_writable(path: str, key: str) -> None:
    """``path`` can be written: it is a writable folder, or the nearest existing ancestor is one (and
    nothing on the way is a file or a broken symbolic link)."""
    p = Path(path).absolute()
    probe = p
    while not os.path.lexists(probe):
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise ConfigError(key, f"{probe} is a broken symbolic link (to {os.readlink(probe)}); fix or remove it")
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{p} is not writable (nearest existing folder: {probe})")


def check_output_folders(cfg) -> None:
    """Every folder a run writes into, each named by its key, before any work."""
    exp = str(_get(cfg, "experiment_name"))
    check_writable(str(_get(cfg, "paths.results_dir")), "paths.results_dir")
    check_writable(str(Path(str(_get(cfg, "paths.runs_dir"))) / exp), "paths.runs_dir")
    check_writable(str(Path(str(_get(cfg, "paths.checkpoints_dir"))) / exp), "paths.checkpoints_dir")
    if not is_scratch(cfg) or _get(cfg, "teacher_only"):
        check_writable(str(_get(cfg, "paths.teachers_dir")), "paths.teachers_dir")
    logger = _get(cfg, "logger") or {}
    if "wandb" in logger and _get(cfg, "logger.wandb.mode") != "disabled":
        check_writable(str(_get(cfg, "paths.wandb_dir")), "paths.wandb_dir")
    if "csv" in logger:
        check_writable(str(_get(cfg, "logger.csv.save_dir")), "logger.csv.save_dir")


#: (key, low, high, what published recipes use): a value outside is allowed but announced
UNUSUAL = (("distill.tau", 0.5, 50.0, "published recipes use tau from 1 to 20"),
           ("dataset.batch_size", 2, 8192, "published recipes use 32 to 4096"),
           ("optim.lr", 1e-6, 5.0, "published recipes use 1e-5 to 1"),
           ("trainer.max_epochs", 1, 5000, "published recipes train up to a few hundred epochs"))


def unusual_values(cfg) -> list[str]:
    """One line per value far outside what any published recipe uses (a typo such as tau=1e9 or
    batch_size=100000 runs, but not silently)."""
    out = []
    for key, lo, hi, usual in UNUSUAL:
        if key.startswith("distill.") and is_scratch(cfg):
            continue
        v = _get(cfg, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not lo <= v <= hi:
            out.append(f"{key}={v:g} is far outside [{lo:g}, {hi:g}] ({usual}); running anyway")
    return out


def check_class_counts(dataset_classes: int, cfg) -> None:
    """Student (and teacher) heads are built for the dataset's class count; explicit overrides must agree."""
    for who in ("student", "teacher"):
        n = _get(cfg, f"{who}.num_classes")
        if n is not None and int(n) != dataset_classes and (who == "student" or not is_scratch(cfg)):
            raise ConfigError(f"{who}.num_classes", f"is {n}, but dataset {_get(cfg, 'dataset.name')!r} has "
                                                   f"{dataset_classes} classes")
