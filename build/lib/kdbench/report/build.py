"""One experiment's report: records -> summary and display table -> table files, figures, W&B."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kdbench.report.frame import (
    add_deltas,
    add_published,
    caption_of,
    default_group_cols,
    default_out_dir,
    failed_rows,
    load_experiment,
    summarize,
)
from kdbench.report.plots import (
    plot_acc_vs_ece,
    plot_learning_curves,
    plot_reliability,
    plot_seed_bars,
    plot_tau_curves,
)
from kdbench.report.tables import format_display, write_tables

__all__ = ["build_table", "make_report"]


def build_table(records_dir: str | os.PathLike, experiment: str, group_cols: Sequence[str] | None = None,
                frame=None):
    """``(summary_df, display_df)`` for one experiment's records under ``records_dir``.

    ``group_cols`` defaults to ``("variant",)``, or ``("variant", "distill_alpha", "distill_tau")``
    when a variant was run with several (alpha, tau) settings. ``display_df.attrs`` carries the
    numeric summary, the failed runs and a caption for :func:`kdbench.report.write_tables`.
    ``frame`` is the flat run frame when it is not read from ``records_dir`` (W&B runs).
    """
    df = frame if frame is not None else load_experiment(records_dir, experiment)[0]
    if group_cols is None:
        group_cols = default_group_cols(df)
    summary = add_published(add_deltas(summarize(df, group_cols)), df)
    display = format_display(summary, group_cols)
    display.attrs.update(failed=failed_rows(df), experiment=experiment, caption=caption_of(df, experiment))
    return summary, display


#: a file in a results folder whose tables a study renders itself (kdbench/studies/)
STUDY_MARKER = ".kdbench-study"


def make_report(records_dir: str | os.PathLike, experiment: str, out_dir: str | os.PathLike | None = None,
                wandb_log: bool | dict = False, group_cols: Sequence[str] | None = None, frame=None) -> dict:
    """Tables and plots of one experiment into ``out_dir`` (default ``<results>/<experiment>``).

    Returns ``{"out_dir", "tables": {md, tex, csv}, "plots": {name: path}, "markdown", "display",
    "summary", "wandb_dir"}``; nothing is written when the experiment has no records
    (:class:`kdbench.report.ReportError`). With ``frame`` (runs read from W&B) there are no plots.
    """
    if frame is not None:
        df, recs = frame, None
    else:
        df, recs = load_experiment(records_dir, experiment)
    summary, display = build_table(records_dir, experiment, group_cols, frame=df)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(records_dir, experiment)
    if (out_dir / STUDY_MARKER).is_file():
        # a study renders its own tables into this folder: the generic report never overwrites them
        out_dir = out_dir / "generic"
        print(f"kdbench-report: {experiment}: {out_dir.parent} holds a study's own tables "
              f"({(out_dir.parent / STUDY_MARKER).read_text().split(':')[0]}); the generic report goes to {out_dir}",
              file=sys.stderr)
    caption = display.attrs.get("caption") or experiment
    tables = write_tables(display, out_dir, caption, summary=summary)
    gcols = display.attrs.get("group_cols")
    plots: dict[str, Path] = {}
    if recs is not None:
        for name, fn in (("reliability", lambda p: plot_reliability(recs, p, group_cols=gcols)),
                         ("learning_curves", lambda p: plot_learning_curves(recs, p, group_cols=gcols)),
                         ("tau_curves", lambda p: plot_tau_curves(recs, p)),
                         ("seed_bars", lambda p: plot_seed_bars(recs, p, group_cols=gcols)),
                         ("acc_vs_ece", lambda p: plot_acc_vs_ece(recs, p, group_cols=gcols))):
            path = fn(out_dir / f"{name}.png")
            if path is not None:
                plots[name] = path
    if recs is not None:
        from kdbench.files import atomic_write_text
        from kdbench.report.html import render_html
        from kdbench.report.tables import DELTA_NOTE, PROTOCOL_NOTE

        page = render_html(experiment, display, caption=caption, plots=plots, out_dir=out_dir,
                           records=list(zip([Path(p) for p in df["path"]], recs)),
                           failed=display.attrs.get("failed") or [], notes=[PROTOCOL_NOTE, DELTA_NOTE])
        tables["html"] = atomic_write_text(out_dir / "index.html", page)
    result = {"out_dir": out_dir, "tables": tables, "plots": plots, "markdown": tables["md"].read_text(),
              "display": display, "summary": summary, "wandb_dir": None, "warnings": record_warnings(df)}
    if wandb_log:
        from kdbench.report.tracking import log_report

        display.attrs["run_ids"] = [r for r in df.get("run_id", [])] if "run_id" in df else []
        result["wandb_dir"] = log_report(experiment, out_dir, display, summary, plots,
                                         settings=wandb_log if isinstance(wandb_log, dict) else None)
    return result


def record_warnings(df) -> list[str]:
    """One line per record file left out of the table: unreadable ones, and copies of a run's record."""
    out = [f"unreadable record left out of the table: {u['path']}: {u['reason']}" for u in df.attrs.get("unreadable") or []]
    for d in df.attrs.get("duplicates") or []:
        how = "an identical copy" if d["agree"] else "a copy that DISAGREES (status or metrics)"
        out.append(f"run {d['run_id']}: {d['dropped']} is {how} of {d['kept']}; counted once, from {d['kept']}")
    return out
