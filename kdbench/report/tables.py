"""Display formatting and table files: numbers as text, Markdown, LaTeX (earned best value in bold), CSV.

One formatter family for every table kdbench writes (the experiment tables of
:mod:`kdbench.report` and the paper tables of :mod:`kdbench.studies`): :func:`fmt_value`,
:func:`fmt_mean_std`, :func:`fmt_delta_ci` and :func:`fmt_num`; one Markdown renderer (:func:`markdown_table`), one
LaTeX renderer (:func:`latex_table`) and one writer (:func:`write_text_files`, atomic, through
:func:`kdbench.files.atomic_write_text`). An experiment's table travels as a :class:`Display` (its
string cells, what each column is, and the :class:`~kdbench.report.frame.Summary` behind it).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from kdbench.report.frame import DEFAULT_METRICS, Summary, compare_rows, config_group_of, to_float
from kdbench.report.stats import excludes_zero

__all__ = [
    "Display", "PROTOCOL_NOTE", "RUN_TIME_NOTE", "MISSING", "NA", "DELTA_NOTE", "KEPT_NOTE", "BOLD_RULE", "METRIC_SPEC", "DERIVED_SPEC", "GROUP_HEADERS",
    "DISPLAY_ORDER", "PUBLISHED_HEADER", "metric_direction", "fmt_value", "fmt_mean_std", "fmt_delta_ci", "fmt_num",
    "format_display",
    "tex_escape", "best_mask", "md_text", "md_cell", "markdown_table", "csv_table", "latex_table", "render_markdown",
    "render_latex", "write_text_files", "write_tables", "read_summary_csv",
]

PROTOCOL_NOTE = ("mean ± std over n seeds; 'last' = final epoch (CRD protocol), "
                 "'best' = best validation epoch (DKD protocol)")
#: how a missing number is shown in the experiment tables
MISSING = "—"
#: how a spread or an interval that one seed cannot give is shown
NA = "n/a"
DELTA_NOTE = ("Δ: difference of mean top-1 last, in percentage points, with its 95% confidence interval over "
              "seeds [lo, hi]: a t-interval of the per-seed differences when both rows ran the same seeds, "
              "Welch's interval for the difference of means otherwise.")
KEPT_NOTE = ("teacher kept = (student − scratch) / (teacher − scratch), top-1 last; teacher kept, NLL = "
             "(scratch NLL − student NLL) / (scratch NLL − teacher NLL), last epoch; — where the teacher is not "
             "better than scratch by more than the scratch row's std over seeds.")
BOLD_RULE = ("a column's best value is in bold only when, against every other row of the same configuration, "
             "the 95% confidence interval over seeds of the difference (paired t-interval when the seeds pair, "
             "else Welch) excludes 0; ties or overlapping intervals: nothing in bold")
PUBLISHED_HEADER = "published top-1 (%)"
RUN_TIME_NOTE = ("run time: the student's fit and test, from the record's started_at to its finished_at, on the "
                 "machine in its record (the teacher's training and cache come before; a fused group's members "
                 "share one).")

#: record column -> (table header, display scale, decimals); which way is better comes from
#: :data:`kdbench.records.DIRECTIONS` (:func:`metric_direction`)
METRIC_SPEC: dict[str, tuple[str, float, int]] = {
    "last_test_acc": ("top-1 last (%)", 100.0, 2),
    "best_test_acc": ("top-1 best-epoch (%)", 100.0, 2),
    "last_test_agreement": ("agreement last (%)", 100.0, 2),
    "last_test_kl_teacher": ("KL(T‖S) last", 1.0, 4),
    "last_test_ece": ("ECE last", 1.0, 4),
    "last_test_nll": ("NLL last", 1.0, 4),
    "last_test_brier": ("Brier last", 1.0, 4),
    "last_test_ece_ts": ("ECE last, T-scaled", 1.0, 4),
    "last_test_nll_ts": ("NLL last, T-scaled", 1.0, 4),
    "last_test_ppl": ("perplexity last", 1.0, 3),
    "last_test_kl_to_true": ("KL(true‖S) last", 1.0, 4),
    "best_test_ece": ("ECE best-epoch", 1.0, 4),
    "best_test_nll": ("NLL best-epoch", 1.0, 4),
    "best_test_brier": ("Brier best-epoch", 1.0, 4),
    "best_test_agreement": ("agreement best-epoch (%)", 100.0, 2),
    "best_test_kl_teacher": ("KL(T‖S) best-epoch", 1.0, 4),
    "params_training_only": ("training-only params", 1.0, 0),
    "run_time_s": ("run time (s)", 1.0, 0),
}
#: summary column of a derived quantity -> (header, better, decimals, signed, shown when missing);
#: values are already in pp / %
DERIVED_SPEC: dict[str, tuple[str, str | None, int, bool, str]] = {
    "published_top1_pct": (PUBLISHED_HEADER, None, 2, False, ""),
    "delta_vs_kd": ("Δ vs KD (pp)", None, 2, True, MISSING),
    "delta_vs_scratch": ("Δ vs scratch (pp)", None, 2, True, MISSING),
    "teacher_kept": ("teacher kept (%)", "max", 1, False, MISSING),
    "teacher_kept_nll": ("teacher kept, NLL (%)", "max", 1, False, MISSING),
}
GROUP_HEADERS = {"variant": "variant", "distill_alpha": "α", "distill_tau": "τ"}
#: where the accuracy-like columns go, then the derived ones, then the rest
DISPLAY_ORDER = ("last_test_acc", "best_test_acc", "published_top1_pct", "delta_vs_kd", "delta_vs_scratch",
                 "teacher_kept", "teacher_kept_nll")


@lru_cache(maxsize=1)
def _directions() -> dict[str, str]:
    from kdbench.records import DIRECTIONS

    return dict(DIRECTIONS)


def metric_direction(column: str) -> str | None:
    """``"max"`` or ``"min"`` for a metric column (``last_test_ece`` -> ECE -> ``"min"``), else None."""
    m = re.fullmatch(r"(?:last|best)_(?:test|val)_(\w+?)(?:_class_\d+)?(?:_mean)?", str(column))
    return _directions().get(m[1] if m else str(column))


def metric_spec(column: str) -> tuple[str, float, int]:
    """(header, display scale, decimals) of a metric column: :data:`METRIC_SPEC`'s, or a per-class accuracy's
    (``last_test_acc_class_3`` -> "top-1 on class 3, last (%)", from ``metrics.per_class_acc``)."""
    m = re.fullmatch(r"(last|best)_test_acc_class_(\d+)", str(column))
    if m:
        return (f"top-1 on class {m[2]}, {'last' if m[1] == 'last' else 'best-epoch'} (%)", 100.0, 2)
    return METRIC_SPEC.get(column, (column, 1.0, 4))


# --------------------------------------------------------------------------------------------
# Numbers as text
# --------------------------------------------------------------------------------------------


def fmt_value(v: Any, scale: float = 1.0, dec: int = 2, *, signed: bool = False, missing: str = MISSING) -> str:
    """``v * scale`` with ``dec`` decimals (``+`` sign with ``signed``); ``missing`` for NaN/inf/non-numbers."""
    f = to_float(v, finite=True)
    if math.isnan(f):
        return missing
    return f"{f * scale:{'+' if signed else ''}.{dec}f}"


def fmt_mean_std(mean: Any, std: Any, scale: float = 1.0, dec: int = 2, *, missing: str = MISSING,
                 no_std: str = "zero") -> str:
    """``"97.31 ± 0.12"``; a missing std (one seed) is shown as 0 (``no_std="zero"``), left out
    (``"omit"``) or as ``"97.31 ± n/a"`` (``"na"``)."""
    m = to_float(mean, finite=True)
    if math.isnan(m):
        return missing
    s = to_float(std, finite=True)
    if math.isnan(s):
        if no_std == "omit":
            return f"{m * scale:.{dec}f}"
        if no_std == "na":
            return f"{m * scale:.{dec}f} ± {NA}"
        s = 0.0
    return f"{m * scale:.{dec}f} ± {s * scale:.{dec}f}"


def fmt_delta_ci(v: Any, lo: Any, hi: Any, dec: int = 2, *, missing: str = MISSING) -> str:
    """A difference with its interval, all signed: ``"+0.26 [-0.05, +0.57]"``; ``"+0.26 [n/a]"`` without
    one (one seed); ``"+0.00"`` alone for the zero-width ``[0, 0]`` (a row against itself)."""
    f = to_float(v, finite=True)
    if math.isnan(f):
        return missing
    a, b = to_float(lo, finite=True), to_float(hi, finite=True)
    text = f"{f:+.{dec}f}"
    if math.isnan(a) or math.isnan(b):
        return f"{text} [{NA}]"
    if a == b == f == 0.0:
        return text
    return f"{text} [{a:+.{dec}f}, {b:+.{dec}f}]"


def fmt_num(v: Any, missing: str = MISSING) -> str:
    """A setting (α, τ, a config value) as short text: ``0.1``, ``20``; text stays text."""
    f = to_float(v)
    if math.isnan(f):
        return missing if v is None or isinstance(v, float) else str(v)
    return f"{f:g}"


def short_header(col: str, cols: Sequence[str]) -> str:
    """A config column's short name: ``distill.topk_mode`` -> ``topk_mode`` unless another of ``cols`` ends the
    same way; α, τ for the grid columns (:data:`GROUP_HEADERS`)."""
    if col in GROUP_HEADERS:
        return GROUP_HEADERS[col]
    last = str(col).rsplit(".", 1)[-1]
    return last if sum(str(c).rsplit(".", 1)[-1] == last for c in cols) == 1 else str(col)


def short_values(values: Sequence[Any]) -> list[str]:
    """A config column's cells as short text (:func:`fmt_num`; :data:`MISSING` where a row lacks the key):
    paths shortened to their last part when that still tells the column's values apart."""
    text = [fmt_num(v) for v in values]
    distinct = {t for t in text if t != MISSING}
    if any("/" in t for t in distinct):
        tails = {t.rstrip("/").rsplit("/", 1)[-1] for t in distinct}
        if len(tails) == len(distinct):
            return [t if t == MISSING else t.rstrip("/").rsplit("/", 1)[-1] for t in text]
    return text


