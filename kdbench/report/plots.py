"""Figures from run records: reliability diagrams, accuracy/ECE vs τ, learning curves, top-1 per variant.

Every figure is a plain :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot state, safe
in a process that also trains) and is saved through :func:`save_figure`: an atomic write via a
``mkstemp`` file in the target folder, so concurrent reports never share a temporary file and a
symlink planted in the folder is never followed. Every string that comes from a record (variant
names, config values) goes through :func:`plain`: it is drawn as text, never parsed as mathtext.
The teacher the runs distilled from (:func:`teachers_of`) is a reference line on the accuracy plots.
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
    add_deltas,
    default_group_cols,
    group_key,
    group_sort_key,
    summarize,
    to_float,
)
from kdbench.report.tables import GROUP_HEADERS, fmt_num, short_header, short_values, telling_apart

__all__ = ["as_runs", "run_label", "run_groups", "new_figure", "save_figure", "pool_reliability", "plain",
           "teachers_of", "teacher_name", "short_cells", "columns_apart", "group_labels", "reliability_figure", "learning_curves_figure", "seed_bars_figure",
           "plot_reliability", "plot_tau_curves", "plot_learning_curves", "plot_seed_bars", "plot_acc_vs_ece",
           "SMALL_MULTIPLES_AFTER"]

#: more distilled curves than this and the learning curves become small multiples (one panel per variant)
SMALL_MULTIPLES_AFTER = 3
_SCRATCH_COLOR, _RUN_COLOR, _TEACHER_COLOR = "0.45", "tab:blue", "tab:purple"


def plain(s: Any) -> str:
    """``s`` as plain text for matplotlib: every ``$`` escaped, so a record's string (``a$\\frac{$b``)
    is drawn as written and never parsed as mathtext."""
    return str(s).replace("$", r"\$")


def _records_of(obj) -> list[Mapping]:
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):
        return [rec for _, rec in as_runs(obj)]
    return [item[1] if isinstance(item, tuple) else item for item in obj or []]


def teachers_of(records) -> list[dict]:
    """The teachers the completed distilling runs used, one entry per registry key:
    ``{key, name, arch, acc, ece, runs, changed}`` (``acc``, ``ece``: fractions, NaN when not measured).

    The registry's test figures when a record carries them (``teacher.registry_test``), else the figures
    re-measured by the runs that left the teacher unchanged (no ``teacher_grad``, no ``teacher_train_mode``).
    ``changed`` maps each variant whose re-measured teacher differs from those (a teacher trained by the
    run) to its re-measured accuracies.
    """
    by_key: dict[str, dict] = {}
    for r in _records_of(records):
        t = r.get("teacher") if isinstance(r, Mapping) and r.get("status") == "complete" else None
        if not isinstance(t, Mapping):
            continue
        key = str(t.get("key") or t.get("name") or t.get("arch"))
        e = by_key.setdefault(key, {"key": t.get("key"), "name": t.get("name"), "arch": t.get("arch") or r.get("teacher_arch"),
                                    "registry": [], "kept": [], "all": [], "runs": 0})
        e["runs"] += 1
        d = r.get("distill") if isinstance(r.get("distill"), Mapping) else {}
        test = t.get("test") if isinstance(t.get("test"), Mapping) else {}
        reg = t.get("registry_test") if isinstance(t.get("registry_test"), Mapping) else None
        m = (to_float(test.get("acc"), finite=True), to_float(test.get("ece"), finite=True))
        e["all"].append((r.get("variant"), *m))
        if reg is not None:
            e["registry"].append((to_float(reg.get("acc"), finite=True), to_float(reg.get("ece"), finite=True)))
        if not (d.get("teacher_grad") or d.get("teacher_train_mode")):
            e["kept"].append(m)
    out = []
    for e in by_key.values():
        src = e["registry"] or e["kept"] or [(a, c) for _, a, c in e["all"]]
        accs = [a for a, _ in src if not math.isnan(a)]
        eces = [c for _, c in src if not math.isnan(c)]
        acc = statistics.mean(accs) if accs else math.nan
        changed: dict[str, list[float]] = {}
        if not math.isnan(acc):
            for v, a, _ in e["all"]:
                if not math.isnan(a) and abs(a - acc) > 5e-4:
                    changed.setdefault(str(v), []).append(a)
        out.append({"key": e["key"], "name": e["name"], "arch": e["arch"], "acc": acc,
                    "ece": statistics.mean(eces) if eces else math.nan, "runs": e["runs"], "changed": changed})
    return sorted(out, key=lambda t: (str(t["arch"]), str(t["name"])))


def _teacher_lines(records, scale: float = 100.0, shift: float = 0.0) -> list[tuple[str, float]]:
    """``[(legend label, y)]`` of the teachers with a measured accuracy (at most three)."""
    ts = [t for t in teachers_of(records) if not math.isnan(t["acc"])]
    if len(ts) > 3:
        return []
    return [(plain(f"teacher {teacher_name(t, ts)}, test top-1 {t['acc'] * 100:.2f} %"), t["acc"] * scale - shift)
            for t in ts]


def teacher_name(t: Mapping, among: Sequence[Mapping]) -> str:
    """A teacher's architecture, or its registry name when another teacher in ``among`` shares the architecture."""
    same = sum(o["arch"] == t["arch"] for o in among) > 1
    return str(t["name"] or t["key"]) if same and (t["name"] or t["key"]) else str(t["arch"])


