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

With several classes left out (``--only 7,8``: the paper's transfer set of only 7s and 8s) one ``b`` is added to
every omitted class's logit, which is the paper's "reduce the biases of 7 and 8" (a shift common to all logits
changes nothing); the columns then say ``omitted`` for the class (``errors_on_omitted``...), and the output is
``only78.csv`` / ``.md`` with the paper's 47.3 % → 13.2 % errors.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from kdbench.errors import KDBenchError

#: the paper (Hinton, Vinyals & Dean 2015, section 3): the distilled net without 3s in its transfer set
PAPER = {"errors": 206, "errors_on_3": 133, "bias": 3.5, "errors_adjusted": 109, "errors_on_3_adjusted": 14}
COLUMNS = ("model", "seed", "errors", "errors_on_3", "bias", "errors_adjusted", "errors_on_3_adjusted")
#: the same paper, a transfer set of only 7s and 8s: 47.3 % test errors, 13.2 % with the biases of 7 and 8
#: reduced by 7.6 (errors out of 10,000; the paper gives no per-class count)
PAPER_ONLY78 = {"errors": 4730, "bias": 7.6, "errors_adjusted": 1320}
COLUMNS_MANY = ("model", "seed", "errors", "errors_on_omitted", "bias", "errors_adjusted",
                "errors_on_omitted_adjusted")
#: the bias grid (logit units): 0 (no correction) to 15 in steps of 0.05
GRID = tuple(round(0.05 * i, 2) for i in range(301))


#: the loaded data of each dataset config seen (one study reads one or two)
_DATA: dict[str, object] = {}


class StudyError(KDBenchError):
    """A run of the study that cannot be tabulated (no checkpoint, weights that are not the record's)."""


def choose_bias(logits: torch.Tensor, y: torch.Tensor, cls, grid=GRID) -> tuple[float, int]:
    """``(b, errors)``: the grid value of the bias added to the logit of class ``cls`` (an id, or a list of them)
    with the fewest errors on ``(logits, y)``, the middle of the first run of grid points reaching that minimum."""
    errs = [errors(logits, y, cls, b)[0] for b in grid]
    low = min(errs)
    first = errs.index(low)
    last = first
    while last + 1 < len(errs) and errs[last + 1] == low:
        last += 1
    mid = (first + last) // 2
    return float(grid[mid]), errs[mid]


def errors(logits: torch.Tensor, y: torch.Tensor, cls, bias: float = 0.0) -> tuple[int, int]:
    """(errors, errors on examples of ``cls``) with ``bias`` added to the logit of ``cls`` (an id, or a list)."""
    ids = [cls] if isinstance(cls, int) else list(cls)
    z = logits.clone()
    z[:, ids] += bias
    wrong = z.argmax(-1) != y
    return int(wrong.sum()), int(wrong[torch.isin(y, torch.tensor(ids, dtype=y.dtype))].sum())


def _logits(rec: dict, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's student with its ``last.ckpt`` weights, on the run's validation and test splits."""
    from kdbench.data.core import TensorLoader
    from kdbench.models import build_model
    from kdbench.runner import load_data

    conf = rec["config"]
    key = json.dumps(conf["dataset"], sort_keys=True, default=str)
    if key not in _DATA:  # the runs of a study share their data: read it once
        _DATA[key] = load_data(conf["dataset"])
    data = _DATA[key]
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


def rows(records: list[dict], checkpoints: Path, cls) -> list[dict]:
    """One row per complete record (see the module docstring), sorted by model and seed. ``cls``: the omitted
    class, or the list of them (then the columns of :data:`COLUMNS_MANY`)."""
    ids = [cls] if isinstance(cls, int) else sorted(cls)
    on, on_adj = ("errors_on_3", "errors_on_3_adjusted") if ids == [3] else \
        ((f"errors_on_{ids[0]}", f"errors_on_{ids[0]}_adjusted") if len(ids) == 1 else
         ("errors_on_omitted", "errors_on_omitted_adjusted"))
    out = []
    for rec in records:
        if rec.get("status") != "complete":
            continue
        excluded = ((rec.get("dataset_info") or {}).get("transfer") or {}).get("excluded_classes") or []
        if sorted(set(ids) & set(excluded)) != ids:
            raise StudyError(rec["run_id"], f"its transfer set had class(es) {sorted(set(ids) - set(excluded))} "
                                            f"(excluded: {excluded or 'none'})")
        ckpt = checkpoints / rec["experiment"] / rec["run_id"] / "last.ckpt"
        if not ckpt.exists():
            raise StudyError(rec["run_id"], f"no {ckpt} (its weights): re-run it, or run the study where it ran")
        val, val_y, test, test_y = _logits(rec, ckpt)
        err, err_c = errors(test, test_y, ids)
        test_m = rec["metrics"]["last"]["test"]
        n = int(test_y.numel())
        want = round((1.0 - float(test_m["acc"])) * n)
        counts = torch.bincount(test_y, minlength=max(ids) + 1)
        per = [f"acc_class_{c}" for c in ids]
        want_c = (round(sum((1.0 - float(test_m[k])) * int(counts[c]) for k, c in zip(per, ids, strict=True)))
                  if all(k in test_m for k in per) else err_c)
        if abs(err - want) > 1 or abs(err_c - want_c) > len(ids):  # float32 ties on another CPU: an example or so
            raise StudyError(rec["run_id"], f"{ckpt} gives {err} test errors ({err_c} on {ids}); its record says "
                             f"{want} ({want_c}): not the weights the record measured")
        bias, _ = choose_bias(val, val_y, ids)
        adj, adj_c = errors(test, test_y, ids, bias)
        out.append({"model": "scratch" if rec.get("variant") == "scratch" else "distilled", "seed": int(rec["seed"]),
                    "errors": err, on: err_c, "bias": bias, "errors_adjusted": adj, on_adj: adj_c})
    return sorted(out, key=lambda r: (r["model"] != "distilled", r["seed"]))


def summary_markdown(table: list[dict], experiment: str, only: list[int] | None = None) -> str:
    """The means over seeds per model, the paper's row, and the per-seed rows. ``only``: the classes the transfer
    set kept (the 7s-and-8s variant), else the omitted 3."""
    import pandas as pd

    from kdbench.report.tables import markdown_table

    columns, paper = (COLUMNS_MANY, PAPER_ONLY78) if only else (COLUMNS, PAPER)

    def mean_sd(vals):
        m = statistics.mean(vals)
        return f"{m:.1f} ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{m:.1f}"

    means = []
    for model in ("distilled", "scratch"):
        mine = [r for r in table if r["model"] == model]
        if mine:
            means.append({"model": f"{model} (mean of {len(mine)} seeds)",
                          **{c: mean_sd([float(r[c]) for r in mine]) for c in columns[2:]}})
    means.append({"model": "distilled, Hinton et al. 2015", **{c: str(paper.get(c, "—")) for c in columns[2:]}})
    if only:
        kept = " and ".join(f"{c}s" for c in only)
        head = (f"# {experiment}: a transfer set of only {kept} (test errors of 10,000)\n\n"
                f"`bias`: added to every other class's logit (the same as lowering the biases of {kept}), chosen "
                "on the validation split (fewest validation errors over 0, 0.05, ..., 15), never on the test set; "
                "`errors_on_omitted`: errors on the test examples of the classes the transfer set lacked.\n\n")
    else:
        head = (f"# {experiment}: the omitted 3 (test errors of 10,000; 1,010 threes)\n\n"
                "`bias`: added to class 3's logit, chosen on the validation split (fewest validation errors over "
                "0, 0.05, ..., 15), never on the test set.\n\n")
    cols = ["model", *columns[2:]]
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
    p.add_argument("--only", default=None, help="the classes the transfer set kept, e.g. 7,8 (every other one omitted)")
    p.add_argument("--out", default=None,
                   help="default: <results>/hinton_mnist/omitted3.csv, or only<classes>.csv with --only (.md beside it)")
    a = p.parse_args(argv)
    results = Path(a.results)
    try:
        only = None
        if a.only:
            try:
                only = sorted({int(c) for c in a.only.split(",")})
            except ValueError:
                raise StudyError("--only", f"class ids separated by commas, e.g. 7,8; got {a.only!r}") from None
        records = [r for _, r in iter_experiment_records(results / "runs", a.experiment)]
        if not records:
            raise StudyError("--experiment", f"no records in {results / 'runs' / a.experiment}: run "
                                             "`make reproduce-omitted3` first")
        n_cls = int(((records[0].get("config") or {}).get("student") or {}).get("num_classes") or 10)
        cls = [c for c in range(n_cls) if c not in only] if only else a.cls
        table = rows(records, Path(a.checkpoints) if a.checkpoints else results / "checkpoints", cls)
    except KDBenchError as e:
        print(f"kdbench omitted: {e}", file=sys.stderr)
        return 2
    name = f"only{''.join(map(str, only))}.csv" if only else "omitted3.csv"
    out = Path(a.out) if a.out else results / "hinton_mnist" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = COLUMNS_MANY if only else COLUMNS
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in table]
    md = summary_markdown(table, a.experiment, only)
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"written: {out}, {out.with_suffix('.md')}")
    return 0 if all(math.isfinite(float(r["bias"])) for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