def telling_apart(variants: Sequence[Any], cells: Sequence[Sequence[Any]]) -> list[int]:
    """Which config columns (indices into ``cells``, each a column of short cells) a compact view needs:
    dropping the widest first, each column whose rows stay told apart (by the variant and the columns kept)
    without it; all of them when the rows are not apart even with all (the full table shows every one)."""
    keep = list(range(len(cells)))

    def apart(cols: list[int]) -> bool:
        keys = [(v, *(cells[k][i] for k in cols)) for i, v in enumerate(variants)]
        return len(set(keys)) == len(keys)

    if not apart(keep):
        return keep
    for k in sorted(keep, key=lambda k: -max((len(t or "") for t in cells[k]), default=0)):
        if apart([c for c in keep if c != k]):
            keep.remove(k)
    return keep


# --------------------------------------------------------------------------------------------
# The display table of an experiment
# --------------------------------------------------------------------------------------------


@dataclass
class Display:
    """An experiment's human table (``table``: a pandas DataFrame of string cells) and what the renderers
    need beside it; :func:`format_display` makes it, :func:`kdbench.report.build_table` adds the rest."""

    table: Any
    #: header -> ``(summary column, "max"|"min"|None)``, for bolding
    columns: dict[str, tuple[str | None, str | None]]
    #: the group columns (the first ``len(group_cols)`` columns of ``table``, left-aligned)
    group_cols: list[str]
    summary: Summary
    experiment: str | None = None
    caption: str | None = None
    #: rows of the "Failed runs" section (:func:`kdbench.report.frame.failed_rows`)
    failed: list[dict] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def format_display(summary: Summary, group_cols: Sequence[str] | None = None) -> Display:
    """The human table: one string cell per (group, metric), '97.31 ± 0.12' ('97.31 ± n/a' for one seed),
    deltas with their 95 % interval ('+0.26 [-0.05, +0.57]'); all-empty columns dropped.

    :attr:`Display.columns` maps each header to ``(summary column, "max"|"min"|None)``, for bolding.
    """
    import pandas as pd

    group_cols = list(group_cols or summary.group_cols or ["variant"])
    src = summary.table
    metrics = [m for m in summary.metrics or DEFAULT_METRICS if f"{m}_mean" in src.columns]
    data: dict[str, list[str]] = {}
    colmap: dict[str, tuple[str | None, str | None]] = {}
    for c in group_cols:
        h = GROUP_HEADERS.get(c, c)
        data[h] = [str(v) if c == "variant" else fmt_num(v) for v in src[c].tolist()]
        colmap[h] = (None, None)
    data["n"] = [str(int(v)) for v in src["n"].tolist()]
    colmap["n"] = ("n", None)
    ordered = [c for c in DISPLAY_ORDER if c in metrics or c in DERIVED_SPEC]
    ordered += [m for m in metrics if m not in ordered]
    for c in ordered:
        if c in DERIVED_SPEC:
            if c not in src.columns:
                continue
            header, better, dec, signed, missing = DERIVED_SPEC[c]
            vals = src[c].astype(float).tolist()
            if all(math.isnan(v) for v in vals):
                continue
            if f"{c}_lo" in src.columns and f"{c}_hi" in src.columns:
                data[header] = [fmt_delta_ci(v, lo, hi, dec, missing=missing)
                                for v, lo, hi in zip(vals, src[f"{c}_lo"].tolist(), src[f"{c}_hi"].tolist())]
            else:
                data[header] = [fmt_value(v, 1.0, dec, signed=signed, missing=missing) for v in vals]
            colmap[header] = (c, better)
            continue
        header, scale, dec = metric_spec(c)
        means = src[f"{c}_mean"].astype(float).tolist()
        stds = src[f"{c}_std"].astype(float).tolist()
        if all(math.isnan(v) for v in means) and c not in ("last_test_acc", "best_test_acc"):
            continue
        if c == "params_training_only":  # a count of the method's own modules: one number per group
            data[header] = [fmt_value(m, scale, dec) for m in means]
        else:
            data[header] = [fmt_mean_std(m, s, scale, dec, no_std="na") for m, s in zip(means, stds)]
        colmap[header] = (f"{c}_mean", metric_direction(c))
    data["failed"] = [str(int(v)) for v in src["n_failed"].tolist()]
    colmap["failed"] = ("n_failed", None)
    return Display(pd.DataFrame(data), colmap, group_cols, replace(summary, table=src.copy()))