def _draw_teachers(ax, lines: Sequence[tuple[str, float]]) -> list:
    handles = []
    for i, (label, y) in enumerate(lines):
        h = ax.axhline(y, color=_TEACHER_COLOR, linestyle=(0, (5, 2 + i)), linewidth=1.2, label=label, zorder=1)
        handles.append(h)
    return handles


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


def short_cells(keys: Sequence[tuple], group_cols: Sequence[str]) -> dict[int, list[str | None]]:
    """Per non-variant group column (index): each key's value as short text (:func:`tables.short_values`), None
    where the key lacks it."""
    keys = list(keys)
    out = {}
    for i, c in enumerate(group_cols):
        if c != "variant":
            col = [k[i] for k in keys]
            out[i] = [None if group_key(v) is None else t for v, t in zip(col, short_values(col), strict=True)]
    return out


def columns_apart(keys: Sequence[tuple], group_cols: Sequence[str]) -> list[int]:
    """The non-variant group columns (indices into ``group_cols``) needed to tell ``keys`` apart
    (:func:`tables.telling_apart` over :func:`short_cells`)."""
    keys = list(keys)
    cells = short_cells(keys, group_cols)
    vi = list(group_cols).index("variant") if "variant" in group_cols else None
    idx = list(cells)
    keep = telling_apart([k[vi] if vi is not None else None for k in keys], [cells[i] for i in idx])
    return [idx[j] for j in keep]


def group_labels(keys: Sequence[tuple], group_cols: Sequence[str]) -> dict[tuple, str]:
    """Short labels of a figure's groups: the variant, then only the group columns that tell the groups apart
    (:func:`columns_apart`), as ``short_header=value``; a column a group lacks is left out of its label (a bare
    variant beside others of its name says what it has). ``run_label`` is the long form."""
    keys = list(keys)
    cells = short_cells(keys, group_cols)
    keep = columns_apart(keys, group_cols)
    vi = list(group_cols).index("variant") if "variant" in group_cols else None
    out = {}
    for j, k in enumerate(keys):
        parts = [str(k[vi])] if vi is not None else []
        shown = [i for i in keep if cells[i][j] is not None]
        if not shown and vi is not None and sum(kk[vi] == k[vi] for kk in keys) > 1:
            shown = [i for i in cells if cells[i][j] is not None]  # bare "kd" beside "kd k=1": say what it has
        parts += [f"{short_header(group_cols[i], group_cols)}={cells[i][j]}" for i in shown]
        out[k] = " ".join(parts)
    return out


