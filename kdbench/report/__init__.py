"""Paper-style tables and plots from run records: ``kdbench-report`` / ``python -m kdbench.report``.

Reads the run records of one experiment (``<results>/runs/<experiment>/*.json``, see
:mod:`kdbench.records`) and writes into ``<results>/<experiment>/``:

- ``table.md``  -- markdown table, protocol note, teacher accuracy, failed runs
- ``table.tex`` -- booktabs table (``pandas`` Styler), a column's best value in bold only when earned
- ``table.csv`` -- the numeric summary (unrounded means, stds, n, deltas with their 95 % intervals), one row
  per group
- ``reliability.png``, ``learning_curves.png`` and, when the experiment varies tau, ``tau_curves.png``

Every number is a mean +- std (ddof=1) over the seeds of a group, computed from completed
runs only ("n/a" for the spread of one seed). The differences to KD and to scratch come with a 95 %
confidence interval over seeds: a t-interval of the per-seed differences when both rows ran the same
seeds, Welch's interval otherwise (none with one seed). A column's best value is bold only when its
interval against every other row of the same configuration excludes 0. Both protocols are reported and labelled: "last" is the final epoch (CRD, Tian et
al. 2020), "best" is the epoch with the best validation accuracy (DKD, Zhao et al. 2022).
When the records carry a teacher -> student pair with published numbers
(``config.pair.published.<dataset>``), the table gets a "published top-1 (%)" column.

Modules, by job:

- :mod:`kdbench.report.frame`    -- records -> :class:`Frame` (pandas rows), grouping columns, the mean/std
  :class:`Summary`, deltas
- :mod:`kdbench.report.stats`    -- 95 % intervals of differences over seeds (paired t, Welch)
- :mod:`kdbench.report.tables`   -- number formatting, the :class:`Display` table, Markdown / LaTeX / CSV,
  earned best value in bold
- :mod:`kdbench.report.plots`    -- reliability diagrams, τ curves, learning curves
- :mod:`kdbench.report.terminal` -- the compact table a terminal shows (:func:`print_summary`, 100 columns)
- :mod:`kdbench.report.tracking` -- W&B: reading runs from the API, logging a report
- :mod:`kdbench.report.build`    -- one experiment's report (:func:`build_table`, :func:`make_report`)
- :mod:`kdbench.report.cli`      -- the command line (:func:`main`)
"""

from __future__ import annotations

from kdbench.report.build import build_table, make_report
from kdbench.report.cli import main
from kdbench.report.frame import (
    DEFAULT_METRICS,
    DELTA_COLS,
    GRID_COLS,
    PUBLISHED_COLS,
    SHOWN_ELSEWHERE,
    Frame,
    ReportError,
    Summary,
    add_config_columns,
    add_deltas,
    add_published,
    compare_rows,
    config_columns,
    default_group_cols,
    default_out_dir,
    experiments_under,
    iter_experiment_records,
    load_experiment,
    published_fields,
    summarize,
)
from kdbench.report.plots import (
    plot_learning_curves,
    plot_reliability,
    plot_tau_curves,
    pool_reliability,
    save_figure,
)
from kdbench.report.stats import Interval, diff_interval, t_quantile
from kdbench.report.tables import (
    BOLD_RULE,
    DELTA_NOTE,
    DERIVED_SPEC,
    GROUP_HEADERS,
    METRIC_SPEC,
    PROTOCOL_NOTE,
    PUBLISHED_HEADER,
    RUN_TIME_NOTE,
    Display,
    best_mask,
    fmt_delta_ci,
    fmt_mean_std,
    fmt_num,
    fmt_value,
    format_display,
    latex_table,
    markdown_table,
    read_summary_csv,
    render_latex,
    render_markdown,
    tex_escape,
    write_tables,
    write_text_files,
)
from kdbench.report.terminal import print_summary
from kdbench.report.tracking import load_wandb_runs

__all__ = [
    "BOLD_RULE", "DEFAULT_METRICS", "DELTA_COLS", "DELTA_NOTE", "DERIVED_SPEC", "Display", "Frame", "GRID_COLS", "GROUP_HEADERS", "METRIC_SPEC", "PROTOCOL_NOTE",
    "Interval", "PUBLISHED_COLS", "PUBLISHED_HEADER", "RUN_TIME_NOTE", "SHOWN_ELSEWHERE", "ReportError", "add_config_columns",
    "add_deltas", "add_published", "best_mask", "build_table", "compare_rows", "config_columns", "default_group_cols",
    "default_out_dir", "diff_interval", "experiments_under", "fmt_delta_ci", "fmt_mean_std", "fmt_num", "fmt_value", "format_display",
    "iter_experiment_records", "latex_table", "load_experiment", "load_wandb_runs", "main", "make_report",
    "markdown_table", "plot_learning_curves", "plot_reliability", "plot_tau_curves", "pool_reliability",
    "print_summary", "published_fields", "read_summary_csv", "render_latex", "render_markdown", "save_figure", "summarize",
    "Summary", "t_quantile", "tex_escape", "write_text_files", "write_tables",
]