# --------------------------------------------------------------------------------------------
# Markdown and LaTeX
# --------------------------------------------------------------------------------------------

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


def _sample_metric(src: str) -> str:
    """The per-seed metric whose differences decide a column's bold: the metric of ``<metric>_mean``;
    top-1 last for ``teacher_kept``, a fixed affine map of it within a configuration."""
    return {"teacher_kept": "last_test_acc", "teacher_kept_nll": "last_test_nll"}.get(src, src.removesuffix("_mean"))


def best_mask(display: Display) -> list[list[bool]]:
    """Per cell: is it the best value of its column (max or min), and is that earned (:data:`BOLD_RULE`)?

    The one best row of a column is marked when, for every other row of its configuration
    (:func:`kdbench.report.frame.config_group_of`) with a value in that column, the 95 % interval of
    their difference over seeds (:func:`kdbench.report.frame.compare_rows`) excludes 0. Ties, an
    interval that contains 0 or cannot be computed (one seed), a best row with nothing to beat, or a
    summary without per-seed samples: nothing marked.
    """
    table, summary = display.table, display.summary
    mask = [[False] * len(table.columns) for _ in range(len(table))]
    if len(summary.table) != len(table):
        return mask
    groups = [config_group_of(summary, i) for i in range(len(summary.table))]
    for j, h in enumerate(table.columns):
        src, better = display.columns.get(h, (None, None))
        if better is None or src not in summary.table.columns:
            continue
        vals = [to_float(v) for v in summary.table[src].tolist()]
        ok = [i for i, v in enumerate(vals) if not math.isnan(v)]
        if len(ok) < 2:
            continue
        best = max(vals[i] for i in ok) if better == "max" else min(vals[i] for i in ok)
        top = [i for i in ok if math.isclose(vals[i], best, rel_tol=1e-12, abs_tol=1e-15)]
        if len(top) != 1:
            continue
        b = top[0]
        rivals = [i for i in ok if i != b and groups[i] == groups[b]]
        metric = _sample_metric(src)
        if rivals and all(excludes_zero(compare_rows(summary, b, i, metric)) for i in rivals):
            mask[b][j] = True
    return mask