def _is_scratch(row: Mapping) -> bool:
    return str(row.get("variant")) == "scratch"


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


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.0, 4.0), **subplots):
    """``(fig, axes)``: a constrained-layout Figure on an Agg canvas, ``size`` per subplot, axes 2-D
    (``subplots``: e.g. ``sharey=True``, passed to :meth:`~matplotlib.figure.Figure.subplots`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
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


def reliability_figure(records_df_or_records, which: str = "last", group_cols: Sequence[str] | None = None):
    """The reliability diagrams as a Figure, one subplot per variant (bins pooled over seeds; each bin's
    number of test predictions on a top axis, under the subplot's title); None without bins."""
    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    pooled = []
    labels = group_labels(list(groups), gcols)
    for key, members in groups.items():
        p = pool_reliability(((rec.get("reliability") or {}).get(which) for _, rec in members))
        if p is not None:
            eces = [((rec.get("metrics") or {}).get(which) or {}).get("test", {}).get("ece") for _, rec in members]
            eces = [float(e) for e in eces if isinstance(e, (int, float)) and not math.isnan(e)]
            p = {**p, "table_ece": sum(eces) / len(eces) if eces else math.nan}
            pooled.append((labels[key], p))
    if not pooled:
        return None
    ncols = min(4, len(pooled))
    nrows = math.ceil(len(pooled) / ncols)
    fig, axes = new_figure(nrows, ncols, (3.6, 3.9))
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
        # how many test predictions each bin holds: tick labels of a top axis, which the layout keeps
        # clear of the title (text drawn inside the axes ran into it)
        filled = [(x + w / 2, int(n)) for x, w, n in zip(edges[:-1], widths, p["count"]) if n]
        top = ax.secondary_xaxis("top")
        top.set_xticks([x for x, _ in filled], [str(n) for _, n in filled], rotation=90, fontsize=5)
        top.tick_params(axis="x", length=2, pad=1)
        top.set_xlabel("test predictions per bin", fontsize=6, labelpad=2)
        # the table's ECE (mean over seeds of each run's ECE) first; the pooled bins' own ECE beside it
        ax.set_title(plain(f"{label} (n={p['runs']})") + f"\nECE {p['table_ece']:.4f} (mean of runs); "
                     f"pooled bins {p['ece']:.4f}", fontsize=8)
    axes.flat[0].legend(loc="upper left", fontsize=6)
    epoch = "final epoch" if which == "last" else "best-validation epoch"
    fig.suptitle(f"Reliability on test, {epoch} (bins pooled over seeds)", fontsize=11)
    return fig


def plot_reliability(records_df_or_records, out_path: str | os.PathLike, which: str = "last",
                     group_cols: Sequence[str] | None = None) -> Path | None:
    """Reliability diagrams (:func:`reliability_figure`) saved to ``out_path``; None without bins."""
    fig = reliability_figure(records_df_or_records, which, group_cols)
    return None if fig is None else save_figure(fig, out_path)


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
        axes[0][0].errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=plain(name))
        axes[0][1].errorbar(x, [p[3] for p in pts], yerr=[p[4] for p in pts], marker="o", capsize=3, label=plain(name))
    _draw_teachers(axes[0][0], _teacher_lines([rec for _, rec in runs]))
    for ax, yl, title in ((axes[0][0], "top-1 last (%)", "Test accuracy vs temperature"),
                          (axes[0][1], "ECE last", "Test ECE vs temperature")):
        ax.set_xlabel("temperature τ")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.set_xticks(taus)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle("mean ± std over seeds, final epoch", fontsize=10)
    return save_figure(fig, out_path)


