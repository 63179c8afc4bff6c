"""One table of every config key kdbench reads, its kind and its range: checked for every run.

:func:`check` walks the composed config and refuses, with one line naming the key, a value of the
wrong kind or outside its range, and a key that nothing reads (``+trainer.fast_dev_run=true`` would
otherwise be recorded as if it had happened). ``distill.*`` is each method's own schema
(:mod:`kdbench.methods`); ``student.kwargs.*`` / ``teacher.kwargs.*`` are checked against the
model builder's signature. :mod:`kdbench.config` keeps the checks with tailored messages; this table
is the floor under them, so a new key cannot be forgotten (``tests/test_schema.py`` walks it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdbench.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    kind: str  # bool | int | number | str | choice | list | any
    lo: float | None = None
    hi: float | None = None
    optional: bool = False  # null allowed
    choices: tuple = ()
    item: str | None = None  # list items: int | number | str
    hi_open: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        rng = ""
        if self.lo is not None and self.hi is not None:
            rng = f" in [{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f" >= {self.lo:g}"
        what = {"bool": "true or false", "int": "an integer", "number": "a number", "str": "a string",
                "list": f"a list of {self.item or 'values'}", "any": "any value"}[self.kind] + rng
        return what + (" or null" if self.optional else "")


B, S, ANY = Spec("bool"), Spec("str"), Spec("any")
S0 = Spec("str", optional=True)


def I(lo: float | None = None, hi: float | None = None, optional: bool = False) -> Spec:  # noqa: E743
    return Spec("int", lo, hi, optional)


def N(lo: float | None = None, hi: float | None = None, optional: bool = False, hi_open: bool = False) -> Spec:
    return Spec("number", lo, hi, optional, hi_open=hi_open)


def C(*choices: Any) -> Spec:
    return Spec("choice", choices=tuple(choices))


SEED = I(0, 2**32 - 1)
_OPTIM = {"name": S, "lr": N(0), "momentum": N(0, optional=True), "weight_decay": N(0, optional=True),
          "nesterov": B, "betas": Spec("list", item="number")}
_SCHED = {"name": S, "milestones": Spec("list", item="int"), "gamma": N(0), "min_lr": N(0), "warmup_epochs": I(0),
          "pct_start": N(0, 1)}

#: every key kdbench reads (a ``*`` segment: any name there); the values a run may take
SCHEMA: dict[str, Spec] = {
    "seed": SEED, "data_seed": SEED, "experiment_name": S, "tags": Spec("list", item="str"),
    "teacher_signal": S, "resume": B, "teacher_only": B, "force": B, "fuse": I(1),
    "teacher_cache.dtype": C("auto", "float32", "bfloat16", "float16"), "teacher_cache.max_gb": N(0),
    "teacher_cache.on_device": C("auto", True, False),
    "teacher_capture.path": S0, "teacher_capture.k": I(1, optional=True),
    # dataset (every dataset's keys; each loader reads its own)
    "dataset.name": S, "dataset.root": S0, "dataset.cache_dir": S0, "dataset.download": B,
    "dataset.batch_size": I(1), "dataset.eval_batch_size": I(1), "dataset.augment": S,
    "dataset.val_size": N(0), "dataset.split_seed": SEED, "dataset.train_subset": I(1, optional=True),
    "dataset.test_subset": I(1, optional=True), "dataset.test_fraction": N(0, 1, hi_open=True),
    "dataset.dim": I(1), "dataset.noise": N(0), "dataset.n_train": I(1, optional=True), "dataset.n_test": I(1, optional=True),
    "dataset.num_classes": I(2), "dataset.seed": SEED,
    # sequence data (markov, bytes_text)
    "dataset.seq_len": I(2), "dataset.vocab": I(2), "dataset.branching": I(1), "dataset.prompt_len": I(0),
    # models
    "student.arch": S, "student.num_classes": I(2, optional=True), "student.kwargs.*": ANY,
    "teacher.arch": S, "teacher.num_classes": I(2, optional=True), "teacher.kwargs.*": ANY,
    "teacher.checkpoint": S0, "teacher.seed": SEED, "teacher.train_if_missing": B,
    "teacher.recipe.epochs": I(0), "teacher.recipe.batch_size": I(1), "teacher.recipe.augment": S,  # epochs 0: oracle
    **{f"teacher.recipe.optim.{k}": v for k, v in _OPTIM.items()},
    **{f"teacher.recipe.sched.{k}": v for k, v in _SCHED.items()},
    **{f"optim.{k}": v for k, v in _OPTIM.items()},
    **{f"sched.{k}": v for k, v in _SCHED.items()},
    # trainer
    "trainer.max_epochs": I(1), "trainer.accelerator": S, "trainer.devices": I(1), "trainer.strategy": S,
    "trainer.precision": S, "trainer.deterministic": C("auto", True, False),
    "trainer.compile": C("auto", True, False), "trainer.channels_last": C("auto", True, False),
    "trainer.check_finite_every": ANY, "trainer.progress": B, "trainer.limit_train_batches": N(0, optional=True),
    "trainer.gradient_clip_val": N(0, optional=True), "trainer.log_every_n_steps": I(1),
    # where things go
    "paths.results_dir": S, "paths.runs_dir": S, "paths.teachers_dir": S, "paths.checkpoints_dir": S,
    "paths.wandb_dir": S, "paths.data_dir": S,
    # trackers
    "logger.csv.save_dir": S, "logger.wandb.project": S, "logger.wandb.entity": S0, "logger.wandb.mode": S,
    "logger.wandb.group": S0, "logger.wandb.job_type": S, "logger.wandb.tags": Spec("list", item="str"),
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

#: sections checked elsewhere: the method's own schema, Hydra's own node
SKIP = ("distill", "hydra")


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


def _ok(spec: Spec, v: Any) -> bool:
    if v is None:
        return spec.optional or spec.kind == "any"
    if spec.kind == "any":
        return True
    if spec.kind == "bool":
        return isinstance(v, bool)
    if spec.kind == "str":
        return isinstance(v, str)
    if spec.kind == "choice":
        return any(v == c and type(v) is type(c) for c in spec.choices)
    if spec.kind == "list":
        if not isinstance(v, (list, tuple)):
            return False
        item = {"int": I(), "number": N(), "str": S}.get(spec.item or "", ANY)
        return all(_ok(item, x) for x in v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if spec.kind == "int" and not isinstance(v, int):
        return False
    if not math.isfinite(v):
        return False
    if spec.lo is not None and v < spec.lo:
        return False
    if spec.hi is not None and (v >= spec.hi if spec.hi_open else v > spec.hi):
        return False
    return True


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
        if not _ok(spec, v):
            raise ConfigError(key, f"must be {spec.describe()}, got {v!r}")
    for who in ("student", "teacher"):
        arch, kwargs = (c.get(who) or {}).get("arch"), (c.get(who) or {}).get("kwargs")
        if arch and isinstance(kwargs, Mapping) and kwargs:
            check_model_kwargs(f"{who}.kwargs", arch, kwargs)


def check_model_kwargs(prefix: str, arch: str, kwargs: Mapping) -> None:
    """Model arguments against the builder's signature: a name it takes, a value of its default's kind."""
    from kdbench.models import get_spec, model_names

    if arch not in model_names():
        return  # the arch itself is refused by config.validate
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
        if not _ok(spec, v):
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
        return Spec("list", item="int" if kinds == {int} else "number" if kinds <= {int, float} else None)
    if isinstance(default, str):
        return S
    return ANY