def md_text(v: Any) -> str:
    """Text for Markdown: HTML (``<script>``, ``&``) escaped, so a record's strings render as text in any viewer."""
    return html.escape(str(v), quote=False)


def md_cell(v: Any) -> str:
    """A Markdown table cell: HTML escaped (:func:`md_text`), ``|`` escaped, newlines flattened."""
    return md_text(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df, *, colalign: Sequence[str] | None = None, compact: bool = False) -> str:
    """A pipe table of the string cells of ``df`` (no index).

    ``compact=False``: padded columns, ``left``/``right`` alignment per column (``colalign``);
    ``compact=True``: one ``| a | b |`` line per row under a ``| --- |`` rule, nothing padded.
    """
    cols = [md_cell(c) for c in df.columns]
    if compact:
        lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
        for row in df.itertuples(index=False, name=None):
            lines.append("| " + " | ".join(md_cell(v) for v in row) + " |")
        return "\n".join(lines)
    body = df.map(md_cell) if len(df) else df.copy()
    body.columns = cols
    kw = {"colalign": list(colalign)} if colalign is not None else {}
    return body.to_markdown(index=False, disable_numparse=True, **kw)


def latex_table(df, caption: str, *, label: str | None = None, bold: list[list[bool]] | None = None,
                n_left: int = 1, position: str | None = None, position_float: str | None = None) -> str:
    """A booktabs ``table`` of the string cells of ``df``: headers and cells escaped (:func:`tex_escape`),
    the first ``n_left`` columns left-aligned, cells of ``bold`` in ``\\textbf``; ``caption`` is LaTeX."""
    import pandas as pd

    tex = pd.DataFrame({tex_escape(c): [tex_escape(v) for v in df[c].tolist()] for c in df.columns})
    styler = tex.style.hide(axis="index")
    if bold is not None:
        css = pd.DataFrame([["textbf:--rwrap;" if b else "" for b in row] for row in bold],
                           index=tex.index, columns=tex.columns)
        styler = styler.apply(lambda _: css, axis=None)
    n_left = min(n_left, len(tex.columns))
    return styler.to_latex(hrules=True, caption=caption, label=label, position=position,
                           position_float=position_float,
                           column_format="l" * n_left + "r" * (len(tex.columns) - n_left))


