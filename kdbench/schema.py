"""One table of every config key kdbench reads: its kind, range and choices, checked for every run.

:func:`check` walks the composed config and refuses, with one line naming the key and what it may
be, a value of the wrong kind, outside its range or not among its choices, and a key that nothing
reads (``+trainer.fast_dev_run=true`` would otherwise be recorded as if it had happened). Choices
that name things (methods, teacher signals, datasets, models, augmentations, optimizers, schedules,
cache dtypes) are read from their registries when checked, so a registered plugin is valid with no
second edit. ``distill.*`` beyond the harness's own keys are the method's parameters, which the method
checks as it is built (:func:`kdbench.methods.build_method`); ``student.kwargs.*`` /
``teacher.kwargs.*`` are checked against the model builder's signature. Rules that span several keys
live in :func:`kdbench.config.validate`. The vocabulary (:class:`Spec`) is :mod:`kdbench.kinds`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from kdbench.errors import ConfigError
from kdbench.kinds import ANY, S0, B, C, I, N, R, S, Spec


# ---- choices read from the registries -----------------------------------------------------------
def _methods() -> tuple:
    from kdbench.methods import method_names

    return ("none", *method_names())  # none: a student trained on labels alone


def _signals() -> list[str]:
    from kdbench.signals import signal_names

    return signal_names()


def _datasets() -> list[str]:
    from kdbench.data import dataset_names

    return dataset_names()


def _models() -> list[str]:
    from kdbench.models import model_names

    return model_names()


def _teachers() -> tuple:
    return ("oracle", *_models())  # oracle: the data's own law (config.validate: synthetic and markov only)


def _augments() -> tuple:
    from kdbench.data.augment import DEFAULT, augment_names

    return (DEFAULT, *augment_names())  # default: the dataset's own family


def _optimizers() -> list[str]:
    from kdbench.optim import optimizer_names

    return optimizer_names()


def _schedulers() -> list[str]:
    from kdbench.optim import scheduler_names

    return scheduler_names()


def _cache_dtypes() -> tuple:
    from kdbench.signals.cached import DTYPES

    return ("auto", *DTYPES)


AUTO_BOOL = C("auto", True, False)
SEED = I(0, 2**32 - 1, says="an integer in [0, 2**32 - 1]")  # what the RNGs accept (numpy's seed range)
#: it becomes a folder or file name
PLAIN_NAME = Spec("name", why=": it names a folder under the results folder")
KWARGS = Spec("map", says="a mapping of model arguments")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "64-true")
_OPTIM = {"name": R(_optimizers, "optimizer"), "lr": N(0), "momentum": N(0, optional=True),
          "weight_decay": N(0, optional=True), "nesterov": B, "betas": Spec("list", item=N())}
_SCHED = {"name": R(_schedulers, "scheduler"), "milestones": Spec("list", item=I(0), says="a list of non-negative epochs"),
          "gamma": N(0), "min_lr": N(0), "warmup_epochs": I(0), "pct_start": N(0, 1)}

#: every key kdbench reads (a ``*`` segment: any name there); the values a run may take
SCHEMA: dict[str, Spec] = {
    "seed": SEED, "data_seed": SEED, "experiment_name": PLAIN_NAME, "tags": Spec("list", item=S),
    "teacher_signal": R(_signals, "teacher signal"), "resume": B, "teacher_only": B, "force": B, "fuse": I(1), "print_config": B,
    "teacher_cache.dtype": R(_cache_dtypes, "value"), "teacher_cache.max_gb": N(0),
    "teacher_cache.on_device": AUTO_BOOL,
    "metrics.per_class_acc": B,
    "teacher_capture.path": S0, "teacher_capture.k": I(1, optional=True),
    # the harness's own distill keys; every other distill.* is a parameter of the method, which checks it
    "distill.variant": PLAIN_NAME, "distill.method": R(_methods, "method"), "distill.enabled": B,
    "distill.teacher_train_mode": B, "distill.teacher_grad": B, "distill.*": ANY,
    # dataset (every dataset's keys; each loader reads its own)
    "dataset.name": R(_datasets, "dataset"), "dataset.root": S0, "dataset.cache_dir": S0, "dataset.download": B,
    "dataset.batch_size": I(1), "dataset.eval_batch_size": I(1), "dataset.augment": R(_augments, "augmentation"),
    "dataset.val_size": Spec("count_or_fraction", lo=0, hi_open=True,
                             says="a count (an integer >= 0; 0 = validate on test) or a fraction in (0, 1)"),
    "dataset.split_seed": SEED, "dataset.train_subset": I(1, optional=True),
    "dataset.test_subset": I(1, optional=True),
    "dataset.transfer_subset": I(1, optional=True), "dataset.train_exclude_classes": Spec("list", item=I(0)), "dataset.test_fraction": N(0, 1, hi_open=True),
    "dataset.dim": I(1), "dataset.noise": N(0), "dataset.n_train": I(1, optional=True), "dataset.n_test": I(1, optional=True),
    "dataset.num_classes": I(2), "dataset.seed": SEED,
    # sequence data (markov, bytes_text)
    "dataset.seq_len": I(2), "dataset.vocab": I(2), "dataset.branching": I(1), "dataset.prompt_len": I(0),
    # hf_text: local text and a local Hugging Face tokenizer
    "dataset.path": S0, "dataset.tokenizer": S0, "dataset.max_length": I(2), "dataset.pack": B,
    # models
    "student.arch": R(_models, "model"), "student.num_classes": I(2, optional=True), "student.kwargs": KWARGS,
    "student.kwargs.*": ANY,
    "teacher.arch": R(_teachers, "model"), "teacher.num_classes": I(2, optional=True), "teacher.kwargs": KWARGS,
    "teacher.kwargs.*": ANY,
    "teacher.checkpoint": S0, "teacher.seed": SEED, "teacher.train_if_missing": B,
    "teacher.recipe.epochs": I(0), "teacher.recipe.batch_size": I(1),  # epochs 0: the oracle (config.validate)
    "teacher.recipe.augment": R(_augments, "augmentation"),
    **{f"teacher.recipe.optim.{k}": v for k, v in _OPTIM.items()},
    **{f"teacher.recipe.sched.{k}": v for k, v in _SCHED.items()},
    **{f"optim.{k}": v for k, v in _OPTIM.items()},
    **{f"sched.{k}": v for k, v in _SCHED.items()},
    # trainer
    "trainer.max_epochs": I(1), "trainer.accelerator": C("auto", "cpu", "gpu", "cuda"),
    "trainer.devices": I(1, says="a positive integer (how many devices)", why="; pick GPUs with CUDA_VISIBLE_DEVICES"),
    "trainer.strategy": S, "trainer.precision": C(*PRECISIONS), "trainer.deterministic": AUTO_BOOL,
    "trainer.compile": AUTO_BOOL, "trainer.channels_last": AUTO_BOOL,
    "trainer.check_finite_every": I(1, also=("auto",)), "trainer.progress": B,
    "trainer.limit_train_batches": Spec("count_or_fraction", lo=1, optional=True,
                                        says="null, a batch count >= 1 or a fraction in (0, 1]",
                                        why=" (0 would record a run that never trained)"),
    "trainer.gradient_clip_val": N(0, optional=True), "trainer.log_every_n_steps": I(1),
    # where things go
    "paths.results_dir": S, "paths.runs_dir": S, "paths.teachers_dir": S, "paths.checkpoints_dir": S,
    "paths.wandb_dir": S, "paths.data_dir": S,
    # trackers
    "logger.csv.save_dir": S, "logger.wandb.project": S, "logger.wandb.entity": S0,
    "logger.wandb.mode": C("offline", "online", "disabled"),
    "logger.wandb.group": S0, "logger.wandb.job_type": S, "logger.wandb.tags": Spec("list", item=S),
    "logger.wandb.name": S0, "logger.wandb.notes": S0,
    # debug=fast|limit|overfit (conf/debug/): Lightning's own debugging switches; such runs are recorded
    # with status "debug", never as results
    "debug.fast_dev_run": B, "debug.limit_batches": I(1), "debug.limit_eval_batches": I(1),
    "debug.overfit_batches": I(1),
    # callbacks=default|early_stopping (conf/callbacks/): Lightning's own callbacks, as named dicts
    "callbacks.lr_monitor.logging_interval": C("step", "epoch"), "callbacks.model_summary.max_depth": I(-1),
    "callbacks.early_stopping.monitor": C("val/acc", "val/nll", "val/ece", "val/loss"),
    "callbacks.early_stopping.mode": C("min", "max"), "callbacks.early_stopping.patience": I(1),
    "callbacks.early_stopping.min_delta": N(0),
    # a CIFAR pair: descriptive (published numbers shown beside the results)
    "pair.*": ANY,
}

#: Hydra's own node (not kdbench's settings)
SKIP = ("hydra",)


def spec_of(key: str) -> Spec | None:
    if key in SCHEMA:
        return SCHEMA[key]
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        star = ".".join(parts[:i]) + ".*"
        if star in SCHEMA:
            return SCHEMA[star]
    return None


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        if not node and prefix:
            return {}
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check(cfg: Any) -> None:
    """Every key known, every value of its kind and range; raises :class:`ConfigError` naming the first bad key."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if hasattr(cfg, "_get_node") else cfg
    for key, v in leaves({k: v for k, v in c.items() if k not in SKIP}).items():
        spec = spec_of(key)
        if spec is None:
            group = key.split(".")[0]
            known = sorted(k.split(".", 1)[1] for k in SCHEMA if k.startswith(group + ".") and "." in k)
            hint = f"; known keys of {group}: {', '.join(known)}" if known else ""
            raise ConfigError(key, "not a kdbench setting: nothing reads it, so it would be recorded without "
                                   f"having any effect{hint}")
        spec.check(key, v)
    for who in ("student", "teacher"):
        arch, kwargs = (c.get(who) or {}).get("arch"), (c.get(who) or {}).get("kwargs")
        if arch and isinstance(kwargs, Mapping) and kwargs:
            check_model_kwargs(f"{who}.kwargs", arch, kwargs)


