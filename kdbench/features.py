"""What a distillation method sees of a model: its logits and, when it asks, its intermediate features.

A method declares :class:`Needs`: for each side (student, teacher) a tuple of selectors, and gets an
:class:`Out` with exactly those, from the one forward pass the step makes anyway:

* ``logits``: the model's output (always there);
* ``pooled``: the penultimate vector, ``[N, D]`` (the classifier's input);
* ``stages``, ``stages[i]``, ``stages[a:b]``: the zoo's stage maps (stem, then each stage), ``[N, C, H, W]``;
* ``preact_stages...``: the same maps before the stage's last ReLU (OFD, ReviewKD);
* ``hook:<module path>``: the output of any named submodule (``model.get_submodule(path)``), taken by a
  forward hook for the length of the call: a model outside the zoo needs no rewrite.

The zoo's contract is ``model(x, return_features=True) -> (logits, {"pooled", "stages", "preact_stages"})``
(a model that returns a tensor there gives only ``pooled``). Nothing here knows about distillation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["Needs", "Out", "check_selectors", "forward_with", "probe", "zoo_keys"]

_ZOO = ("pooled", "stages", "preact_stages")
_SELECTOR = re.compile(r"^(logits|pooled|(stages|preact_stages)(\[(-?\d+)?(:(-?\d+)?)?\])?|hook:[A-Za-z0-9_.]+)$")


@dataclass(frozen=True)
class Needs:
    """What a method reads of each side; ``("logits",)`` on both is a logit method."""

    student: tuple[str, ...] = ("logits",)
    teacher: tuple[str, ...] = ("logits",)

    @property
    def features(self) -> bool:
        """True when either side needs more than its logits (a feature method)."""
        return any(s != "logits" for s in (*self.student, *self.teacher))


@dataclass
class Out:
    """One side's output for a batch: ``logits`` always, the rest only when asked for (None otherwise)."""

    logits: Tensor
    pooled: Tensor | None = None
    stages: list[Tensor] | None = None
    preact_stages: list[Tensor] | None = None
    hooks: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, selector: str):
        """The value of one selector (``out["stages[1:]"]``, ``out["hook:layer3"]``)."""
        if selector.startswith("hook:"):
            return self.hooks[selector[5:]]
        m = _SELECTOR.match(selector)
        if m is None:
            raise KeyError(selector)
        name = m.group(2) or m.group(1)
        value = getattr(self, name)
        if m.group(3) is None:
            return value
        lo, colon, hi = m.group(4), m.group(5), m.group(6)
        if colon is None:
            if not -len(value) <= int(lo) < len(value):
                raise ValueError(f"{selector}: the model gives {len(value)} {name} (indices 0..{len(value) - 1})")
            return value[int(lo)]
        return value[slice(int(lo) if lo else None, int(hi) if hi else None)]


def check_selectors(selectors: tuple[str, ...], where: str) -> None:
    """Refuse a selector outside the grammar above (a method's own bug, said once when it is built)."""
    bad = [s for s in selectors if not _SELECTOR.match(s)]
    if bad:
        raise ValueError(f"{where}: unknown feature selector(s) {bad}; allowed: logits, pooled, stages[...], "
                         "preact_stages[...], hook:<module path>")


def zoo_keys(selectors: tuple[str, ...]) -> set[str]:
    """The zoo features ``selectors`` read (``stages[1:]`` -> ``stages``)."""
    return {k for s in selectors for k in _ZOO if s == k or s.startswith(k + "[")}


def forward_with(model: nn.Module, x: Tensor, selectors: tuple[str, ...]) -> Out:
    """``model(x)`` once, returning what ``selectors`` ask for (the features of the same pass)."""
    hooks = [s[5:] for s in selectors if s.startswith("hook:")]
    zoo = zoo_keys(selectors)
    taken: dict[str, Tensor] = {}
    handles = []
    try:
        for path in hooks:
            def keep(_mod, _inp, output, path=path):
                taken[path] = output

            handles.append(model.get_submodule(path).register_forward_hook(keep))
        if zoo:
            logits, feats = model(x, return_features=True)
            if isinstance(feats, Tensor):  # a model whose only feature is its penultimate vector
                feats = {"pooled": feats}
            missing = [k for k in zoo if feats.get(k) is None]
            if missing:
                raise ValueError(f"{type(model).__name__} gives no {', '.join(sorted(missing))} features")
            out = Out(logits, **{k: feats[k] for k in zoo})
        else:
            out = Out(model(x))
    finally:
        for h in handles:
            h.remove()
    out.hooks = {p: taken[p] for p in hooks}
    return out


@torch.no_grad()
def probe(model: nn.Module, input_shape: tuple[int, ...], selectors: tuple[str, ...], *, dtype=None) -> Out:
    """The shapes of what ``selectors`` give for ``model``, from one dummy batch of two zeros in eval mode
    (BatchNorm statistics and dropout untouched; the model's mode is put back). The tensors are the
    probe's outputs: read their ``.shape``."""
    p = next(iter(model.parameters()), None)
    x = torch.zeros((2, *input_shape), device=p.device if p is not None else None,
                    dtype=dtype or (p.dtype if p is not None and p.is_floating_point() else torch.float32))
    was = model.training
    model.eval()
    try:
        return forward_with(model, x, selectors)
    finally:
        model.train(was)