def _curves(groups, gcols, metric: str) -> list[dict]:
    """Per group: ``{label, n, epochs, mean, std, scratch, config}`` of ``metric`` over epochs (mean over seeds)."""
    out = []
    labels = group_labels(list(groups), gcols)
    for key, members in groups.items():
        per_epoch: dict[int, list[float]] = {}
        for _, rec in members:
            for h in rec.get("history") or []:
                if h.get("epoch") is not None and not math.isnan(to_float(h.get(metric))):
                    per_epoch.setdefault(int(h["epoch"]), []).append(to_float(h[metric]))
        if per_epoch:
            ep = sorted(per_epoch)
            scale = 100.0 if metric.endswith("acc") else 1.0
            row = members[0][0]
            out.append({"label": labels[key], "n": len(members), "epochs": ep,
                        "mean": [statistics.mean(per_epoch[e]) * scale for e in ep],
                        "std": [(statistics.stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0) * scale for e in ep],
                        "scratch": _is_scratch(row),
                        "config": tuple(v for c, v in zip(gcols, key) if "." in str(c))})
    return out


def _draw_curve(ax, c: Mapping, color=None, label: str | None = None):
    (line,) = ax.plot(c["epochs"], c["mean"], marker="." if len(c["epochs"]) < 30 else None, color=color,
                      label=plain(label if label is not None else f"{c['label']} (n={c['n']})"))
    ax.fill_between(c["epochs"], [m - s for m, s in zip(c["mean"], c["std"])],
                    [m + s for m, s in zip(c["mean"], c["std"])], color=line.get_color(), alpha=0.15, linewidth=0)
    return line