def check_model_kwargs(prefix: str, arch: str, kwargs: Mapping) -> None:
    """Model arguments against the builder's signature: a name it takes, a value of its default's kind."""
    from kdbench.models import get_spec, model_names

    if arch not in model_names():
        return  # the oracle, or an unknown arch (refused by its own key above)
    params = inspect.signature(get_spec(arch).builder).parameters
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if n not in ("num_classes", "in_shape")
             and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    passed_on = {}
    for k, v in kwargs.items():
        if k not in named:
            if open_kw:
                passed_on[k] = v  # passed on to the model's layers: a trial build below checks them
                continue
            raise ConfigError(f"{prefix}.{k}", f"model {arch!r} takes no argument {k!r}; it takes: "
                                               f"{', '.join(named) or 'none'}")
        default = named[k].default
        if default is inspect.Parameter.empty or default is None:
            continue
        spec = _spec_like(default)
        if spec.refusal(v) is not None:
            raise ConfigError(f"{prefix}.{k}", f"must be {spec.describe()} (as model {arch!r} takes it), got {v!r}")
    if passed_on:
        import torch

        from kdbench.models import build_model

        shape = get_spec(arch).input_shape or (1, 8, 8)
        try:
            with torch.device("meta"):  # no memory, no compute: does the model accept these arguments?
                build_model(arch, 10, shape, **dict(kwargs))
        except (TypeError, ValueError) as e:
            raise ConfigError(prefix, f"model {arch!r} cannot be built with {dict(passed_on)!r}: "
                                      f"{str(e).splitlines()[0][:160]}") from None


def _spec_like(default: Any) -> Spec:
    """What a model argument may be, read from its default: the same kind; an int default is a size
    (>= 1); a float default in [0, 1) is a rate such as dropout (in [0, 1)); a list keeps its items' kind."""
    if isinstance(default, bool):
        return B
    if isinstance(default, int):
        return I(1)
    if isinstance(default, float):
        return N(0, 1, hi_open=True) if 0.0 <= default < 1.0 else N(0)
    if isinstance(default, (list, tuple)):
        kinds = {type(x) for x in default}
        return Spec("list", item=I() if kinds == {int} else N() if kinds <= {int, float} else None)
    if isinstance(default, str):
        return S
    return ANY
