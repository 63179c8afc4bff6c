"""Paper-style tables and plots from run records: ``kdbench-report`` / ``python -m kdbench.report``.

Reads the run records of one experiment (``<results>/runs/<experiment>/*.json``, see
:mod:`kdbench.records`) and writes into ``<results>/<experiment>/``:

- ``table.md``  -- markdown table, protocol note, teacher accuracy, failed runs
- ``table.tex`` -- booktabs table (``pandas`` Styler), best value per column in bold
- ``table.csv`` -- the numeric summary (unrounded means, stds, n, deltas), one row per group
- ``reliability.png``, ``learning_curves.png`` and, when the experiment varies tau, ``tau_curves.png``

Every number is a mean +- std (ddof=1) over the seeds of a group, computed from completed
runs only. Both protocols are reported and labelled: "last" is the final epoch (CRD, Tian et
al. 2020), "best" is the epoch with the best validation accuracy (DKD, Zhao et al. 2022).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError

DEFAULT_METRICS = (
    "last_test_acc", "best_test_acc", "last_test_ece", "last_test_nll", "last_test_brier",
    "last_test_agreement", "last_test_kl_teacher",
)
GRID_COLS = ("variant", "distill_alpha", "distill_tau")

PROTOCOL_NOTE = ("mean ± std over n seeds; 'last' = final epoch (CRD protocol), "
                 "'best' = best validation epoch (DKD protocol)")

#: record column -> (table header, better: "max" | "min" | None, display scale, decimals)
METRIC_SPEC: dict[str, tuple[str, str | None, float, int]] = {
    "last_test_acc": ("top-1 last (%)", "max", 100.0, 2),
    "best_test_acc": ("top-1 best-epoch (%)", "max", 100.0, 2),
    "last_test_agreement": ("agreement last (%)", "max", 100.0, 2),
    "last_test_kl_teacher": ("KL(T‖S) last", "min", 1.0, 4),
    "last_test_ece": ("ECE last", "min", 1.0, 4),
    "last_test_nll": ("NLL last", "min", 1.0, 4),
    "last_test_brier": ("Brier last", "min", 1.0, 4),
    "best_test_ece": ("ECE best-epoch", "min", 1.0, 4),
    "best_test_nll": ("NLL best-epoch", "min", 1.0, 4),
    "best_test_brier": ("Brier best-epoch", "min", 1.0, 4),
    "best_test_agreement": ("agreement best-epoch (%)", "max", 100.0, 2),
    "best_test_kl_teacher": ("KL(T‖S) best-epoch", "min", 1.0, 4),
}
#: summary column of a derived quantity -> (header, better, decimals); values are already in pp / %
DERIVED_SPEC: dict[str, tuple[str, str | None, int]] = {
    "delta_vs_kd": ("Δ vs KD (pp)", None, 2),
    "delta_vs_scratch": ("Δ vs scratch (pp)", None, 2),
    "teacher_kept": ("teacher kept (%)", "max", 1),
}
GROUP_HEADERS = {"variant": "variant", "distill_alpha": "α", "distill_tau": "τ"}
#: where the accuracy-like columns go, then the derived ones, then the rest
_DISPLAY_ORDER = ("last_test_acc", "best_test_acc", "delta_vs_kd", "delta_vs_scratch", "teacher_kept")
_VARIANT_ORDER = {"scratch": 0, "kd": 1}


class ReportError(KDBenchError):
    """No records, or records that cannot make a table: one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _records_root(records_dir: str | os.PathLike, experiment: str) -> Path:
    """``records_dir`` may be the runs directory (``results/runs``) or the experiment's own folder."""
    records_dir = Path(records_dir)
    sub = records_dir / experiment
    return sub if sub.is_dir() else records_dir


def _runs_root(records_dir: str | os.PathLike, experiment: str) -> Path:
    records_dir = Path(records_dir)
    return records_dir.parent if records_dir.name == experiment and not (records_dir / experiment).is_dir() \
        else records_dir


def default_out_dir(records_dir: str | os.PathLike, experiment: str) -> Path:
    """``<results>/<experiment>`` for records under ``<results>/runs/<experiment>``."""
    return _runs_root(records_dir, experiment).parent / experiment


def experiments_under(records_dir: str | os.PathLike) -> list[str]:
    """The experiment names of all records under ``records_dir``, sorted."""
    from kdbench.records import iter_records

    root = Path(records_dir)
    if not root.is_dir():
        return []
    return sorted({str(r.get("experiment")) for _, r in iter_records(root) if r.get("experiment") is not None})


#: config keys that never make two runs different computations (or are covered by other columns)
_CONFIG_SKIP_TOP = ("paths", "logger", "hydra", "resume", "force", "tags", "experiment_name", "seed",
                    "teacher_only")
_CONFIG_SKIP_KEYS = ("trainer.progress", "trainer.log_every_n_steps", "trainer.check_finite_every",
                     "distill.variant", "distill.enabled", "distill.alpha", "distill.tau",
                     "dataset.root", "dataset.download", "dataset.cache_dir", "dataset.eval_batch_size",
                     "teacher.train_if_missing")


