"""Hinton et al.'s omitted-class experiment as a table: ``python -m kdbench.studies.omitted --experiment E``.

The students of experiment ``E`` learned from a transfer set without some classes
(``dataset.train_exclude_classes``); the teacher saw them all. For each complete run, from its record and its
``last.ckpt`` (the weights its ``last`` metrics were measured on): test errors overall and on the omitted
class, then the paper's bias correction: the omitted class's logit is raised by ``b`` (the same as adding
``b`` to its output bias), ``b`` chosen on the **validation split** (held out of the training split; every
class is in it), never on the test set: the grid value with the fewest validation errors, the middle of the
first run of grid points that reach that minimum (errors are flat between logit crossings; the middle is the
choice furthest from both edges). Test errors with ``b`` added follow.

Writes ``<results>/hinton_mnist/omitted3.csv`` (``--out``): ``model, seed, errors, errors_on_3, bias,
errors_adjusted, errors_on_3_adjusted`` (``model``: distilled | scratch) and ``omitted3.md`` with the means
and the paper's numbers. The errors it counts are checked against the record's own test accuracy and
per-class accuracy: a checkpoint that is not the record's weights is refused, never tabulated.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from kdbench.errors import KDBenchError

#: the paper (Hinton, Vinyals & Dean 2015, section 3): the distilled net without 3s in its transfer set
PAPER = {"errors": 206, "errors_on_3": 133, "bias": 3.5, "errors_adjusted": 109, "errors_on_3_adjusted": 14}
COLUMNS = ("model", "seed", "errors", "errors_on_3", "bias", "errors_adjusted", "errors_on_3_adjusted")
#: the bias grid (logit units): 0 (no correction) to 15 in steps of 0.05
GRID = tuple(round(0.05 * i, 2) for i in range(301))


class StudyError(KDBenchError):
    """A run of the study that cannot be tabulated (no checkpoint, weights that are not the record's)."""


def choose_bias(logits: torch.Tensor, y: torch.Tensor, cls: int, grid=GRID) -> tuple[float, int]:
    """``(b, errors)``: the grid value of the bias added to class ``cls``'s logit with the fewest errors on
    ``(logits, y)``, the middle of the first run of grid points reaching that minimum."""
    errs = [errors(logits, y, cls, b)[0] for b in grid]
    low = min(errs)
    first = errs.index(low)
    last = first
    while last + 1 < len(errs) and errs[last + 1] == low:
        last += 1
    mid = (first + last) // 2
    return float(grid[mid]), errs[mid]


def errors(logits: torch.Tensor, y: torch.Tensor, cls: int, bias: float = 0.0) -> tuple[int, int]:
    """(errors, errors on examples of ``cls``) with ``bias`` added to class ``cls``'s logit."""
    z = logits.clone()
    z[:, cls] += bias
    wrong = z.argmax(-1) != y
    return int(wrong.sum()), int(wrong[y == cls].sum())


def _logits(rec: dict, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's student with its ``last.ckpt`` weights, on the run's validation and test splits."""
    from kdbench.data.core import TensorLoader
    from kdbench.models import build_model
    from kdbench.runner import load_data

    conf = rec["config"]
    data = load_data(conf["dataset"])
    student = build_model(conf["student"]["arch"], data.num_classes, data.input_shape,
                          **(conf["student"].get("kwargs") or {}))
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)["state_dict"]
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    student.eval()
    out = []
    for x, y in ((data.val_x, data.val_y), (data.test_x, data.test_y)):
        # the loader the run validated and tested with (its scaling and normalisation), in order
        loader = TensorLoader(x, y, 2000, mean=data.mean, std=data.std)
        with torch.no_grad():
            out += [torch.cat([student(b.x).float() for b in loader]), torch.cat([b.y for b in loader])]
    return tuple(out)


def rows(records: list[dict], checkpoints: Path, cls: int) -> list[dict]:
    """One row per complete record (see the module docstring), sorted by model and seed."""
    out = []
    for rec in records:
        if rec.get("status") != "complete":
            continue
        excluded = ((rec.get("dataset_info") or {}).get("transfer") or {}).get("excluded_classes") or []
        if cls not in excluded:
            raise StudyError(rec["run_id"], f"its transfer set had class {cls} (excluded: {excluded or 'none'})")
        ckpt = checkpoints / rec["experiment"] / rec["run_id"] / "last.ckpt"
        if not ckpt.exists():
            raise StudyError(rec["run_id"], f"no {ckpt} (its weights): re-run it, or run the study where it ran")
        val, val_y, test, test_y = _logits(rec, ckpt)
        err, err_c = errors(test, test_y, cls)
        test_m = rec["metrics"]["last"]["test"]
        n, n_c = int(test_y.numel()), int((test_y == cls).sum())
        want = round((1.0 - float(test_m["acc"])) * n)
        want_c = round((1.0 - float(test_m[f"acc_class_{cls}"])) * n_c) if f"acc_class_{cls}" in test_m else err_c
        if abs(err - want) > 1 or abs(err_c - want_c) > 1:  # float32 ties on another CPU: one example at most
            raise StudyError(rec["run_id"], f"{ckpt} gives {err} test errors ({err_c} on {cls}); its record says "
                             f"{want} ({want_c}): not the weights the record measured")
        bias, _ = choose_bias(val, val_y, cls)
        adj, adj_c = errors(test, test_y, cls, bias)
        out.append({"model": "scratch" if rec.get("variant") == "scratch" else "distilled", "seed": int(rec["seed"]),
                    "errors": err, "errors_on_3": err_c, "bias": bias, "errors_adjusted": adj,
                    "errors_on_3_adjusted": adj_c})
    return sorted(out, key=lambda r: (r["model"] != "distilled", r["seed"]))


def summary_markdown(table: list[dict], experiment: str) -> str:
    """The per-seed rows, the means over seeds per model, and the paper's row."""
    from kdbench.report.tables import markdown_table

    def mean_sd(vals):
        m = statistics.mean(vals)
        return f"{m:.1f} ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{m:.1f}"

    means = []
    for model in ("distilled", "scratch"):
        mine = [r for r in table if r["model"] == model]
        if mine:
            means.append({"model": f"{model} (mean of {len(mine)} seeds)",
                          **{c: mean_sd([float(r[c]) for r in mine]) for c in COLUMNS[2:]}})
    means.append({"model": "distilled, Hinton et al. 2015", **{c: str(PAPER[c]) for c in COLUMNS[2:]}})
    head = (f"# {experiment}: the omitted 3 (test errors of 10,000; 1,010 threes)\n\n"
            "`bias`: added to class 3's logit, chosen on the validation split (fewest validation errors over "
            "0, 0.05, ..., 15), never on the test set.\n\n")
    import pandas as pd

    cols = ["model", *COLUMNS[2:]]
    per_seed = [{c: str(v) for c, v in {**r, "model": f"{r['model']} s{r['seed']}"}.items()} for r in table]
    return (head + markdown_table(pd.DataFrame(means, columns=cols)) + "\n\nPer seed:\n\n"
            + markdown_table(pd.DataFrame(per_seed, columns=cols)) + "\n")


def main(argv: list[str] | None = None) -> int:
    from kdbench.files import atomic_write_text
    from kdbench.report.frame import iter_experiment_records

    p = argparse.ArgumentParser(prog="python -m kdbench.studies.omitted", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="hinton_omitted3")
    p.add_argument("--results", default="results", help="the results folder (runs/<experiment>/ holds the records)")
    p.add_argument("--checkpoints", default=None, help="default: <results>/checkpoints")
    p.add_argument("--cls", type=int, default=3, help="the omitted class")
    p.add_argument("--out", default=None, help="default: <results>/hinton_mnist/omitted3.csv (and .md beside it)")
    a = p.parse_args(argv)
    results = Path(a.results)
    try:
        records = [r for _, r in iter_experiment_records(results / "runs", a.experiment)]
        if not records:
            raise StudyError("--experiment", f"no records in {results / 'runs' / a.experiment}: run "
                                             "`make reproduce-omitted3` first")
        table = rows(records, Path(a.checkpoints) if a.checkpoints else results / "checkpoints", a.cls)
    except KDBenchError as e:
        print(f"kdbench omitted: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else results / "hinton_mnist" / "omitted3.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in table]
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".md"), summary_markdown(table, a.experiment))
    print(summary_markdown(table, a.experiment))
    print(f"written: {out}, {out.with_suffix('.md')}")
    return 0 if all(math.isfinite(float(r["bias"])) for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
