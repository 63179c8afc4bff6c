"""Figures from run records: reliability diagrams, accuracy/ECE vs τ, learning curves.

Every figure is a plain :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot state, safe
in a process that also trains) and is saved through :func:`save_figure`: an atomic write via a
``mkstemp`` file in the target folder, so concurrent reports never share a temporary file and a
symlink planted in the folder is never followed.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.report.frame import (
    add_config_columns,
    default_group_cols,
    group_key,
    group_sort_key,
    summarize,
    to_float,
)
from kdbench.report.tables import GROUP_HEADERS, fmt_num

__all__ = ["as_runs", "run_label", "run_groups", "new_figure", "save_figure", "pool_reliability",
           "plot_reliability", "plot_tau_curves", "plot_learning_curves"]


def as_runs(obj) -> list[tuple[dict, dict]]:
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


def run_label(row: Mapping, group_cols: Sequence[str]) -> str:
    """``kd α=0.1 τ=4``: the variant and the other group columns of a run."""
    parts = [str(row.get("variant"))]
    for c in group_cols:
        if c != "variant":
            parts.append(f"{GROUP_HEADERS.get(c, c)}={fmt_num(row.get(c))}")
    return " ".join(parts)


def run_groups(runs, group_cols: Sequence[str] | None,
               complete_only: bool = True) -> tuple[dict[tuple, list], list[str]]:
    """The runs grouped as the table groups them (in table order), and the group columns used."""
    if group_cols is None:
        import pandas as pd

        group_cols = default_group_cols(pd.DataFrame([r for r, _ in runs]))
    gs: dict[tuple, list] = {}
    for row, rec in runs:
        if complete_only and row.get("status") != "complete":
            continue
        gs.setdefault(tuple(group_key(row.get(c)) for c in group_cols), []).append((row, rec))
    return {k: gs[k] for k in sorted(gs, key=lambda k: group_sort_key(k, group_cols))}, list(group_cols)


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0)):
    """``(fig, axes)``: a constrained-layout Figure on an Agg canvas, ``size`` per subplot, axes 2-D."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, out_path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``out_path`` atomically (:func:`kdbench.files.atomic_write`)."""
    from kdbench.files import atomic_write

    return atomic_write(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


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
    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    pooled = []
    for members in groups.values():
        p = pool_reliability(((rec.get("reliability") or {}).get(which) for _, rec in members))
        if p is not None:
            eces = [((rec.get("metrics") or {}).get(which) or {}).get("test", {}).get("ece") for _, rec in members]
            eces = [float(e) for e in eces if isinstance(e, (int, float)) and not math.isnan(e)]
            p = {**p, "table_ece": sum(eces) / len(eces) if eces else math.nan}
            pooled.append((run_label(members[0][0], gcols), p))
    if not pooled:
        return None
    ncols = min(4, len(pooled))
    nrows = math.ceil(len(pooled) / ncols)
    fig, axes = new_figure(nrows, ncols, (3.6, 3.6))
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
        for x, w, a, n in zip(edges[:-1], widths, p["accuracy"], p["count"]):
            if n:  # how many test predictions each bin holds
                ax.text(x + w / 2, min(a, 0.97) + 0.01, f"{int(n)}", ha="center", va="bottom", fontsize=5, rotation=90)
        # the table's ECE (mean over seeds of each run's ECE) first; the pooled bins' own ECE beside it
        ax.set_title(f"{label} (n={p['runs']})\nECE {p['table_ece']:.4f} (mean of runs); pooled bins {p['ece']:.4f}",
                     fontsize=9)
    axes.flat[0].legend(loc="upper left", fontsize=7)
    epoch = "final epoch" if which == "last" else "best-validation epoch"
    fig.suptitle(f"Reliability on test, {epoch} (bins pooled over seeds)", fontsize=11)
    return save_figure(fig, out_path)


def _nz(v: Any) -> float:
    f = to_float(v)
    return 0.0 if math.isnan(f) else f


def plot_tau_curves(records_df_or_records, out_path: str | os.PathLike) -> Path | None:
    """Top-1 last (%) and ECE vs tau, one line per alpha (error bars: std over seeds); None if tau is fixed."""
    import pandas as pd

    runs = as_runs(records_df_or_records)
    df = pd.DataFrame([r for r, _ in runs])
    if not len(df) or "distill_tau" not in df.columns:
        return None
    if "distill_alpha" not in df.columns:
        df["distill_alpha"] = None
    # one line per (variant, config columns, alpha): runs of different configurations never share a line
    line_cols = ["variant", *[c for c in df.columns if "." in str(c)]]
    s = summarize(df, (*line_cols, "distill_alpha", "distill_tau"), ["last_test_acc", "last_test_ece"]).table
    s = s[s["n"] > 0]
    line_of = [tuple(group_key(v) for v in row) for row in s[line_cols].itertuples(index=False, name=None)]
    lines: list[tuple[str, list[tuple[float, float, float, float, float]]]] = []
    combos = [c for c in dict.fromkeys(line_of)
              if len({group_key(t) for t, lc in zip(s["distill_tau"].tolist(), line_of) if lc == c} - {None}) > 1]
    if not combos:
        return None
    for combo in combos:
        sv = s[[lc == combo for lc in line_of]]
        for a in sorted({group_key(x) for x in sv["distill_alpha"].tolist()}, key=lambda x: (x is None, to_float(x))):
            sa = sv[[group_key(x) == a for x in sv["distill_alpha"].tolist()]]
            pts = sorted((to_float(r["distill_tau"]), r["last_test_acc_mean"] * 100, _nz(r["last_test_acc_std"]) * 100,
                          r["last_test_ece_mean"], _nz(r["last_test_ece_std"]))
                         for r in sa.to_dict("records") if not math.isnan(to_float(r["distill_tau"])))
            tag = " ".join([str(combo[0])] + [f"{c}={fmt_num(v)}" for c, v in zip(line_cols[1:], combo[1:])])
            name = f"α={fmt_num(a)}" + (f" ({tag})" if len(combos) > 1 else "")
            lines.append((name, pts))
    fig, axes = new_figure(1, 2, (5.0, 3.8))
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
    return save_figure(fig, out_path)


def plot_learning_curves(records_df_or_records, out_path: str | os.PathLike, metric: str = "val_acc",
                         group_cols: Sequence[str] | None = None) -> Path | None:
    """Validation accuracy (%) per epoch, mean over seeds per variant (band: ± std); None without history."""
    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    curves = []
    for members in groups.values():
        per_epoch: dict[int, list[float]] = {}
        for _, rec in members:
            for h in rec.get("history") or []:
                if h.get("epoch") is not None and not math.isnan(to_float(h.get(metric))):
                    per_epoch.setdefault(int(h["epoch"]), []).append(to_float(h[metric]))
        if per_epoch:
            ep = sorted(per_epoch)
            scale = 100.0 if metric.endswith("acc") else 1.0
            mean = [statistics.mean(per_epoch[e]) * scale for e in ep]
            std = [(statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0) * scale for e in ep]
            curves.append((run_label(members[0][0], gcols), len(members), ep, mean, std))
    if not curves:
        return None
    fig, axes = new_figure(1, 1, (6.5, 4.2))
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
    return save_figure(fig, out_path)


def _per_group(records_df_or_records, group_cols, metric: str) -> list[tuple[str, list[tuple[Any, float]]]]:
    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    out = []
    for members in groups.values():
        vals = [(row.get("seed"), to_float(row.get(metric))) for row, _ in members]
        vals = [(s, v) for s, v in vals if not math.isnan(v)]
        if vals:
            out.append((run_label(members[0][0], gcols), vals))
    return out


def plot_seed_bars(records_df_or_records, out_path: str | os.PathLike, metric: str = "last_test_acc",
                   group_cols: Sequence[str] | None = None) -> Path | None:
    """One bar per variant (mean over seeds, ± std) with every seed's value as a dot on it."""
    groups = _per_group(records_df_or_records, group_cols, metric)
    if not groups:
        return None
    scale = 100.0 if metric.endswith("acc") else 1.0
    fig, axes = new_figure(1, 1, (max(4.5, 0.8 * len(groups) + 2), 4.0))
    ax = axes[0][0]
    for i, (_label, vals) in enumerate(groups):
        ys = [v * scale for _, v in vals]
        mean = statistics.mean(ys)
        std = statistics.stdev(ys) if len(ys) > 1 else 0.0
        ax.bar(i, mean, yerr=std, color="tab:blue", alpha=0.35, capsize=4, edgecolor="tab:blue")
        ax.scatter([i + (j - (len(ys) - 1) / 2) * 0.08 for j in range(len(ys))], ys, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], rotation=30, ha="right", fontsize=8)
    lo = min(v * scale for _, vals in groups for _, v in vals)
    hi = max(v * scale for _, vals in groups for _, v in vals)
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("test top-1, last epoch (%)" if metric == "last_test_acc" else metric)
    ax.set_title("Per variant: mean ± std over seeds, one dot per seed")
    ax.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, out_path)


def plot_acc_vs_ece(records_df_or_records, out_path: str | os.PathLike,
                    group_cols: Sequence[str] | None = None) -> Path | None:
    """Accuracy against calibration error per variant (mean over seeds, error bars ± std)."""
    acc = dict(_per_group(records_df_or_records, group_cols, "last_test_acc"))
    ece = dict(_per_group(records_df_or_records, group_cols, "last_test_ece"))
    labels = [k for k in acc if k in ece]
    if not labels:
        return None
    fig, axes = new_figure(1, 1, (6.0, 4.5))
    ax = axes[0][0]
    for label in labels:
        a = [v * 100 for _, v in acc[label]]
        e = [v for _, v in ece[label]]
        ax.errorbar(statistics.mean(e), statistics.mean(a), xerr=statistics.stdev(e) if len(e) > 1 else 0,
                    yerr=statistics.stdev(a) if len(a) > 1 else 0, fmt="o", capsize=3, label=label)
    ax.set_xlabel("ECE, last epoch (lower is better)")
    ax.set_ylabel("test top-1, last epoch (%)")
    ax.set_title("Accuracy vs calibration (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out_path)
