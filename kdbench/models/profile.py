"""Parameter and MAC counts for the registered models (the "Params / MACs" columns of KD papers).

MACs are counted with PyTorch's own FLOP counter (:class:`torch.utils.flop_counter.FlopCounterMode`)
on one input of the model's native shape, in eval mode; MACs = FLOPs / 2. The counter covers the
matrix products (convolutions, linear layers); BatchNorm, activations and pooling are not counted,
which is the convention of the published tables (e.g. resnet32x4: 1083M, wrn_40_2: 328M).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench.models import build_model, count_parameters, get_spec, model_names

__all__ = ["DEFAULT_FLAT_INPUT", "format_table", "model_table", "profile_model"]

#: input used for models that accept any (flattened) input: one MNIST image
DEFAULT_FLAT_INPUT = (1, 28, 28)
#: language models (family "lm") are profiled on one sequence of this many token ids
LM_SEQ_LEN = 64


def profile_model(name: str, num_classes: int = 100) -> dict:
    """``{"name", "family", "params", "macs", "input_shape"}`` for the registered model ``name``."""
    spec = get_spec(name)
    lm = spec.family == "lm"  # token ids in, not pixels: one sequence of LM_SEQ_LEN ids (vocabulary = num_classes)
    shape = (LM_SEQ_LEN,) if lm else (spec.input_shape or DEFAULT_FLAT_INPUT)
    model = build_model(name, num_classes, in_shape=shape).eval()
    x = torch.zeros(1, *shape, dtype=torch.long) if lm else torch.zeros(1, *shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return {
        "name": name,
        "family": spec.family,
        "params": count_parameters(model),
        "macs": counter.get_total_flops() // 2,
        "input_shape": tuple(shape),
    }


def model_table(num_classes: int = 100, names: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per model (all registered ones by default): name, family, input, params, MACs. A model sized only by
    its own config (``hf_causal_lm``: ``kwargs.path`` or ``kwargs.config``) has no row; ``df.attrs["skipped"]``
    names it."""
    from kdbench.errors import KDBenchError

    rows, skipped = [], []
    for n in (model_names() if names is None else names):
        try:
            rows.append(profile_model(n, num_classes))
        except KDBenchError:
            skipped.append(n)
    df = pd.DataFrame(rows, columns=["name", "family", "input_shape", "params", "macs"])
    df.attrs["skipped"] = skipped
    df["input"] = df["input_shape"].map(lambda s: "x".join(map(str, s)))
    return df


def format_table(df: pd.DataFrame) -> str:
    """A plain, aligned text table: model, input, params in M (2 decimals) and exact, MACs in M."""
    header = ("model", "input", "params (M)", "params", "MACs (M)")
    rows = [(str(r["name"]),
             r["input"] if "input" in df.columns else "x".join(map(str, r["input_shape"])),
             f"{r['params'] / 1e6:.2f}",
             f"{int(r['params']):,}",
             f"{r['macs'] / 1e6:.2f}")
            for _, r in df.iterrows()]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(header)]
    left = {0, 1}  # text columns left-aligned, numbers right-aligned

    def line(cells: Iterable[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line("-" * w for w in widths), *(line(row) for row in rows)])