def learning_curves_figure(records_df_or_records, metric: str = "val_acc", group_cols: Sequence[str] | None = None):
    """The learning curves as a Figure (mean over seeds, band ± std), the teacher as a reference line.

    Up to :data:`SMALL_MULTIPLES_AFTER` distilled curves share one axes, the legend beside it (never on a
    curve); more become small multiples: one panel per variant against the scratch student of its
    configuration (or the only one), shared axes, one legend under the panels. None without history."""
    from matplotlib.ticker import MaxNLocator

    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    curves = _curves(groups, gcols, metric)
    if not curves:
        return None
    teachers = _teacher_lines([rec for _, rec in runs]) if metric.endswith("acc") else []
    ylabel = "validation top-1 (%)" if metric == "val_acc" else metric
    distilled = [c for c in curves if not c["scratch"]]
    scratch = [c for c in curves if c["scratch"]]
    note = " (the teacher's line: its test top-1)" if teachers else ""
    if len(distilled) <= SMALL_MULTIPLES_AFTER:
        fig, axes = new_figure(1, 1, (7.5, 4.2))
        ax = axes[0][0]
        for c in curves:
            _draw_curve(ax, c)
        _draw_teachers(ax, teachers)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title("Learning curves (mean ± std over seeds)" + note, fontsize=10)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        return fig
    ncols = min(4, len(distilled))
    nrows = math.ceil(len(distilled) / ncols)
    fig, axes = new_figure(nrows, ncols, (3.3, 2.6), sharex=True, sharey=True)
    for ax in axes.flat[len(distilled):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax, c in zip(axes.flat, distilled):
        same = [s for s in scratch if s["config"] == c["config"]]
        ref = same or (scratch if len(scratch) == 1 else [])
        if ref:
            what = "scratch, same configuration" if same else "scratch (the study's only one)"
            handles[what] = _draw_curve(ax, ref[0], _SCRATCH_COLOR, "scratch")
        handles["the panel's variant"] = _draw_curve(ax, c, _RUN_COLOR, "variant")
        for h in _draw_teachers(ax, teachers):
            handles[h.get_label()] = h
        ax.set_title(plain(f"{c['label']} (n={c['n']})"), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for j in range(ncols):  # the lowest panel of each column carries the epochs
        low = [axes[i][j] for i in range(nrows) if i * ncols + j < len(distilled)][-1]
        low.xaxis.set_tick_params(labelbottom=True)
        low.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel(ylabel)
    fig.suptitle("Learning curves, one panel per variant against scratch (mean ± std over seeds)" + note,
                 fontsize=10)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(4, len(handles)),
               fontsize=8, frameon=False)
    return fig


def plot_learning_curves(records_df_or_records, out_path: str | os.PathLike, metric: str = "val_acc",
                         group_cols: Sequence[str] | None = None) -> Path | None:
    """Validation accuracy (%) per epoch (:func:`learning_curves_figure`) saved to ``out_path``; None without history."""
    fig = learning_curves_figure(records_df_or_records, metric, group_cols)
    return None if fig is None else save_figure(fig, out_path)


def _per_group(records_df_or_records, group_cols, metric: str) -> list[tuple[str, list[tuple[Any, float]]]]:
    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    out = []
    labels = group_labels(list(groups), gcols)
    for key, members in groups.items():
        vals = [(row.get("seed"), to_float(row.get(metric))) for row, _ in members]
        vals = [(s, v) for s, v in vals if not math.isnan(v)]
        if vals:
            out.append((labels[key], vals))
    return out


def seed_bars_figure(records_df_or_records, metric: str = "last_test_acc", group_cols: Sequence[str] | None = None):
    """Top-1 per variant against the scratch student, as a Figure; None without values.

    Each bar starts at the scratch student's mean top-1 of its configuration (the stated baseline, 0 on
    the left axis) and ends at the variant's mean: its height is Δ vs scratch, with the table's 95 %
    interval of it (:func:`kdbench.report.frame.add_deltas`) and one dot per seed; the right axis reads
    top-1 itself when every row shares one baseline, and the teacher is a line. Without a scratch row
    (or for another metric) there are no bars: the means ± std and the seeds as dots, whose axis need
    not start at 0."""
    import pandas as pd
    from matplotlib.patches import Patch

    runs = as_runs(records_df_or_records)
    groups, gcols = run_groups(runs, group_cols)
    scale = 100.0 if metric.endswith("acc") else 1.0
    items = []
    labels = group_labels(list(groups), gcols)
    for key, members in groups.items():
        vals = [to_float(row.get(metric)) * scale for row, _ in members]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            items.append((key, labels[key], vals))
    if not items:
        return None
    deltas: dict[tuple, tuple[float, float, float]] = {}
    if metric == "last_test_acc":
        table = add_deltas(summarize(pd.DataFrame([row for row, _ in runs]), gcols)).table
        for row in table.to_dict("records"):
            deltas[tuple(group_key(row.get(c)) for c in gcols)] = (
                to_float(row.get("delta_vs_scratch"), finite=True), to_float(row.get("delta_vs_scratch_lo"), finite=True),
                to_float(row.get("delta_vs_scratch_hi"), finite=True))
    shown = [it for it in items if not math.isnan(deltas.get(it[0], (math.nan,))[0])]
    records = [rec for _, rec in runs]
    fig, axes = new_figure(1, 1, (max(5.5, 0.75 * len(items) + 3.5), 4.4))
    ax = axes[0][0]
    legend: dict[str, Any] = {}
    if shown:
        bases = set()
        for i, (key, _label, vals) in enumerate(shown):
            d, lo, hi = deltas[key]
            base = statistics.mean(vals) - d
            bases.add(round(base, 9))
            sure = not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)
            color = ("tab:green" if lo > 0 else "tab:red") if sure else "0.7"
            ax.bar(i, d, bottom=0, width=0.6, color=color, alpha=0.55, edgecolor=color, zorder=2)
            if not (math.isnan(lo) or math.isnan(hi)) and (lo, hi) != (0.0, 0.0):
                legend["95 % interval of Δ over seeds"] = ax.errorbar(
                    i, d, yerr=[[d - lo], [hi - d]], color="black", capsize=4, linewidth=1, zorder=3)
            xs = [i + (j - (len(vals) - 1) / 2) * 0.09 for j in range(len(vals))]
            legend["one seed"] = ax.scatter(xs, [v - base for v in vals], color="black", s=12, zorder=4)
        legend["Δ > 0, interval excludes 0"] = Patch(color="tab:green", alpha=0.55)
        legend["Δ < 0, interval excludes 0"] = Patch(color="tab:red", alpha=0.55)
        legend["interval includes 0 (or one seed)"] = Patch(color="0.7", alpha=0.55)
        ax.axhline(0, color="black", linewidth=1, zorder=2)
        ax.set_ylabel("Δ top-1 vs scratch (pp), last epoch")
        if len(bases) == 1:
            b = bases.pop()
            for h in _draw_teachers(ax, _teacher_lines(records, shift=b)):
                legend[h.get_label()] = h
            right = ax.secondary_yaxis("right", functions=(lambda y, b=b: y + b, lambda y, b=b: y - b))
            right.set_ylabel("test top-1, last epoch (%)")
            ax.set_title(f"Top-1 per variant: bars start at the scratch student's mean ({b:.2f} %)", fontsize=10)
        else:
            ax.set_title("Top-1 per variant: Δ vs the scratch student of each configuration", fontsize=10)
        left_out = [label for key, label, _ in items if all(key != k for k, _, _ in shown)]
        if left_out:
            ax.set_xlabel(plain("no scratch row to compare with: " + ", ".join(left_out)), fontsize=7)
        labels = [label for _, label, _ in shown]
    else:
        for i, (_key, _label, vals) in enumerate(items):
            m = statistics.mean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            legend["mean ± std over seeds"] = ax.errorbar(i, m, yerr=sd, fmt="_", markersize=18, color="tab:blue",
                                                         capsize=4, zorder=3)
            xs = [i + (j - (len(vals) - 1) / 2) * 0.09 for j in range(len(vals))]
            legend["one seed"] = ax.scatter(xs, vals, color="black", s=12, zorder=4)
        if metric.endswith("acc"):
            for h in _draw_teachers(ax, _teacher_lines(records)):
                legend[h.get_label()] = h
        ax.set_ylabel("test top-1, last epoch (%)" if metric == "last_test_acc" else metric)
        ax.set_title("Per variant: mean ± std and every seed (no scratch row, so no bars;"
                     " the axis does not start at 0)", fontsize=10)
        labels = [label for _, label, _ in items]
    ax.set_xticks(range(len(labels)), [plain(x) for x in labels], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(list(legend.values()), list(legend), fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0),
              borderaxespad=0)
    return fig