def _config_leaves(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for a nested config; lists become compact JSON strings (hashable)."""
    import json

    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            out.update(_config_leaves(v, f"{prefix}{k}."))
    elif isinstance(cfg, (list, tuple)):
        out[prefix[:-1]] = json.dumps(cfg, separators=(",", ":"), sort_keys=True, default=str)
    elif prefix:
        out[prefix[:-1]] = cfg
    return out


def config_columns(recs: Iterable[Mapping]) -> dict[str, dict[str, Any]]:
    """The config keys that tell runs of the same variant apart, and each run's value of them.

    A table must never average runs that are different computations: a sweep over, say,
    ``student.kwargs.hidden`` or ``teacher.arch`` inside one experiment varies keys that the variant
    name does not show. A key counts when it takes several values among the runs of one variant.
    Seed-derived keys (``teacher.seed: ${seed}``), α and τ (own columns) and keys that do not change
    the computation (paths, logging) are left out. Returns ``{key: {run_id: value}}``.
    """
    recs = [r for r in recs if isinstance(r, Mapping)]
    leaves = []
    for r in recs:
        flat = {k: v for k, v in _config_leaves(r.get("config") or {}).items()
                if k.split(".", 1)[0] not in _CONFIG_SKIP_TOP and k not in _CONFIG_SKIP_KEYS}
        leaves.append(flat)
    seed_like = {k for flat in leaves for k in flat}
    for r, flat in zip(recs, leaves):
        seed_like = {k for k in seed_like if k in flat and str(flat[k]) == str(r.get("seed"))}
    per_variant: dict[Any, dict[str, set]] = {}
    for r, flat in zip(recs, leaves):
        vals = per_variant.setdefault(r.get("variant"), {})
        for k, v in flat.items():
            vals.setdefault(k, set()).add(v)
    keys = sorted({k for vals in per_variant.values() for k, vs in vals.items() if len(vs) > 1} - seed_like)
    return {k: {r.get("run_id"): flat.get(k) for r, flat in zip(recs, leaves)} for k in keys}


def add_config_columns(rows: list[dict], recs: Sequence[Mapping]) -> list[str]:
    """Add the :func:`config_columns` of ``recs`` to the flat ``rows`` (same order); returns their names."""
    cols = config_columns(recs)
    for row, rec in zip(rows, recs):
        for k, by_run in cols.items():
            row[k] = by_run.get(rec.get("run_id"))
    return list(cols)


def load_experiment(records_dir: str | os.PathLike, experiment: str) -> tuple[Any, list[dict]]:
    """``(df, records)``: one flat row per run (``flatten_record`` + ``path``) and the raw records.

    Raises :class:`ReportError` when the experiment has no records.
    """
    import pandas as pd

    from kdbench.records import flatten_record, iter_records

    root = _records_root(records_dir, experiment)
    recs: list[dict] = []
    rows: list[dict] = []
    if root.is_dir():
        for p, r in iter_records(root):
            if r.get("experiment") == experiment:
                recs.append(r)
                rows.append(flatten_record(r) | {"path": str(p)})
    if rows:
        add_config_columns(rows, recs)
    if not rows:
        found = experiments_under(_runs_root(records_dir, experiment))
        raise ReportError("experiment", f"no run records for experiment '{experiment}' under "
                                        f"{_runs_root(records_dir, experiment)} (found: {', '.join(found) or 'none'})")
    return pd.DataFrame(rows), recs


def _wandb_credentials() -> bool:
    from kdbench.train import _wandb_has_credentials

    return _wandb_has_credentials()


def load_wandb_runs(path: str, experiment: str, timeout: int = 30):
    """Runs of ``experiment`` (W&B group) in ``ENTITY/PROJECT`` as the same flat columns as the records.

    Only finished runs logged online are visible to the API; histories and reliability bins are not
    read, so tables can be built this way but not the plots.
    """
    import pandas as pd

    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "disabled", "dryrun"):
        raise ReportError("--from-wandb", f"reading the W&B API needs WANDB_MODE=online (it is '{mode}'); offline "
                                          "runs are invisible to the API: build the table from the local records")
    if "/" not in path:
        raise ReportError("--from-wandb", f"expected ENTITY/PROJECT, got '{path}'")
    if not _wandb_credentials():
        raise ReportError("--from-wandb", "no W&B credentials (run `wandb login` or set WANDB_API_KEY)")
    try:
        import wandb

        runs = list(wandb.Api(timeout=timeout).runs(path, filters={"group": experiment}))
    except Exception as e:  # network, auth, unknown project: one line
        raise ReportError("--from-wandb", f"cannot read runs of {path}: {type(e).__name__}: "
                                          f"{(str(e).splitlines() or [''])[0][:200]}") from None
    rows = []
    for run in runs:
        cfg = dict(run.config or {})
        summ = dict(run.summary or {})
        distill = cfg.get("distill") or {}
        done = run.state == "finished" and summ.get("final/last_acc") is not None
        row: dict[str, Any] = {
            "run_id": cfg.get("run_id") or run.name or run.id, "experiment": run.group or experiment,
            "variant": distill.get("variant"), "seed": cfg.get("seed"),
            "status": "complete" if done else ("running" if run.state == "running" else "failed"),
            "error": None if done else f"W&B state: {run.state}",
            "dataset": (cfg.get("dataset") or {}).get("name"), "teacher_arch": (cfg.get("teacher") or {}).get("arch"),
            "student_arch": (cfg.get("student") or {}).get("arch"),
        }
        row.update({f"distill_{k}": v for k, v in distill.items()})
        for k, v in summ.items():
            m = re.fullmatch(r"final/(last|best)_(\w+)", k)
            if m:
                row[f"{m[1]}_test_{m[2]}"] = v
            elif k.startswith("teacher/"):
                row[f"teacher_test_{k[8:]}"] = v
        rows.append(row)
    if not rows:
        raise ReportError("--from-wandb", f"no W&B runs in group '{experiment}' of {path}")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _key(v: Any) -> Any:
    """A hashable, NaN-free group key value."""
    if v is None:
        return None
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _sort_key(key: tuple, group_cols: Sequence[str]) -> tuple:
    out: list = []
    for c, v in zip(group_cols, key):
        if c == "variant":
            out.append((_VARIANT_ORDER.get(v, 2), str(v)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((0, float(v), ""))
        else:
            out.append((1 if v is not None else 2, 0.0, str(v)))
    return tuple(out)


def summarize(df, group_cols: Sequence[str] = ("variant",), metrics: Sequence[str] | None = None):
    """Mean and std (ddof=1) over seeds of each metric, per group; completed runs only.

    One row per group (groups with only failed runs included, with ``n == 0``); columns are the
    group columns, ``n`` (completed runs), ``n_failed`` (runs of any other status), ``<metric>_mean``,
    ``<metric>_std`` (NaN for n < 2) and ``teacher_test_acc_mean``. Values stay fractions.
    """
    import pandas as pd

    group_cols = list(group_cols)
    metrics = list(metrics or DEFAULT_METRICS)
    rows_in = df.to_dict("records") if df is not None and len(df) else []
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows_in:
        key = tuple(_key(r.get(c)) for c in group_cols)
        g = groups.setdefault(key, {"complete": [], "other": []})
        g["complete" if r.get("status") == "complete" else "other"].append(r)
    out = []
    for key in sorted(groups, key=lambda k: _sort_key(k, group_cols)):
        g = groups[key]
        row: dict[str, Any] = dict(zip(group_cols, key))
        row["n"] = len(g["complete"])
        row["n_failed"] = len(g["other"])
        for m in [*metrics, "teacher_test_acc"]:
            vals = [x for x in (_num(r.get(m)) for r in g["complete"]) if not math.isnan(x)]
            row[f"{m}_mean"] = statistics.mean(vals) if vals else math.nan
            if m != "teacher_test_acc":
                row[f"{m}_std"] = statistics.stdev(vals) if len(vals) >= 2 else math.nan
        out.append(row)
    cols = [*group_cols, "n", "n_failed", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")],
            "teacher_test_acc_mean"]
    summary = pd.DataFrame(out, columns=cols)
    for c in ("n", "n_failed"):
        summary[c] = summary[c].astype(int)
    summary.attrs["group_cols"] = group_cols
    summary.attrs["metrics"] = metrics
    return summary


def _select(summary, sel: str | Mapping[str, Any]):
    """Boolean mask of the rows matching a variant name or a {column: value} mapping."""
    if isinstance(sel, str):
        sel = {"variant": sel}
    mask = [True] * len(summary)
    for c, want in sel.items():
        if c not in summary.columns:
            return [False] * len(summary)
        for i, v in enumerate(summary[c].tolist()):
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                ok = not math.isnan(_num(v)) and math.isclose(_num(v), float(want), rel_tol=1e-9, abs_tol=1e-12)
            else:
                ok = v == want
            mask[i] = mask[i] and ok
    return mask


def _reference_acc(summary, sel, col: str = "last_test_acc_mean") -> float:
    """The mean accuracy of the one completed group matching ``sel``; NaN if none or ambiguous."""
    if sel is None:
        return math.nan
    vals = [_num(v) for v, m, n in zip(summary[col].tolist(), _select(summary, sel), summary["n"].tolist())
            if m and n > 0]
    return vals[0] if len(vals) == 1 else math.nan


def add_deltas(summary, baseline: str | Mapping[str, Any] | None = "kd", scratch: str | Mapping[str, Any] | None = "scratch",
               teacher_acc: float | None = None):
    """Add ``delta_vs_kd``, ``delta_vs_scratch`` (pp of mean top-1 last) and ``teacher_kept`` (%).

    ``teacher_kept = (student - scratch) / (teacher - scratch) * 100``: the share of the
    teacher's lead over the from-scratch student that distillation recovers. ``baseline`` and
    ``scratch`` name a variant, or a ``{column: value}`` mapping for grids; a reference that
    matches no completed group, or several, gives NaN. ``teacher_acc`` is a fraction (a value
    above 1 is read as %); when None it is the mean ``teacher_test_acc`` of the baseline's runs
    (all runs with a teacher if the baseline has none).
    """
    extra = [c for c in summary.attrs.get("group_cols") or () if "." in str(c)]
    if extra and len(summary):
        # one comparison per configuration (e.g. per teacher or per student width): each row is
        # compared with the KD and scratch groups that share its config-column values
        import pandas as pd

        keys = [tuple(_key(v) for v in row) for row in summary[extra].itertuples(index=False, name=None)]
        parts = []
        for k in dict.fromkeys(keys):
            sub = summary[[kk == k for kk in keys]].copy()
            sub.attrs.update(summary.attrs, group_cols=[c for c in summary.attrs["group_cols"] if c not in extra])
            parts.append(add_deltas(sub, baseline, scratch, teacher_acc))
        s = pd.concat(parts).loc[summary.index]
        s.attrs.update(summary.attrs)
        for a in ("teacher_acc", "baseline_acc", "scratch_acc"):
            # a table-wide value only when every configuration has the same one (e.g. one teacher)
            vals = {_num(p.attrs.get(a)) for p in parts}
            s.attrs[a] = vals.pop() if len(vals) == 1 else math.nan
        return s
    s = summary.copy()
    acc = s["last_test_acc_mean"].astype(float)
    kd = _reference_acc(s, baseline)
    sc = _reference_acc(s, scratch)
    if teacher_acc is None:
        t_col = s["teacher_test_acc_mean"].astype(float) if "teacher_test_acc_mean" in s else None
        teacher_acc = math.nan
        if t_col is not None:
            mask = _select(s, baseline) if baseline is not None else [False] * len(s)
            vals = [v for v, m in zip(t_col.tolist(), mask) if m and not math.isnan(v)]
            vals = vals or [v for v in t_col.tolist() if not math.isnan(v)]
            teacher_acc = statistics.mean(vals) if vals else math.nan
    else:
        teacher_acc = float(teacher_acc) / (100.0 if float(teacher_acc) > 1.0 else 1.0)
    s["delta_vs_kd"] = (acc - kd) * 100.0
    s["delta_vs_scratch"] = (acc - sc) * 100.0
    den = teacher_acc - sc
    s["teacher_kept"] = (acc - sc) / den * 100.0 if not math.isnan(den) and abs(den) > 1e-12 else math.nan
    s.attrs.update(summary.attrs)
    s.attrs.update(teacher_acc=teacher_acc, baseline_acc=kd, scratch_acc=sc)
    return s


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _fmt_num(v: Any) -> str:
    f = _num(v)
    if math.isnan(f):
        return "—" if v is None or isinstance(v, float) else str(v)
    return f"{f:g}"


def _pm(mean: float, std: float, scale: float, dec: int) -> str:
    if math.isnan(mean):
        return "—"
    std = 0.0 if math.isnan(std) else std
    return f"{mean * scale:.{dec}f} ± {std * scale:.{dec}f}"


def format_display(summary, group_cols: Sequence[str] | None = None):
    """The human table: one string cell per (group, metric), '97.31 ± 0.12'; all-empty columns dropped.

    ``attrs["columns"]`` maps each header to ``(summary column, "max"|"min"|None)``, for bolding.
    """
    import pandas as pd

    group_cols = list(group_cols or summary.attrs.get("group_cols") or ["variant"])
    metrics = [m for m in summary.attrs.get("metrics") or DEFAULT_METRICS if f"{m}_mean" in summary.columns]
    data: dict[str, list[str]] = {}
    colmap: dict[str, tuple[str | None, str | None]] = {}
    for c in group_cols:
        h = GROUP_HEADERS.get(c, c)
        data[h] = [str(v) if c == "variant" else _fmt_num(v) for v in summary[c].tolist()]
        colmap[h] = (None, None)
    data["n"] = [str(int(v)) for v in summary["n"].tolist()]
    colmap["n"] = ("n", None)
    ordered = [c for c in _DISPLAY_ORDER if c in metrics or c in DERIVED_SPEC]
    ordered += [m for m in metrics if m not in ordered]
    for c in ordered:
        if c in DERIVED_SPEC:
            if c not in summary.columns:
                continue
            header, better, dec = DERIVED_SPEC[c]
            vals = summary[c].astype(float).tolist()
            if all(math.isnan(v) for v in vals):
                continue
            sign = "+" if c.startswith("delta") else ""
            data[header] = ["—" if math.isnan(v) else f"{v:{sign}.{dec}f}" for v in vals]
            colmap[header] = (c, better)
            continue
        header, better, scale, dec = METRIC_SPEC.get(c, (c, None, 1.0, 4))
        means = summary[f"{c}_mean"].astype(float).tolist()
        stds = summary[f"{c}_std"].astype(float).tolist()
        if all(math.isnan(v) for v in means) and c not in ("last_test_acc", "best_test_acc"):
            continue
        data[header] = [_pm(m, s, scale, dec) for m, s in zip(means, stds)]
        colmap[header] = (f"{c}_mean", better)
    data["failed"] = [str(int(v)) for v in summary["n_failed"].tolist()]
    colmap["failed"] = ("n_failed", None)
    display = pd.DataFrame(data)
    display.attrs["columns"] = colmap
    display.attrs["group_cols"] = group_cols
    display.attrs["summary"] = summary.copy()
    display.attrs["teacher_acc"] = summary.attrs.get("teacher_acc", math.nan)
    return display


def _is_grid(df) -> bool:
    """Does some variant come with several (alpha, tau) settings?"""
    if df is None or not len(df) or "distill_alpha" not in df.columns or "distill_tau" not in df.columns:
        return False
    seen: dict[Any, set] = {}
    for v, a, t in zip(df["variant"].tolist(), df["distill_alpha"].tolist(), df["distill_tau"].tolist()):
        seen.setdefault(_key(v), set()).add((_key(a), _key(t)))
    return any(len(s) > 1 for s in seen.values())


def default_group_cols(df) -> tuple[str, ...]:
    """``variant``, then the config keys that tell runs of one variant apart (:func:`config_columns`,
    dotted names), then α and τ when some variant ran with several (α, τ) settings."""
    extra = [c for c in (df.columns if df is not None else []) if "." in str(c)]
    tail = GRID_COLS[1:] if _is_grid(df) else ()
    return ("variant", *extra, *tail)


def _failed_rows(df) -> list[dict]:
    if df is None or not len(df):
        return []
    out = []
    for r in df.to_dict("records"):
        if r.get("status") != "complete":
            err = r.get("error")
            first = (str(err).strip().splitlines() or [""])[0][:200] if err is not None and err == err else ""
            out.append({"run_id": r.get("run_id"), "variant": r.get("variant"), "seed": _key(r.get("seed")),
                        "status": r.get("status"), "error": first})
    return out


def _caption(df, experiment: str) -> str:
    def one(col):
        if col not in df.columns:
            return None
        vals = sorted({str(v) for v in df[col].tolist() if _key(v) is not None})
        return "/".join(vals) if vals else None

    teacher, student, data = one("teacher_arch"), one("student_arch"), one("dataset")
    parts = [experiment]
    if student:
        parts.append(f"{teacher} → {student}" if teacher else student)
    if data:
        parts.append(f"on {data}")
    return ": ".join(parts[:1] + [" ".join(parts[1:])]) if len(parts) > 1 else experiment


def build_table(records_dir: str | os.PathLike, experiment: str, group_cols: Sequence[str] | None = None,
                _frame=None):
    """``(summary_df, display_df)`` for one experiment's records under ``records_dir``.

    ``group_cols`` defaults to ``("variant",)``, or ``("variant", "distill_alpha", "distill_tau")``
    when a variant was run with several (alpha, tau) settings. ``display_df.attrs`` carries the
    numeric summary, the failed runs and a caption for :func:`write_tables`.
    """
    df = _frame if _frame is not None else load_experiment(records_dir, experiment)[0]
    if group_cols is None:
        group_cols = default_group_cols(df)
    summary = add_deltas(summarize(df, group_cols))
    display = format_display(summary, group_cols)
    display.attrs.update(failed=_failed_rows(df), experiment=experiment, caption=_caption(df, experiment))
    return summary, display


_TEX_REPL = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
             ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}")]
_TEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "α": r"$\alpha$", "τ": r"$\tau$", "‖": r"$\|$", "—": "--",
                "→": r"$\to$", "′": "'"}


def tex_escape(s: Any) -> str:
    """LaTeX-safe text (special characters escaped, the few Unicode symbols used here as math)."""
    s = str(s)
    out = []
    for ch in s:
        rep = next((r for c, r in _TEX_REPL if c == ch), None)
        out.append(rep if rep is not None else _TEX_UNICODE.get(ch, ch))
    return "".join(out)


def _leading_float(s: Any) -> float:
    m = re.match(r"\s*([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)", str(s))
    return float(m[1]) if m else math.nan


def best_mask(display_df, summary=None) -> list[list[bool]]:
    """Per cell: is it the best value of its column (max or min, ties all marked)?"""
    colmap = display_df.attrs.get("columns") or {}
    summary = summary if summary is not None else display_df.attrs.get("summary")
    mask = [[False] * len(display_df.columns) for _ in range(len(display_df))]
    for j, h in enumerate(display_df.columns):
        src, better = colmap.get(h, (None, None))
        if better is None:
            continue
        if summary is not None and src in getattr(summary, "columns", []) and len(summary) == len(display_df):
            vals = [_num(v) for v in summary[src].tolist()]
        else:
            vals = [_leading_float(v) for v in display_df[h].tolist()]
        ok = [v for v in vals if not math.isnan(v)]
        if len(ok) < 2:
            continue
        best = max(ok) if better == "max" else min(ok)
        for i, v in enumerate(vals):
            mask[i][j] = not math.isnan(v) and math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)
    return mask


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(display_df, caption: str, failed: list[dict] | None = None) -> str:
    import pandas as pd

    lines = [f"# {caption}", "", PROTOCOL_NOTE + "."]
    t = _num(display_df.attrs.get("teacher_acc"))
    extra = []
    if not math.isnan(t):
        extra.append(f"Teacher top-1: {100 * t:.2f}%.")
    cols = set(display_df.columns)
    if "Δ vs KD (pp)" in cols or "Δ vs scratch (pp)" in cols:
        extra.append("Δ: difference of mean top-1 last, in percentage points.")
    if "teacher kept (%)" in cols:
        extra.append("teacher kept = (student − scratch) / (teacher − scratch), top-1 last.")
    if "failed" in cols:
        extra.append("failed: runs of the group that did not complete (not in the means).")
    if extra:
        lines += ["", " ".join(extra)]
    body = display_df.map(_md_cell) if len(display_df) else display_df
    n_left = len(display_df.attrs.get("group_cols") or ["variant"])
    align = ["left" if j < n_left else "right" for j in range(len(body.columns))]
    lines += ["", body.to_markdown(index=False, disable_numparse=True, colalign=align), "", "## Failed runs", ""]
    if failed:
        fdf = pd.DataFrame(failed, columns=["run_id", "variant", "seed", "status", "error"]).astype(object)
        fdf = fdf.map(lambda v: "" if v is None else _md_cell(v))
        lines.append(fdf.to_markdown(index=False, disable_numparse=True))
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def render_latex(display_df, caption: str, summary=None, label: str | None = None) -> str:
    import pandas as pd

    tex = pd.DataFrame({tex_escape(c): [tex_escape(v) for v in display_df[c].tolist()] for c in display_df.columns})
    mask = best_mask(display_df, summary)
    css = pd.DataFrame([["textbf:--rwrap;" if b else "" for b in row] for row in mask],
                       index=tex.index, columns=tex.columns)
    styler = tex.style.hide(axis="index").apply(lambda _: css, axis=None)
    n_left = len(display_df.attrs.get("group_cols") or ["variant"])
    n_left = min(n_left, len(tex.columns))
    cap = tex_escape(caption) + ". " + tex_escape(PROTOCOL_NOTE) + "; best value per column in bold."
    return styler.to_latex(hrules=True, caption=cap, label=label, position_float="centering",
                           column_format="l" * n_left + "r" * (len(tex.columns) - n_left))


def write_tables(display_df, out_dir: str | os.PathLike, caption: str, summary=None,
                 failed: list[dict] | None = None) -> dict[str, Path]:
    """Write ``table.md``, ``table.tex`` and ``table.csv`` into ``out_dir``; return their paths.

    ``summary`` (numeric, for the CSV and for choosing the bold cells) and ``failed`` (rows for the
    "Failed runs" section) default to what :func:`build_table` left in ``display_df.attrs``.
    """
    from kdbench.records import atomic_write_text

    summary = summary if summary is not None else display_df.attrs.get("summary")
    failed = failed if failed is not None else display_df.attrs.get("failed") or []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exp = display_df.attrs.get("experiment") or out_dir.name
    label = "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", str(exp)).strip("-")
    paths = {"md": out_dir / "table.md", "tex": out_dir / "table.tex", "csv": out_dir / "table.csv"}
    atomic_write_text(paths["md"], render_markdown(display_df, caption, failed))
    atomic_write_text(paths["tex"], render_latex(display_df, caption, summary, label=label))
    csv_df = summary if summary is not None else display_df
    atomic_write_text(paths["csv"], csv_df.to_csv(index=False))
    return paths


def read_summary_csv(path: str | os.PathLike):
    """Read a ``table.csv`` back (floats exactly as written)."""
    import pandas as pd

    return pd.read_csv(path, float_precision="round_trip")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _as_runs(obj) -> list[tuple[dict, dict]]:
    """``[(flat_row, record)]`` from records, ``(path, record)`` pairs or a DataFrame of flat rows.

    A DataFrame needs ``history`` / ``reliability`` columns, or a ``path`` column to read them from.
    """
    from kdbench.records import flatten_record, read_record

    out: list[tuple[dict, dict]] = []
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        for r in obj.to_dict("records"):
            rec = {k: r.get(k) for k in ("history", "reliability")}
            if not isinstance(rec.get("history"), list) and r.get("path"):
                try:
                    rec = read_record(r["path"])
                except (OSError, ValueError):
                    rec = {}
            out.append((r, rec))
        return out
    for item in obj or []:
        rec = item[1] if isinstance(item, tuple) else item
        out.append((flatten_record(rec), rec))
    add_config_columns([row for row, _ in out], [rec for _, rec in out])
    return out


def _label(row: Mapping, group_cols: Sequence[str]) -> str:
    parts = [str(row.get("variant"))]
    for c in group_cols:
        if c != "variant":
            parts.append(f"{GROUP_HEADERS.get(c, c)}={_fmt_num(row.get(c))}")
    return " ".join(parts)


def _groups(runs, group_cols: Sequence[str] | None, complete_only: bool = True) -> tuple[dict[tuple, list], list[str]]:
    if group_cols is None:
        import pandas as pd

        group_cols = default_group_cols(pd.DataFrame([r for r, _ in runs]))
    gs: dict[tuple, list] = {}
    for row, rec in runs:
        if complete_only and row.get("status") != "complete":
            continue
        gs.setdefault(tuple(_key(row.get(c)) for c in group_cols), []).append((row, rec))
    return {k: gs[k] for k in sorted(gs, key=lambda k: _sort_key(k, group_cols))}, list(group_cols)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out_path)
    return out_path


def pool_reliability(bins: Iterable[Mapping]) -> dict[str, list[float]] | None:
    """Sum per-bin counts over runs; confidence and accuracy become count-weighted means; adds ``ece``."""
    bins = [b for b in bins if b and b.get("count")]
    if not bins:
        return None
    nb = len(bins[0]["count"])
    bins = [b for b in bins if len(b["count"]) == nb]
    count = [sum(float(b["count"][i]) for b in bins) for i in range(nb)]
    conf = [sum(float(b["count"][i]) * float(b["confidence"][i]) for b in bins) / count[i] if count[i] else 0.0
            for i in range(nb)]
    acc = [sum(float(b["count"][i]) * float(b["accuracy"][i]) for b in bins) / count[i] if count[i] else 0.0
           for i in range(nb)]
    edges = bins[0].get("edges") or [i / nb for i in range(nb + 1)]
    total = sum(count)
    ece = sum(c * abs(a - p) for c, a, p in zip(count, acc, conf)) / total if total else math.nan
    return {"edges": [float(e) for e in edges], "confidence": conf, "accuracy": acc, "count": count, "ece": ece,
            "runs": len(bins)}


def plot_reliability(records_df_or_records, out_path: str | os.PathLike, which: str = "last",
                     group_cols: Sequence[str] | None = None) -> Path | None:
    """Reliability diagrams, one subplot per variant (bins pooled over seeds); None without bins."""
    runs = _as_runs(records_df_or_records)
    groups, gcols = _groups(runs, group_cols)
    pooled = []
    for members in groups.values():
        p = pool_reliability(((rec.get("reliability") or {}).get(which) for _, rec in members))
        if p is not None:
            pooled.append((_label(members[0][0], gcols), p))
    if not pooled:
        return None
    ncols = min(4, len(pooled))
    nrows = math.ceil(len(pooled) / ncols)
    fig, axes = _figure(nrows, ncols, (3.6, 3.6))
    for ax in axes.flat[len(pooled):]:
        ax.set_visible(False)
    for ax, (label, p) in zip(axes.flat, pooled):
        edges = p["edges"]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
        ax.bar(edges[:-1], p["accuracy"], width=widths, align="edge", color="tab:blue", edgecolor="black",
               linewidth=0.5, label="accuracy")
        gap_bottom = [min(a, c) if n else 0 for a, c, n in zip(p["accuracy"], p["confidence"], p["count"])]
        gap = [abs(c - a) if n else 0 for a, c, n in zip(p["accuracy"], p["confidence"], p["count"])]
        ax.bar(edges[:-1], gap, bottom=gap_bottom, width=widths, align="edge", fill=False, hatch="///",
               edgecolor="tab:red", linewidth=0.5, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label} (n={p['runs']})\npooled ECE = {p['ece']:.4f}", fontsize=10)
    axes.flat[0].legend(loc="upper left", fontsize=7)
    epoch = "final epoch" if which == "last" else "best-validation epoch"
    fig.suptitle(f"Reliability on test, {epoch} (bins pooled over seeds)", fontsize=11)
    return _save(fig, out_path)


def plot_tau_curves(records_df_or_records, out_path: str | os.PathLike) -> Path | None:
    """Top-1 last (%) and ECE vs tau, one line per alpha (error bars: std over seeds); None if tau is fixed."""
    import pandas as pd

    runs = _as_runs(records_df_or_records)
    df = pd.DataFrame([r for r, _ in runs])
    if not len(df) or "distill_tau" not in df.columns:
        return None
    if "distill_alpha" not in df.columns:
        df["distill_alpha"] = None
    # one line per (variant, config columns, alpha): runs of different configurations never share a line
    line_cols = ["variant", *[c for c in df.columns if "." in str(c)]]
    s = summarize(df, (*line_cols, "distill_alpha", "distill_tau"), ["last_test_acc", "last_test_ece"])
    s = s[s["n"] > 0]
    line_of = [tuple(_key(v) for v in row) for row in s[line_cols].itertuples(index=False, name=None)]
    lines: list[tuple[str, list[tuple[float, float, float, float, float]]]] = []
    combos = [c for c in dict.fromkeys(line_of)
              if len({_key(t) for t, lc in zip(s["distill_tau"].tolist(), line_of) if lc == c} - {None}) > 1]
    if not combos:
        return None
    for combo in combos:
        sv = s[[lc == combo for lc in line_of]]
        for a in sorted({_key(x) for x in sv["distill_alpha"].tolist()}, key=lambda x: (x is None, _num(x))):
            sa = sv[[_key(x) == a for x in sv["distill_alpha"].tolist()]]
            pts = sorted((_num(r["distill_tau"]), r["last_test_acc_mean"] * 100, _nz(r["last_test_acc_std"]) * 100,
                          r["last_test_ece_mean"], _nz(r["last_test_ece_std"]))
                         for r in sa.to_dict("records") if not math.isnan(_num(r["distill_tau"])))
            tag = " ".join([str(combo[0])] + [f"{c}={_fmt_num(v)}" for c, v in zip(line_cols[1:], combo[1:])])
            name = f"α={_fmt_num(a)}" + (f" ({tag})" if len(combos) > 1 else "")
            lines.append((name, pts))
    fig, axes = _figure(1, 2, (5.0, 3.8))
    taus = sorted({p[0] for _, pts in lines for p in pts})
    for name, pts in lines:
        x = [p[0] for p in pts]
        axes[0][0].errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=name)
        axes[0][1].errorbar(x, [p[3] for p in pts], yerr=[p[4] for p in pts], marker="o", capsize=3, label=name)
    for ax, yl, title in ((axes[0][0], "top-1 last (%)", "Test accuracy vs temperature"),
                          (axes[0][1], "ECE last", "Test ECE vs temperature")):
        ax.set_xlabel("temperature τ")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.set_xticks(taus)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("mean ± std over seeds, final epoch", fontsize=10)
    return _save(fig, out_path)


def _nz(v: Any) -> float:
    f = _num(v)
    return 0.0 if math.isnan(f) else f


def plot_learning_curves(records_df_or_records, out_path: str | os.PathLike, metric: str = "val_acc",
                         group_cols: Sequence[str] | None = None) -> Path | None:
    """Validation accuracy (%) per epoch, mean over seeds per variant (band: ± std); None without history."""
    runs = _as_runs(records_df_or_records)
    groups, gcols = _groups(runs, group_cols)
    curves = []
    for members in groups.values():
        per_epoch: dict[int, list[float]] = {}
        for _, rec in members:
            for h in rec.get("history") or []:
                if h.get("epoch") is not None and not math.isnan(_num(h.get(metric))):
                    per_epoch.setdefault(int(h["epoch"]), []).append(_num(h[metric]))
        if per_epoch:
            ep = sorted(per_epoch)
            scale = 100.0 if metric.endswith("acc") else 1.0
            mean = [statistics.mean(per_epoch[e]) * scale for e in ep]
            std = [(statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0) * scale for e in ep]
            curves.append((_label(members[0][0], gcols), len(members), ep, mean, std))
    if not curves:
        return None
    fig, axes = _figure(1, 1, (6.5, 4.2))
    ax = axes[0][0]
    for label, n, ep, mean, std in curves:
        (line,) = ax.plot(ep, mean, marker="." if len(ep) < 30 else None, label=f"{label} (n={n})")
        ax.fill_between(ep, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)" if metric == "val_acc" else metric)
    ax.set_title("Learning curves (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _log_wandb(experiment: str, out_dir: Path, display, summary, plots: dict[str, Path]) -> str | None:
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "online" and not _wandb_credentials():
        print("kdbench-report: warning: WANDB_MODE=online but no W&B credentials: logging offline", file=sys.stderr)
        mode = "offline"
    wdir = out_dir.parent
    wdir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "kdbench"), entity=os.environ.get("WANDB_ENTITY"),
                     group=experiment, job_type="report", name=f"report-{experiment}", mode=mode, dir=str(wdir),
                     reinit="create_new", settings=wandb.Settings(console="off", silent=True))
    try:
        clean = summary.astype(object).where(summary.notna(), None)
        payload: dict[str, Any] = {"report/table": wandb.Table(dataframe=display.astype(str)),
                                   "report/summary": wandb.Table(dataframe=clean)}
        payload.update({f"report/{k}": wandb.Image(str(p)) for k, p in plots.items()})
        run.log(payload)
        run_dir = getattr(run, "dir", None)
    finally:
        run.finish()
    return run_dir


def make_report(records_dir: str | os.PathLike, experiment: str, out_dir: str | os.PathLike | None = None,
                wandb_log: bool = False, group_cols: Sequence[str] | None = None, _frame=None) -> dict:
    """Tables and plots of one experiment into ``out_dir`` (default ``<results>/<experiment>``).

    Returns ``{"out_dir", "tables": {md, tex, csv}, "plots": {name: path}, "markdown", "display",
    "summary"}``; nothing is written when the experiment has no records (:class:`ReportError`).
    """
    if _frame is not None:
        df, recs = _frame, None
    else:
        df, recs = load_experiment(records_dir, experiment)
    summary, display = build_table(records_dir, experiment, group_cols, _frame=df)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(records_dir, experiment)
    caption = display.attrs.get("caption") or experiment
    tables = write_tables(display, out_dir, caption, summary=summary)
    gcols = display.attrs.get("group_cols")
    plots: dict[str, Path] = {}
    if recs is not None:
        for name, fn in (("reliability", lambda p: plot_reliability(recs, p, group_cols=gcols)),
                         ("learning_curves", lambda p: plot_learning_curves(recs, p, group_cols=gcols)),
                         ("tau_curves", lambda p: plot_tau_curves(recs, p))):
            path = fn(out_dir / f"{name}.png")
            if path is not None:
                plots[name] = path
    result = {"out_dir": out_dir, "tables": tables, "plots": plots, "markdown": tables["md"].read_text(),
              "display": display, "summary": summary, "wandb_dir": None}
    if wandb_log:
        result["wandb_dir"] = _log_wandb(experiment, out_dir, display, summary, plots)
    return result


def main(argv: list[str] | None = None) -> int:
    """``kdbench-report``: rebuild tables and plots from run records (or from W&B with --from-wandb)."""
    ap = argparse.ArgumentParser(
        prog="kdbench-report",
        description="Paper-style tables (md, tex, csv) and plots from kdbench run records. " + PROTOCOL_NOTE + ".")
    ap.add_argument("--experiment", "-e", help="experiment name (records in <records>/<experiment>/*.json)")
    ap.add_argument("--all", action="store_true", help="report every experiment found under --records")
    ap.add_argument("--results", default="results", help="results directory (default: results)")
    ap.add_argument("--records", help="runs directory holding <experiment>/*.json (default: <results>/runs)")
    ap.add_argument("--out", help="output directory (default: <results>/<experiment>)")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the figures and tables to a W&B run (WANDB_MODE, default offline)")
    ap.add_argument("--from-wandb", metavar="ENTITY/PROJECT",
                    help="read finished runs from the W&B API instead of local records (online only; tables only)")
    ap.add_argument("--print", dest="print_table", action=argparse.BooleanOptionalAction, default=True,
                    help="print the markdown table (default: on)")
    args = ap.parse_args(argv)
    if not args.experiment and not args.all:
        ap.error("--experiment NAME is required (or --all)")
    if args.all and args.experiment:
        ap.error("--experiment and --all are exclusive")
    if args.all and args.out:
        ap.error("--out cannot be used with --all (each experiment goes to <results>/<experiment>)")
    if args.from_wandb and args.all:
        ap.error("--from-wandb needs --experiment")
    records = Path(args.records) if args.records else Path(args.results) / "runs"
    try:
        if args.all:
            experiments = experiments_under(records)
            if not experiments:
                raise ReportError("--all", f"no run records under {records}")
        else:
            experiments = [args.experiment]
        for exp in experiments:
            frame = load_wandb_runs(args.from_wandb, exp) if args.from_wandb else None
            out_dir = Path(args.out) if args.out else (
                Path(args.results) / exp if not args.records else default_out_dir(records, exp))
            res = make_report(records, exp, out_dir=out_dir, wandb_log=args.wandb, _frame=frame)
            if args.print_table:
                print(res["markdown"])
            print(f"kdbench-report: {exp}: wrote {', '.join(str(p) for p in [*res['tables'].values(), *res['plots'].values()])}",
                  file=sys.stderr)
    except KDBenchError as e:
        print(f"kdbench-report: error: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