def _published_note(display: Display) -> str | None:
    refs = display.summary.published_refs
    if not refs:
        return None
    parts = []
    for source, protocol in refs:
        parts.append(source + (f"; protocol: {protocol}" if protocol else "") if source else f"protocol: {protocol}")
    return "Published top-1 (%, not re-run here): " + " | ".join(parts) + "."


def render_markdown(display: Display, caption: str) -> str:
    """``table.md``: caption, protocol note, teacher accuracy, the table and the failed runs; every string
    from the records (caption, config values, errors) HTML-escaped (:func:`md_text`)."""
    import pandas as pd

    lines = [f"# {md_text(caption)}", "", PROTOCOL_NOTE + "."]
    summary = display.summary
    t = to_float(summary.teacher_acc)
    pt = to_float(summary.published_teacher_pct)
    extra = []
    if not math.isnan(t):
        extra.append(f"Teacher top-1: {100 * t:.2f}%" + (f" (published: {pt:.2f}%)." if not math.isnan(pt) else "."))
    elif not math.isnan(pt):
        extra.append(f"Teacher top-1: published {pt:.2f}%.")
    cols = set(display.table.columns)
    if "Δ vs KD (pp)" in cols or "Δ vs scratch (pp)" in cols:
        extra.append(DELTA_NOTE)
    if "n" in summary.table.columns and (summary.table["n"] == 1).any():
        extra.append(f"{NA}: one seed, so no spread and no interval.")
    if "teacher kept (%)" in cols or "teacher kept, NLL (%)" in cols:
        extra.append(KEPT_NOTE)
    extra += summary.notes
    if "run time (s)" in cols:
        extra.append(RUN_TIME_NOTE)
    if "training-only params" in cols:
        extra.append("training-only params: the method's own trainable modules (regressors, embeddings, "
                     "a learnable temperature), trained with the student and never part of it.")
    if "failed" in cols:
        extra.append("failed: runs of the group that did not complete (not in the means).")
    if extra:
        lines += ["", md_text(" ".join(extra))]
    note = _published_note(display)
    if note:
        lines += ["", md_text(note)]
    n_left = len(display.group_cols or ["variant"])
    align = ["left" if j < n_left else "right" for j in range(len(display.table.columns))]
    lines += ["", markdown_table(display.table, colalign=align), "", "## Failed runs", ""]
    if display.failed:
        fdf = pd.DataFrame(display.failed, columns=["run_id", "variant", "seed", "status", "error"]).astype(object)
        lines.append(markdown_table(fdf.map(lambda v: "" if v is None else v)))
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def render_latex(display: Display, caption: str, label: str | None = None) -> str:
    """``table.tex``: the display table, a column's best value in bold when earned (:data:`BOLD_RULE`),
    caption with the protocol, the intervals and the bold rule."""
    cap = tex_escape(caption) + ". " + tex_escape(PROTOCOL_NOTE) + "; " + tex_escape(BOLD_RULE) + "."
    if "Δ vs KD (pp)" in display.table.columns or "Δ vs scratch (pp)" in display.table.columns:
        cap += " " + tex_escape(DELTA_NOTE)
    if display.summary.notes:
        cap += " " + tex_escape(" ".join(display.summary.notes))
    note = _published_note(display)
    if note:
        pt = to_float(display.summary.published_teacher_pct)
        if not math.isnan(pt):
            note = note.replace("Published top-1 (%, ", f"Published top-1 (%, teacher {pt:.2f}, ", 1)
        cap += " " + tex_escape(note)
    return latex_table(display.table, cap, label=label, bold=best_mask(display),
                       n_left=len(display.group_cols or ["variant"]), position_float="centering")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_text_files(out_dir: str | os.PathLike, files: Mapping[str, tuple[str, str]]) -> dict[str, Path]:
    """Write ``{key: (file name, text)}`` into ``out_dir``, each atomically; return ``{key: path}``."""
    from kdbench.files import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (name, text) in files.items():
        paths[key] = atomic_write_text(out_dir / name, text)
    return paths


