"""Config validation and ``auto`` resolution: every bad value is rejected before any work, with one line
naming the key. Single keys are :mod:`kdbench.schema`'s; here are the rules that span several keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench.credentials import redact, reject_secrets
from kdbench.errors import ConfigError

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


def validate(cfg) -> None:
    """Check everything that can be checked without loading data or weights: every key against the
    schema (its kind, range and choices), then the rules that span several keys."""
    from kdbench import schema
    from kdbench.kinds import I

    reject_secrets(cfg)  # first: a credential is refused whatever else is wrong
    schema.check(cfg)
    if not is_scratch(cfg):
        teacher = _get(cfg, "teacher.arch")
        if teacher == "oracle" and _get(cfg, "dataset.name") not in ("synthetic", "markov"):
            raise ConfigError("teacher.arch", "the oracle teacher exists only for dataset=synthetic and dataset=markov")
        if teacher != "oracle":  # only the oracle needs no training
            I(1).check("teacher.recipe.epochs", _get(cfg, "teacher.recipe.epochs"))
        validate_method(cfg)
    validate_devices(cfg)
    from kdbench.models.hf import preflight as hf_preflight

    hf_preflight(cfg, is_scratch(cfg))  # local model folders and one vocabulary (hf_causal_lm), before any work
    check_output_folders(cfg)


def validate_method(cfg) -> None:
    """The method checks its own parameters (``distill.*`` beyond the harness's keys) as it is built."""
    from omegaconf import OmegaConf

    from kdbench.methods import build_method

    d = _get(cfg, "distill")
    build_method(_get(cfg, "distill.method"), OmegaConf.to_container(d, resolve=True) if hasattr(d, "_get_node")
                 else dict(d))


#: strategies that run a multi-device fit in processes spawned from this one (results come back to it)
MULTI_DEVICE_STRATEGIES = ("ddp_spawn",)


def validate_devices(cfg) -> None:
    """More than one device (``trainer.devices``) needs a strategy whose processes are spawned from this one.

    Lightning's plain ``ddp`` re-launches ``sys.argv`` in every extra process: under Hydra's ``-m`` that
    re-runs the whole sweep in each child, so it is refused (as are strategies this harness never tested).
    """
    dev = _get(cfg, "trainer.devices", 1)
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
    warm = warmup_warning(cfg)
    return out + ([warm] if warm else [])


def warmup_warning(cfg) -> str | None:
    """A method's warm-up (DKD's, ReviewKD's ``distill.warmup_epochs``: its term's weight grows over that many
    epochs) that is not shorter than the run: its term reaches full weight in the last epoch only, or never
    (DKD's default 20 epochs with ``trainer.max_epochs=2`` trains at a tenth of it)."""
    from kdbench.methods import method_params

    method, warm, epochs = _get(cfg, "distill.method"), _get(cfg, "distill.warmup_epochs"), _get(cfg, "trainer.max_epochs")
    if is_scratch(cfg) or not isinstance(warm, int) or isinstance(warm, bool) or not isinstance(epochs, int):
        return None
    if warm < epochs or warm == 0 or "warmup_epochs" not in method_params(str(method)):
        return None
    how = ("reaches its full weight only in the last epoch" if warm == epochs else
           f"never reaches its full weight (at most {epochs}/{warm} of it, in the last epoch)")
    return (f"distill.warmup_epochs={warm} is not shorter than trainer.max_epochs={epochs}: the {method} term "
            f"{how}; running anyway")


def check_class_counts(dataset_classes: int, cfg) -> None:
    """Student (and teacher) heads are built for the dataset's class count; explicit overrides must agree."""
    for who in ("student", "teacher"):
        n = _get(cfg, f"{who}.num_classes")
        if n is not None and int(n) != dataset_classes and (who == "student" or not is_scratch(cfg)):
            raise ConfigError(f"{who}.num_classes", f"is {n}, but dataset {_get(cfg, 'dataset.name')!r} has "
                                                   f"{dataset_classes} classes")
