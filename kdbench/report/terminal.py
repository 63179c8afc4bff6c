"""The compact table a terminal shows after ``make run``, ``make sweep`` and ``make table``.

Read back from an experiment's ``table.csv`` (what the files say, nothing recomputed) and printed with
``rich`` in at most :data:`TERMINAL_WIDTH` columns: the variant (and what tells its configuration
apart), n, top-1 last ± std, Δ vs scratch with its 95 % interval, ECE, agreement, and the teacher's row;
then the paths of the full table and of the HTML page. Notes stay in the files.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from kdbench.report.frame import group_key, to_float
from kdbench.report.tables import (
    MISSING,
    fmt_delta_ci,
    fmt_mean_std,
    fmt_value,
    read_summary_csv,
    short_header,
    short_values,
    telling_apart,
)

__all__ = ["TERMINAL_WIDTH", "compact_rows", "compact_table", "print_summary"]

#: the widest line the compact table may print (the console's width when stdout is not a terminal)
TERMINAL_WIDTH = 100


def _col(table, name: str) -> list[float]:
    return [to_float(v) for v in table[name].tolist()] if name in table.columns else [math.nan] * len(table)


def compact_rows(table) -> tuple[list[str], list[list[str]], int, list[str]]:
    """``(headers, rows, n_left, hidden)`` of the compact table of a summary table (``table.csv`` read back):
    teacher row(s) first, then one row per group; ``n_left`` leading columns are text (left-aligned);
    ``hidden``: the config columns left out because the rows are told apart without them. Columns
    empty in every row are left out too."""
    cols = list(table.columns)
    group_cols = cols[:cols.index("n")] if "n" in cols else ["variant"]
    cfg_all = [c for c in group_cols if c != "variant"]
    variants = [str(group_key(v)) for v in table["variant"].tolist()] if "variant" in cols else [""] * len(table)
    text_all = [short_values(table[c].tolist()) for c in cfg_all]
    shown = telling_apart(variants, text_all)
    cfg = [cfg_all[k] for k in shown]
    hidden = [c for c in cfg_all if c not in cfg]
    # Δ vs scratch; without a scratch row, Δ vs KD, unless every row is its own KD (all +0.00: nothing said)
    delta = next((d for d in ("delta_vs_scratch", "delta_vs_kd")
                  if any(not math.isnan(v) and v != 0.0 for v in _col(table, d))), None)
    headers = ["variant", *[short_header(c, cfg) for c in cfg], "n", "top-1 last (%)",
               {"delta_vs_scratch": "Δ vs scratch (pp)", "delta_vs_kd": "Δ vs KD (pp)"}.get(delta or "", ""),
               "ECE", "agreement (%)"]
    cfg_text = [text_all[k] for k in shown]
    t_acc, t_ece = _col(table, "teacher_test_acc_mean"), _col(table, "teacher_test_ece_mean")
    rows: list[list[str]] = []
    teachers: dict[tuple, list[int]] = {}
    for i, (a, e) in enumerate(zip(t_acc, t_ece)):
        if not math.isnan(a):
            teachers.setdefault((a, None if math.isnan(e) else e), []).append(i)
    main = max(teachers.values(), key=lambda m: ("kd" in {variants[i] for i in m}, len(m))) if teachers else None
    for (a, e), members in teachers.items():
        # one teacher for the whole table: no configuration to name; else the values its rows share, and
        # the variants whose runs report another teacher (one an ablation trained, say)
        where = [("" if len(teachers) == 1 or len({cfg_text[k][i] for i in members}) > 1 else cfg_text[k][members[0]])
                 for k in range(len(cfg))]
        label = "teacher" if members is main else "teacher of " + ", ".join(dict.fromkeys(variants[i] for i in members))
        rows.append([label, *where, "", fmt_value(a, 100.0, 2), "", fmt_value(e, 1.0, 4), ""])
    mean, std = _col(table, "last_test_acc_mean"), _col(table, "last_test_acc_std")
    d, lo, hi = _col(table, delta or ""), _col(table, f"{delta}_lo"), _col(table, f"{delta}_hi")
    ece, agr = _col(table, "last_test_ece_mean"), _col(table, "last_test_agreement_mean")
    n = table["n"].tolist() if "n" in cols else [""] * len(table)
    for i in range(len(table)):
        rows.append([variants[i], *[c[i] for c in cfg_text], str(n[i]),
                     fmt_mean_std(mean[i], std[i], 100.0, 2, no_std="na"),
                     fmt_delta_ci(d[i], lo[i], hi[i]) if delta else "", fmt_value(ece[i], 1.0, 4),
                     fmt_value(agr[i], 100.0, 2)])
    n_left = 1 + len(cfg)
    keep = [j for j, h in enumerate(headers)
            if j < n_left or h in ("n", "top-1 last (%)") or any(r[j] not in ("", MISSING) for r in rows)]
    return [headers[j] for j in keep], [[r[j] for j in keep] for r in rows], n_left, hidden


def compact_table(table, title: str | None = None):
    """The compact table (:func:`compact_rows`) as a ``rich`` Table; cells are plain text (never markup)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    headers, rows, n_left, hidden = compact_rows(table)
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, highlight=False)
    for j, h in enumerate(headers):
        left = j < n_left
        out.add_column(Text(h), justify="left" if left else "right", no_wrap=not left,
                       overflow="fold" if left else "ellipsis")
    for k, r in enumerate(rows):
        teacher, next_teacher = r[0].startswith("teacher"), k + 1 < len(rows) and rows[k + 1][0].startswith("teacher")
        out.add_row(*[Text(c) for c in r], end_section=teacher and not next_teacher)
    if hidden:
        out.caption = Text("also differ between rows: " + ", ".join(hidden) + " (see the full table)")
        out.caption_justify = "left"
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)


def print_summary(experiment_dir: str | os.PathLike, console=None) -> None:
    """Print an experiment's compact table (``<experiment_dir>/table.csv``), then where the full table and
    the HTML page are. ``console``: a ``rich`` Console (default: stdout, :data:`TERMINAL_WIDTH` columns
    when stdout is not a terminal)."""
    from rich.console import Console
    from rich.text import Text

    out_dir = Path(experiment_dir)
    if console is None:
        tty = sys.stdout.isatty()
        console = Console(width=None if tty else TERMINAL_WIDTH, highlight=False, soft_wrap=False)
    table = read_summary_csv(out_dir / "table.csv")
    name = out_dir.parent.name if out_dir.name == "generic" else out_dir.name
    console.print(compact_table(table, title=f"{name}: top-1 last, mean ± std over seeds; Δ with its 95% interval"))
    failed = int(table["n_failed"].sum()) if "n_failed" in table.columns else 0
    lines = []
    if failed:
        lines.append(f"{failed} run{'s' * (failed != 1)} did not complete (listed in table.md)")
    lines.append(f"full table: {_shown(out_dir / 'table.md')}")
    if (out_dir / "index.html").is_file():
        lines.append(f"page:       {_shown(out_dir / 'index.html')}")
    for line in lines:
        console.print(Text(line), soft_wrap=True)  # a path is never broken: the terminal wraps it if it must
