"""One experiment's report: records -> :class:`Frame` -> :class:`Summary` -> :class:`Display` -> table
files, figures, HTML, W&B."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kdbench.report.frame import (
    Frame,
    Summary,
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
from kdbench.report.tables import Display, format_display, write_tables

__all__ = ["build_table", "make_report", "record_warnings", "STUDY_MARKER"]


def _frame_of(records_dir: str | os.PathLike, experiment: str, frame) -> Frame:
    """``frame`` as a :class:`Frame`: as given, a flat run frame (W&B runs: no records), or read from ``records_dir``."""
    if frame is None:
        return load_experiment(records_dir, experiment)
    return frame if isinstance(frame, Frame) else Frame(frame)


def build_table(records_dir: str | os.PathLike, experiment: str, group_cols: Sequence[str] | None = None,
                frame=None) -> tuple[Summary, Display]:
    """``(summary, display)`` for one experiment's records under ``records_dir``.

    ``group_cols`` defaults to ``variant``, the config keys that tell runs of one variant apart
    (:attr:`Frame.config_cols`), and α, τ when a variant was run with several settings. The display carries the summary, the
    failed runs, the run ids and a caption for :func:`kdbench.report.write_tables`. ``frame`` is a
    :class:`Frame`, or the flat run frame when it is not read from ``records_dir`` (W&B runs).
    """
    fr = _frame_of(records_dir, experiment, frame)
    df = fr.df
    if group_cols is None:
        group_cols = default_group_cols(df, fr.config_cols)
    summary = add_published(add_deltas(summarize(df, group_cols)), df)
    display = replace(format_display(summary, group_cols), failed=failed_rows(fr), experiment=experiment,
                      caption=caption_of(df, experiment),
                      run_ids=[str(r) for r in df["run_id"]] if "run_id" in df else [])
    return summary, display


#: a file in a results folder whose tables a study renders itself (kdbench/studies/)
STUDY_MARKER = ".kdbench-study"


def make_report(records_dir: str | os.PathLike, experiment: str, out_dir: str | os.PathLike | None = None,
                wandb_log: bool | dict = False, group_cols: Sequence[str] | None = None, frame=None) -> dict:
    """Tables and plots of one experiment into ``out_dir`` (default ``<results>/<experiment>``).

    Returns ``{"out_dir", "tables": {md, tex, csv}, "plots": {name: path}, "markdown", "display"
    (:class:`Display`), "summary" (:class:`Summary`), "wandb_dir", "warnings"}``; nothing is written when
    the experiment has no records (:class:`kdbench.report.ReportError`). With ``frame`` (runs read from
    W&B) there are no plots.
    """
    fr = _frame_of(records_dir, experiment, frame)
    df, recs = fr.df, fr.records
    summary, display = build_table(records_dir, experiment, group_cols, frame=fr)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(records_dir, experiment)
    if (out_dir / STUDY_MARKER).is_file():
        # a study renders its own tables into this folder: the generic report never overwrites them
        out_dir = out_dir / "generic"
        print(f"kdbench-report: {experiment}: {out_dir.parent} holds a study's own tables "
              f"({(out_dir.parent / STUDY_MARKER).read_text().split(':')[0]}); the generic report goes to {out_dir}",
              file=sys.stderr)
    caption = display.caption or experiment
    tables = write_tables(display, out_dir, caption)
    gcols = display.group_cols
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
                           notes=[PROTOCOL_NOTE, DELTA_NOTE, *summary.notes])
        tables["html"] = atomic_write_text(out_dir / "index.html", page)
    result = {"out_dir": out_dir, "tables": tables, "plots": plots, "markdown": tables["md"].read_text(),
              "display": display, "summary": summary, "wandb_dir": None, "warnings": record_warnings(fr)}
    if wandb_log:
        from kdbench.report.tracking import log_report

        result["wandb_dir"] = log_report(experiment, out_dir, display, summary, plots,
                                         settings=wandb_log if isinstance(wandb_log, dict) else None)
    return result


def record_warnings(frame: Frame) -> list[str]:
    """One line per record file left out of the table: unreadable ones, and copies of a run's record."""
    out = [f"unreadable record left out of the table: {u['path']}: {u['reason']}" for u in frame.unreadable]
    for d in frame.duplicates:
        how = "an identical copy" if d["agree"] else "a copy that DISAGREES (status or metrics)"
        out.append(f"run {d['run_id']}: {d['dropped']} is {how} of {d['kept']}; counted once, from {d['kept']}")
    return out