def write_tables(display: Display, out_dir: str | os.PathLike, caption: str) -> dict[str, Path]:
    """Write ``table.md``, ``table.tex`` (every column), ``table_paper.tex`` (the compact one) and
    ``table.csv`` (the numeric summary behind ``display``) into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    exp = display.experiment or out_dir.name
    label = "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", str(exp)).strip("-")
    return write_text_files(out_dir, {
        "md": ("table.md", render_markdown(display, caption)),
        "tex": ("table.tex", render_latex(display, caption, label=label)),
        "paper": ("table_paper.tex", render_paper_latex(display, caption, label=label + "-paper")),
        "csv": ("table.csv", csv_table(display.summary.table)),
    })


def csv_table(table) -> str:
    """``table.csv``: the summary's columns, but those empty in every row (a metric no run measured), so the
    file depends only on what the records hold."""
    keep = [c for c in table.columns if not (len(table) and table[c].isna().all())]
    return table[keep].to_csv(index=False)


#: the columns a paper's main table shows (when present), in this order
PAPER_COLUMNS = ("top-1 last (%)", "top-1 best-epoch (%)", "published top-1 (%)", "Δ vs KD (pp)", "ECE last",
                 "NLL last")


def render_paper_latex(display: Display, caption: str, label: str | None = None) -> str:
    """``table_paper.tex``: the compact table for a paper (fits a column: the grid columns, n and at
    most six metrics as mean ± std); every other column stays in ``table.csv`` / ``table.tex``."""
    table = display.table
    n_left = len(display.group_cols or ["variant"])
    left = list(table.columns[:n_left])
    keep = left + [c for c in ("n",) if c in table.columns] + [c for c in PAPER_COLUMNS if c in table.columns]
    compact = table[keep].copy()
    if "Δ vs KD (pp)" in compact.columns:  # the interval is in the full table; here the difference only
        compact["Δ vs KD (pp)"] = [str(v).split(" [")[0] for v in compact["Δ vs KD (pp)"].tolist()]
    mask = best_mask(display)
    bold = [[row[list(table.columns).index(c)] for c in keep] for row in mask]
    cap = (tex_escape(caption) + ". Test set; " + tex_escape(PROTOCOL_NOTE)
           + ". Intervals and every other column: table.tex / table.csv.")
    return latex_table(compact, cap, label=label, bold=bold, n_left=n_left, position_float="centering")


def read_summary_csv(path: str | os.PathLike):
    """Read a ``table.csv`` back (floats exactly as written)."""
    import pandas as pd

    return pd.read_csv(path, float_precision="round_trip")
