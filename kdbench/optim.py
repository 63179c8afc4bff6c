"""Optimizers and learning-rate schedules by name: ``optim.name`` and ``sched.name`` are registry keys.

``register_optimizer(name)`` takes ``factory(params, optim_spec) -> torch.optim.Optimizer``;
``register_scheduler(name)`` takes ``factory(optimizer, sched_spec, steps) -> schedule``, where the
schedule is None (a constant rate), a function of the step giving the rate's multiplier (stepped once
per optimisation step, composed with ``sched.warmup_epochs`` of linear warm-up) or a ready
``LRScheduler`` (stepped per step, used as it is). The config schema reads the names from here, so a
registered plugin is a valid ``optim.name`` / ``sched.name`` with no second edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

__all__ = ["Steps", "build_optimizer", "build_schedule", "optimizer_names", "register_optimizer",
           "register_scheduler", "scheduler_names"]


class Steps(NamedTuple):
    """The run's optimisation steps: in all, per epoch, and of warm-up."""

    total: int
    per_epoch: int
    warmup: int


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}
_SCHEDULERS: dict[str, Callable[..., Any]] = {}


def _register(table: dict, what: str, name: str):
    def deco(factory):
        if name in table and table[name] is not factory:
            raise ValueError(f"an {what} named {name!r} is already registered")
        table[name] = factory
        return factory

    return deco


def register_optimizer(name: str):
    """Decorator for ``factory(params, optim_spec) -> Optimizer``: ``optim.name=<name>``."""
    return _register(_OPTIMIZERS, "optimizer", name)


def register_scheduler(name: str):
    """Decorator for ``factory(optimizer, sched_spec, steps) -> None | multiplier(step) | LRScheduler``."""
    return _register(_SCHEDULERS, "scheduler", name)


def optimizer_names() -> list[str]:
    """The registered optimizers, in the order they were registered."""
    return list(_OPTIMIZERS)


def scheduler_names() -> list[str]:
    return list(_SCHEDULERS)


def _lookup(table: dict, key: str, noun: str, name: str):
    if name not in table:
        from kdbench.errors import ConfigError

        raise ConfigError(key, f"unknown {noun} {name!r}; allowed: {', '.join(table)}")
    return table[name]


def build_optimizer(params: Iterable, spec: Any) -> torch.optim.Optimizer:
    """The optimizer ``spec.name`` over ``params`` (``spec``: an :class:`kdbench.distill.OptimSpec`)."""
    return _lookup(_OPTIMIZERS, "optim.name", "optimizer", spec.name)(list(params), spec)


def build_schedule(opt: torch.optim.Optimizer, spec: Any, steps: Steps) -> Any:
    """What Lightning's ``configure_optimizers`` returns for ``opt`` under the schedule ``spec.name``."""
    made = _lookup(_SCHEDULERS, "sched.name", "scheduler", spec.name)(opt, spec, steps)
    if made is None:
        return opt
    sched = made
    if not isinstance(made, torch.optim.lr_scheduler.LRScheduler):
        fn = made if steps.warmup <= 0 else lambda step: made(step) * min(1.0, (step + 1) / steps.warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@register_optimizer("sgd")
def _sgd(params: list, o: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


@register_optimizer("adamw")
def _adamw(params: list, o: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))


@register_scheduler("none")
def _constant(opt, s, steps: Steps) -> None:
    return None


@register_scheduler("multistep")
def _multistep(opt, s, steps: Steps):
    # milestones are epochs; stepped per optimisation step so warm-up composes
    milestones = [int(m) * steps.per_epoch for m in s.milestones]
    return lambda step: s.gamma ** sum(step >= m for m in milestones)


@register_scheduler("cosine")
def _cosine(opt, s, steps: Steps):
    lr = opt.param_groups[0]["lr"] if opt.param_groups else 0.0
    ratio = s.min_lr / lr if lr else 0.0
    warm, total = steps.warmup, steps.total
    return lambda step: ratio + (1 - ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, step - warm) / max(1, total - warm))))


@register_scheduler("onecycle")
def _onecycle(opt, s, steps: Steps):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps.total,
                                               pct_start=s.pct_start)