def plot_seed_bars(records_df_or_records, out_path: str | os.PathLike, metric: str = "last_test_acc",
                   group_cols: Sequence[str] | None = None) -> Path | None:
    """Top-1 per variant against scratch (:func:`seed_bars_figure`) saved to ``out_path``; None without values."""
    fig = seed_bars_figure(records_df_or_records, metric, group_cols)
    return None if fig is None else save_figure(fig, out_path)


def plot_acc_vs_ece(records_df_or_records, out_path: str | os.PathLike,
                    group_cols: Sequence[str] | None = None) -> Path | None:
    """Accuracy against calibration error per variant (mean over seeds, error bars ± std), the teacher as a star."""
    acc = dict(_per_group(records_df_or_records, group_cols, "last_test_acc"))
    ece = dict(_per_group(records_df_or_records, group_cols, "last_test_ece"))
    labels = [k for k in acc if k in ece]
    if not labels:
        return None
    fig, axes = new_figure(1, 1, (7.5, 4.5))
    ax = axes[0][0]
    for label in labels:
        a = [v * 100 for _, v in acc[label]]
        e = [v for _, v in ece[label]]
        ax.errorbar(statistics.mean(e), statistics.mean(a), xerr=statistics.stdev(e) if len(e) > 1 else 0,
                    yerr=statistics.stdev(a) if len(a) > 1 else 0, fmt="o", capsize=3, label=plain(label))
    teachers = teachers_of(_records_of(records_df_or_records))
    for t in teachers:
        if not (math.isnan(t["acc"]) or math.isnan(t["ece"])):
            ax.plot(t["ece"], t["acc"] * 100, marker="*", markersize=14, markerfacecolor="gold", markeredgecolor="black",
                    linestyle="none", label=plain(f"teacher {teacher_name(t, teachers)}"))
    ax.set_xlabel("ECE, last epoch (lower is better)")
    ax.set_ylabel("test top-1, last epoch (%)")
    ax.set_title("Accuracy vs calibration (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return save_figure(fig, out_path)
