"""Run records as a pandas frame, and the numbers of a table: groups, mean ± std, deltas, teacher kept.

One flat row per run (:func:`kdbench.records.flatten_record`, plus ``path``, the config keys that
tell runs of one variant apart, named by their dotted key (:attr:`Frame.config_cols`), and, when the records carry a teacher -> student
pair with published numbers, the ``published_*`` columns). :func:`summarize` reduces the rows to
one per group: mean and std (ddof=1) over the seeds of the completed runs, keeping each group's
``(seed, value)`` samples (:attr:`Summary.samples`) for the 95 % intervals of the differences between
rows (:func:`compare_rows`, :mod:`kdbench.report.stats`). Values stay fractions here; only
:mod:`kdbench.report.tables` scales and formats them.

What travels between the steps is explicit: :func:`load_experiment` returns a :class:`Frame` (the
rows, the records, the unreadable files and the copies left out), :func:`summarize`, :func:`add_deltas`
and :func:`add_published` a :class:`Summary` (the table and what its numbers were computed from).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError
from kdbench.identity import computational, is_computational
from kdbench.report.stats import Interval, diff_interval

__all__ = [
    "Frame", "Summary", "DEFAULT_METRICS", "GRID_COLS", "SHOWN_ELSEWHERE", "PUBLISHED_COLS", "ReportError",
    "to_float", "group_key", "group_sort_key", "records_root", "runs_root", "default_out_dir",
    "experiments_under", "iter_experiment_records", "config_leaves", "config_columns", "add_config_columns",
    "published_fields", "load_experiment", "summarize", "row_samples", "config_group_of", "compare_rows",
    "select_rows", "reference_acc", "add_deltas", "DELTA_COLS", "configuration_cols", "record_defect",
    "add_published", "is_grid", "default_group_cols", "failed_rows", "caption_of",
]

DEFAULT_METRICS = (
    "last_test_acc", "best_test_acc", "last_test_ece", "last_test_nll", "last_test_brier",
    "last_test_agreement", "last_test_kl_teacher",
)
#: shown only when the records hold them (records before temperature scaling do not)
OPTIONAL_METRICS = ("last_test_ece_ts", "last_test_nll_ts", "last_test_ppl", "last_test_kl_to_true")
GRID_COLS = ("variant", "distill_alpha", "distill_tau")
#: computational config keys that are not grouping columns because the table shows them already
#: (the seed is what a group averages over; variant, α and τ have their own columns)
SHOWN_ELSEWHERE = ("seed", "distill.variant", "distill.enabled", "distill.alpha", "distill.tau")
#: per-run columns taken from ``config.pair.published.<dataset>`` (accuracies in %)
PUBLISHED_COLS = ("published_top1_pct", "published_teacher_pct", "published_source", "published_protocol")
_VARIANT_ORDER = {"scratch": 0, "kd": 1}
#: the difference columns of :func:`add_deltas`; each comes with ``_lo``, ``_hi`` (95 % interval, pp)
#: and ``_paired`` (the two rows ran the same seeds: interval over the per-seed differences)
DELTA_COLS = ("delta_vs_kd", "delta_vs_scratch")


def per_class_columns(columns: Iterable[str]) -> list[str]:
    """The per-class test accuracies (``last_test_acc_class_<c>``, runs with ``metrics.per_class_acc=true``)
    among ``columns``, by class id."""
    found = [(int(m[1]), c) for c in columns if (m := re.fullmatch(r"last_test_acc_class_(\d+)", str(c)))]
    return [c for _, c in sorted(found)]


class ReportError(KDBenchError):
    """No records, or records that cannot make a table: one line, exit status 2."""


@dataclass
class Frame:
    """One experiment's runs: a flat row per run (``df``, a pandas DataFrame) and the records behind the
    rows (None for runs read from W&B: no histories, so no plots), plus the record files left out."""

    df: Any
    records: list[dict] | None = None
    #: ``{path, reason}`` of every file in the records folder that could not be read as a record
    unreadable: list[dict] = field(default_factory=list)
    #: ``{run_id, kept, dropped, agree}`` of every copy of a run's record (counted once)
    duplicates: list[dict] = field(default_factory=list)
    #: the columns of ``df`` holding config keys that tell runs of one variant apart (:func:`config_columns`)
    config_cols: list[str] | None = None


@dataclass
class Summary:
    """One row per group (``table``, a pandas DataFrame: group columns, ``n``, ``n_failed``,
    ``<metric>_mean`` / ``_std``, then the deltas) and what its numbers were computed from."""

    table: Any
    group_cols: list[str]
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    #: group key (the values of :attr:`sample_cols`) -> ``{metric: ((seed, value), ...)}``: the values
    #: behind each mean and std, for the intervals of the differences between rows
    samples: dict[tuple, dict[str, tuple]] = field(default_factory=dict)
    #: the columns of the samples' keys (None: :attr:`group_cols`); :func:`add_deltas` compares within a
    #: configuration with fewer group columns but the same samples
    sample_cols: list[str] | None = None
    #: reference accuracies of :func:`add_deltas` (fractions; NaN when none or not one table-wide value)
    teacher_acc: float = math.nan
    baseline_acc: float = math.nan
    scratch_acc: float = math.nan
    #: from :func:`add_published`: the teacher's published top-1 (%, NaN unless one value), ``[(source, protocol)]``
    published_teacher_pct: float = math.nan
    published_refs: list[tuple[str, str]] = field(default_factory=list)
    #: why a number is not shown (e.g. "teacher kept" where the teacher is not better than scratch)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def to_float(v: Any, *, finite: bool = False) -> float:
    """``float(v)``, NaN for anything that is not a number (and, with ``finite``, for ±inf)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if not finite or math.isfinite(f) else math.nan


def group_key(v: Any) -> Any:
    """A hashable, NaN-free group key value (numpy scalars become Python ones)."""
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


def group_sort_key(key: tuple, group_cols: Sequence[str]) -> tuple:
    """Row order of a table: scratch, kd, then the other variants by name; numbers ascending."""
    out: list = []
    for c, v in zip(group_cols, key):
        if c == "variant":
            out.append((_VARIANT_ORDER.get(v, 2), str(v)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((0, float(v), ""))
        else:
            out.append((1 if v is not None else 2, 0.0, str(v)))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def records_root(records_dir: str | os.PathLike, experiment: str) -> Path:
    """``records_dir`` may be the runs directory (``results/runs``) or the experiment's own folder."""
    records_dir = Path(records_dir)
    sub = records_dir / experiment
    return sub if sub.is_dir() else records_dir


def runs_root(records_dir: str | os.PathLike, experiment: str) -> Path:
    """The runs directory (``results/runs``) of ``records_dir`` given either way."""
    records_dir = Path(records_dir)
    return records_dir.parent if records_dir.name == experiment and not (records_dir / experiment).is_dir() \
        else records_dir


def default_out_dir(records_dir: str | os.PathLike, experiment: str) -> Path:
    """``<results>/<experiment>`` for records under ``<results>/runs/<experiment>``."""
    return runs_root(records_dir, experiment).parent / experiment


def experiments_under(records_dir: str | os.PathLike) -> list[str]:
    """The experiment names of all records under ``records_dir``, sorted."""
    from kdbench.records import iter_records

    root = Path(records_dir)
    if not root.is_dir():
        return []
    return sorted({str(r.get("experiment")) for _, r in iter_records(root) if r.get("experiment") is not None})


def iter_experiment_records(records_dir: str | os.PathLike, experiment: str | None,
                            problems: list | None = None) -> Iterator[tuple[Path, dict]]:
    """``(path, record)`` of every record of ``experiment`` (any status) under ``records_dir``.

    ``records_dir`` may be the runs directory or the experiment's folder; ``experiment=None``
    yields every record found. Nothing when the folder does not exist. Files in that folder that
    cannot be read as records go to ``problems`` as ``(path, reason)``.
    """
    from kdbench.records import iter_records

    root = records_root(records_dir, experiment) if experiment is not None else Path(records_dir)
    if not root.is_dir():
        return
    for p, r in iter_records(root, problems):
        if experiment is None or r.get("experiment") == experiment:
            yield p, r


def dedupe_records(found: list[tuple[Path, dict]]) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """One record per run id: a copied record (a backup in a sub-folder) must not count twice.

    The record at its own place (``<experiment>/<run_id>.json``) is kept, else the shallowest;
    returns the kept records and ``{run_id, kept, dropped, agree}`` per duplicate, ``agree`` False
    when the copies differ in status or metrics.
    """
    by_id: dict[str, list[tuple[Path, dict]]] = {}
    for p, r in found:
        by_id.setdefault(str(r.get("run_id")), []).append((p, r))
    kept, dups = [], []
    for rid, items in by_id.items():
        items.sort(key=lambda pr: (pr[0].name != f"{rid}.json" or pr[0].parent.name != str(pr[1].get("experiment")),
                                   len(pr[0].parts), str(pr[0])))
        kept.append(items[0])
        for p, r in items[1:]:
            same = (r.get("status"), r.get("metrics")) == (items[0][1].get("status"), items[0][1].get("metrics"))
            dups.append({"run_id": rid, "kept": str(items[0][0]), "dropped": str(p), "agree": same})
    kept.sort(key=lambda pr: str(pr[0]))
    return kept, dups


def config_leaves(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for a nested config; lists become compact JSON strings (hashable)."""
    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            out.update(config_leaves(v, f"{prefix}{k}."))
    elif isinstance(cfg, (list, tuple)):
        out[prefix[:-1]] = json.dumps(cfg, separators=(",", ":"), sort_keys=True, default=str)
    elif prefix:
        out[prefix[:-1]] = cfg
    return out


def _shown_elsewhere(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SHOWN_ELSEWHERE)


def config_columns(recs: Iterable[Mapping]) -> dict[str, dict[str, Any]]:
    """The config keys that tell runs of the same variant apart, and each run's value of them.

    A table must never average runs that are different computations: a sweep over, say,
    ``student.kwargs.hidden`` or ``teacher.arch`` inside one experiment varies keys that the variant
    name does not show. A key counts when it takes several values among the runs of one variant, being
    absent from some of them (a ``+key=value`` override, a default the run did not write) counting as
    a value of its own. Seed-derived keys (``teacher.seed: ${seed}``: equal to the run's seed wherever
    present, over several seeds), the keys with their own columns (:data:`SHOWN_ELSEWHERE`) and keys
    that do not change the computation (:func:`kdbench.identity.is_computational`: paths, logging) are
    left out. Returns ``{key: {run_id: value}}`` (None where a run does not have the key).
    """
    recs = [r for r in recs if isinstance(r, Mapping)]
    leaves = []
    for r in recs:
        # what the run computed with (identity.computational: an online run's teacher_capture, a scratch
        # run's teacher are not part of it), so a key that does not apply to a run shows as missing
        flat = {k: v for k, v in config_leaves(computational(r.get("config") or {})).items()
                if is_computational(k) and not _shown_elsewhere(k)}
        leaves.append(flat)
    every = {k for flat in leaves for k in flat}
    seed_like = {k for k in every
                 if all(str(flat[k]) == str(r.get("seed")) for r, flat in zip(recs, leaves) if k in flat)
                 and len({str(flat[k]) for flat in leaves if k in flat}) > 1}
    absent = object()
    per_variant: dict[Any, dict[str, set]] = {}
    for r, flat in zip(recs, leaves):
        vals = per_variant.setdefault(r.get("variant"), {})
        for k in every:
            vals.setdefault(k, set()).add(flat.get(k, absent))
    keys = sorted({k for vals in per_variant.values() for k, vs in vals.items() if len(vs) > 1} - seed_like)
    return {k: {r.get("run_id"): flat.get(k) for r, flat in zip(recs, leaves)} for k in keys}


def add_config_columns(rows: list[dict], recs: Sequence[Mapping]) -> list[str]:
    """Add the :func:`config_columns` of ``recs`` to the flat ``rows`` (same order); returns their names."""
    cols = config_columns(recs)
    for row, rec in zip(rows, recs):
        for k, by_run in cols.items():
            row[k] = by_run.get(rec.get("run_id"))
    return list(cols)


def published_fields(config: Mapping | None, dataset: Any, variant: Any) -> dict[str, Any]:
    """The ``published_*`` columns of one run from ``config.pair.published.<dataset>``; ``{}`` without.

    ``published_top1_pct`` is the published top-1 (%) of the run's variant (absent when the block
    has no number for it), ``published_teacher_pct`` the teacher's; source and protocol are text.
    """
    pair = (config or {}).get("pair") if isinstance(config, Mapping) else None
    pub = pair.get("published") if isinstance(pair, Mapping) else None
    block = pub.get(str(dataset)) if isinstance(pub, Mapping) and dataset is not None else None
    if not isinstance(block, Mapping):
        return {}

    def number(k: Any) -> float | None:
        v = block.get(k) if isinstance(k, str) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v) if math.isfinite(v) else None

    out: dict[str, Any] = {}
    for col, val in (("published_top1_pct", number(variant)), ("published_teacher_pct", number("teacher")),
                     ("published_source", block.get("source")), ("published_protocol", block.get("protocol"))):
        if val is not None and val != "":
            out[col] = val if isinstance(val, float) else str(val)
    return out


def load_experiment(records_dir: str | os.PathLike, experiment: str) -> Frame:
    """One flat row per run (``flatten_record`` + ``path``), the raw records, and the files left out.

    Raises :class:`ReportError` when the experiment has no records.
    """
    import pandas as pd

    from kdbench.records import flatten_record

    recs: list[dict] = []
    rows: list[dict] = []
    problems: list[tuple[Path, str]] = []
    found, dups = dedupe_records(list(iter_experiment_records(records_dir, experiment, problems)))
    for p, r in found:
        defect = record_defect(r)
        if defect:
            problems.append((p, defect))
            continue
        recs.append(r)
        rows.append(flatten_record(r) | {"path": str(p)})
    if not rows:
        found_exps = experiments_under(runs_root(records_dir, experiment))
        bad = f"; unreadable: {', '.join(f'{p} ({why})' for p, why in problems)}" if problems else ""
        raise ReportError("experiment", f"no run records for experiment '{experiment}' under "
                                        f"{runs_root(records_dir, experiment)} (found: {', '.join(found_exps) or 'none'})"
                                        + bad)
    cfg_cols = add_config_columns(rows, recs)
    for row, r in zip(rows, recs):
        row.update(published_fields(r.get("config"), r.get("dataset"), r.get("variant")))
    return Frame(pd.DataFrame(rows), recs, unreadable=[{"path": str(p), "reason": why} for p, why in problems],
                 duplicates=dups, config_cols=cfg_cols)


def _metric_leaves(rec: Mapping) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` of every number a table reads from a record: metrics and the teacher's test metrics."""
    metrics = rec.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        yield "metrics", metrics
        return
    for which, m in metrics.items():
        if m is None:
            continue
        if not isinstance(m, Mapping):
            yield f"metrics.{which}", m
            continue
        for split, vals in m.items():
            if isinstance(vals, Mapping):
                for k, v in vals.items():
                    yield f"metrics.{which}.{split}.{k}", v
            else:
                yield f"metrics.{which}.{split}", vals  # the epoch, or a split that is not a mapping
    teacher = rec.get("teacher")
    test = teacher.get("test") if isinstance(teacher, Mapping) else None
    if isinstance(test, Mapping):
        for k, v in test.items():
            yield f"teacher.test.{k}", v
    elif test is not None:
        yield "teacher.test", test


#: the kind each top-level field a table reads must be, when present (None is always allowed), and its name
_KINDS = {Mapping: "an object", list: "a list", str: "text", int: "an integer"}
_FIELD_KINDS: dict[str, type] = {"distill": Mapping, "config": Mapping, "teacher": Mapping, "dataset_info": Mapping,
                                 "reliability": Mapping, "history": list, "variant": str, "experiment": str, "seed": int}


def record_defect(rec: Mapping) -> str | None:
    """Why a record cannot enter a table, or None: a field of the wrong kind (``distill`` a string, ``history``
    not a list of objects, a boolean or text seed), or a metric that is not a number (``"0.97"``, ``"high"``,
    ``true``, a list). Such a record is a defect, listed with the unreadable files: never averaged in,
    dropped silently or a crash. Null (a number the run did not measure, or NaN) is allowed."""
    for key, kind in _FIELD_KINDS.items():
        v = rec.get(key)
        if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            return f"field {key} is {type(v).__name__} {shown}, not {_KINDS[kind]}"
    if isinstance(rec.get("history"), list) and not all(isinstance(h, Mapping) for h in rec["history"]):
        return "field history holds entries that are not objects"
    for where, v in _metric_leaves(rec):
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            continue
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        return f"metric {where} is {type(v).__name__} {shown}, not a number"
    return None


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


#: the teacher's test metrics each group carries (mean only): accuracy and NLL for "teacher kept", ECE for
#: the teacher's row of the terminal table
TEACHER_MEANS = ("teacher_test_acc", "teacher_test_nll", "teacher_test_kl_to_true", "teacher_test_ece")


def summarize(df, group_cols: Sequence[str] = ("variant",), metrics: Sequence[str] | None = None) -> Summary:
    """Mean and std (ddof=1) over seeds of each metric, per group; completed runs only.

    One row per group (groups with only failed runs included, with ``n == 0``); columns are the
    group columns, ``n`` (completed runs), ``n_failed`` (runs of any other status), ``<metric>_mean``,
    ``<metric>_std`` (NaN for n < 2) and ``teacher_test_acc_mean``. Values stay fractions.
    :attr:`Summary.samples` holds, per group, the ``(seed, value)`` pairs the mean and std were computed from.
    """
    import pandas as pd

    group_cols = list(group_cols)
    if metrics is None:
        present = set(df.columns) if df is not None else set()
        metrics = list(DEFAULT_METRICS) + [m for m in OPTIONAL_METRICS if m in present]
        metrics += per_class_columns(present)
        # what a run cost: the parameters a method trains beside the student (shown when some run has any)
        # and the student's run time (kdbench.records.run_time_s: its fit and test, not the teacher's training)
        if df is not None and "params_training_only" in present and (df["params_training_only"].fillna(0) > 0).any():
            metrics.append("params_training_only")
        if "run_time_s" in present and df["run_time_s"].notna().any():
            metrics.append("run_time_s")
    metrics = list(metrics)
    rows_in = df.to_dict("records") if df is not None and len(df) else []
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows_in:
        key = tuple(group_key(r.get(c)) for c in group_cols)
        g = groups.setdefault(key, {"complete": [], "other": []})
        g["complete" if r.get("status") == "complete" else "other"].append(r)
    out = []
    samples: dict[tuple, dict[str, tuple]] = {}
    for key in sorted(groups, key=lambda k: group_sort_key(k, group_cols)):
        g = groups[key]
        row: dict[str, Any] = dict(zip(group_cols, key))
        row["n"] = len(g["complete"])
        row["n_failed"] = len(g["other"])
        for m in [*metrics, *TEACHER_MEANS]:
            pairs = [(group_key(r.get("seed")), x) for r in g["complete"] for x in [to_float(r.get(m))]
                     if not math.isnan(x)]
            vals = [x for _, x in pairs]
            row[f"{m}_mean"] = statistics.mean(vals) if vals else math.nan
            if m not in TEACHER_MEANS:
                row[f"{m}_std"] = statistics.stdev(vals) if len(vals) >= 2 else math.nan
                samples.setdefault(key, {})[m] = tuple(pairs)
        out.append(row)
    cols = [*group_cols, "n", "n_failed", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")],
            *[f"{m}_mean" for m in TEACHER_MEANS]]
    summary = pd.DataFrame(out, columns=cols)
    for c in ("n", "n_failed"):
        summary[c] = summary[c].astype(int)
    return Summary(summary, group_cols, metrics, samples, sample_cols=group_cols)


def _row_key(table, i: int, cols: Sequence[str]) -> tuple:
    return tuple(group_key(table[c].iloc[i]) if c in table.columns else None for c in cols)


def row_samples(summary: Summary, i: int, metric: str) -> tuple:
    """The ``(seed, value)`` samples of ``metric`` behind row ``i`` (position) of ``summary``; ``()``
    when the summary carries none (a hand-made one)."""
    cols = summary.sample_cols or summary.group_cols or ["variant"]
    return tuple((summary.samples.get(_row_key(summary.table, i, cols)) or {}).get(metric, ()))


def configuration_cols(group_cols: Sequence[str] | None) -> list[str]:
    """The group columns that tell configurations apart: all but the variant, α and τ (:data:`GRID_COLS`).
    Rows are compared (deltas, bolding) only within one configuration."""
    return [c for c in group_cols or () if c not in GRID_COLS]


def config_group_of(summary: Summary, i: int) -> tuple:
    """The configuration of row ``i``: its values of the :func:`configuration_cols`."""
    return _row_key(summary.table, i, configuration_cols(summary.group_cols))


def compare_rows(summary: Summary, i: int, j: int, metric: str = "last_test_acc") -> Interval:
    """The 95 % interval of row ``i`` minus row ``j`` (positions) in ``metric`` (fractions), over seeds:
    paired when both rows ran the same seeds, Welch otherwise (:func:`kdbench.report.stats.diff_interval`)."""
    return diff_interval(row_samples(summary, i, metric), row_samples(summary, j, metric))


def select_rows(table, sel: str | Mapping[str, Any]) -> list[bool]:
    """Boolean mask of the rows of ``table`` (a summary's) matching a variant name or a {column: value} mapping."""
    if isinstance(sel, str):
        sel = {"variant": sel}
    mask = [True] * len(table)
    for c, want in sel.items():
        if c not in table.columns:
            return [False] * len(table)
        for i, v in enumerate(table[c].tolist()):
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                f = to_float(v)
                ok = not math.isnan(f) and math.isclose(f, float(want), rel_tol=1e-9, abs_tol=1e-12)
            else:
                ok = v == want
            mask[i] = mask[i] and ok
    return mask


def _reference_pos(table, sel) -> int | None:
    """The position of the one completed group matching ``sel``; None if none or ambiguous."""
    if sel is None:
        return None
    pos = [i for i, (m, n) in enumerate(zip(select_rows(table, sel), table["n"].tolist())) if m and n > 0]
    return pos[0] if len(pos) == 1 else None


def reference_acc(table, sel, col: str = "last_test_acc_mean") -> float:
    """The mean accuracy of the one completed group of ``table`` matching ``sel``; NaN if none or ambiguous."""
    i = _reference_pos(table, sel)
    return math.nan if i is None else to_float(table[col].iloc[i])


def _references(table, sel, cfg: Sequence[str]) -> list[int | None]:
    """Per row, the position of its reference group (``sel``, completed groups) within its configuration.

    Only the configuration columns in which the candidates differ decide. A candidate must agree with
    the row on each of them in which the row's variant varies too (KD at width 16 is never scratch at
    width 64's reference); among those, the one that agrees on the most of them is the reference (the
    same configuration when there is one; a single scratch row serves every KD configuration, and the
    scratch row's KD is the one whose teacher keys are as unset as its own). None when none or a tie.
    """
    if sel is None or not len(table):
        return [None] * len(table)
    cand = [i for i, (m, n) in enumerate(zip(select_rows(table, sel), table["n"].tolist())) if m and n > 0]
    keys = [c for c in cfg if len({_row_key(table, i, [c]) for i in cand}) > 1]
    variants = table["variant"].tolist() if "variant" in table.columns else [None] * len(table)
    varies = {v: [c for c in keys if len({_row_key(table, i, [c]) for i, w in enumerate(variants) if w == v}) > 1]
              for v in set(variants)}
    out: list[int | None] = []
    for i in range(len(table)):
        need = varies[variants[i]]
        ok = [j for j in cand if _row_key(table, j, need) == _row_key(table, i, need)]
        score = {j: sum(_row_key(table, j, [c]) == _row_key(table, i, [c]) for c in keys) for j in ok}
        top = [j for j in ok if score[j] == max(score.values())]
        out.append(top[0] if len(top) == 1 else None)
    return out


def _teacher_values(table, col: str, cfg: Sequence[str], baseline) -> list[float]:
    """Per row, the teacher's mean ``col`` (``teacher_test_acc_mean``...): over the baseline rows of the row's
    configuration, else every row of it with a teacher, else the one value of the whole table (NaN if several)."""
    if col not in table.columns:
        return [math.nan] * len(table)
    vals = [to_float(v) for v in table[col].tolist()]
    base = select_rows(table, baseline) if baseline is not None else [False] * len(table)
    groups = [_row_key(table, i, cfg) for i in range(len(table))]
    everywhere = {v for v in vals if not math.isnan(v)}
    out = []
    for i in range(len(table)):
        same = [j for j in range(len(table)) if groups[j] == groups[i] and not math.isnan(vals[j])]
        pick = [vals[j] for j in same if base[j]] or [vals[j] for j in same]
        out.append(statistics.mean(pick) if pick else everywhere.copy().pop() if len(everywhere) == 1 else math.nan)
    return out


def _one_value(values: Iterable[float]) -> float:
    """The one non-NaN value of ``values``; NaN when there are none or several."""
    vals = {v for v in values if not math.isnan(v)}
    return vals.pop() if len(vals) == 1 else math.nan


def _ref_value(refs: Sequence[int | None], values: Sequence[float]) -> float:
    """``values`` at the one reference row every row shares; NaN when the rows have several (or none)."""
    pos = {r for r in refs if r is not None}
    return values[pos.pop()] if len(pos) == 1 else math.nan


#: ``teacher kept`` columns: (column, student column, teacher column, "max" | "min", header, unit)
_KEPT = (("teacher_kept", "last_test_acc", "teacher_test_acc_mean", "max", "teacher kept (%)", "top-1"),
         ("teacher_kept_nll", "last_test_nll", "teacher_test_nll_mean", "min", "teacher kept, NLL (%)", "NLL"))


def _fmt_kept(metric: str, v: float) -> str:
    return f"{100 * v:.2f}%" if metric == "last_test_acc" else f"{v:.4f}"


def add_deltas(summary: Summary, baseline: str | Mapping[str, Any] | None = "kd",
               scratch: str | Mapping[str, Any] | None = "scratch", teacher_acc: float | None = None) -> Summary:
    """Add ``delta_vs_kd``, ``delta_vs_scratch`` (pp of mean top-1 last), ``teacher_kept`` (%) and
    ``teacher_kept_nll`` (%, ``(scratch NLL - student NLL) / (scratch NLL - teacher NLL)``).

    Each row is compared with the KD and scratch groups of its configuration (:func:`configuration_cols`;
    a reference group that does not vary in a configuration column serves every value of it). Each delta
    comes with ``<delta>_lo``/``<delta>_hi``, its 95 % interval over seeds (pp; paired t-interval of the
    per-seed differences when the row and the reference ran the same seeds, Welch's interval otherwise;
    NaN with one seed or without the summary's samples), and ``<delta>_paired``.

    ``teacher_kept = (student - scratch) / (teacher - scratch) * 100``: the share of the teacher's lead
    over the from-scratch student that distillation recovers. It is NaN (with a line in
    :attr:`Summary.notes`) when the teacher is not better than scratch on that metric, or better by no
    more than the scratch row's std over seeds: a ratio over no lead, or over noise, means nothing.
    ``baseline`` and ``scratch`` name a variant, or a ``{column: value}`` mapping for grids; a reference
    that matches no completed group, or several, gives NaN. ``teacher_acc`` is a fraction (a value above
    1 is read as %); when None it is the mean ``teacher_test_acc`` of the baseline's runs (all runs with
    a teacher if the baseline has none). The reference accuracies come back as
    :attr:`Summary.teacher_acc`, ``baseline_acc`` and ``scratch_acc`` (NaN unless one value table-wide).
    """
    s = summary.table.copy()
    cur = replace(summary, table=s)
    cfg = configuration_cols(summary.group_cols)
    nrows = len(s)
    acc = [to_float(v) for v in s["last_test_acc_mean"].tolist()]
    kd_ref, sc_ref = _references(s, baseline, cfg), _references(s, scratch, cfg)
    for col, refs in (("delta_vs_kd", kd_ref), ("delta_vs_scratch", sc_ref)):
        d, lo, hi, paired = [], [], [], []
        for i, r in enumerate(refs):
            if r is None:
                iv = Interval(math.nan, math.nan, math.nan, False, 0)
            elif i == r:  # the reference row differs from itself by exactly 0
                iv = Interval(0.0, 0.0, 0.0, True, int(s["n"].iloc[i]))
            else:
                iv = compare_rows(cur, i, r, "last_test_acc")
            d.append((acc[i] - acc[r]) * 100.0 if r is not None else math.nan)
            lo.append(iv.lo * 100.0)
            hi.append(iv.hi * 100.0)
            paired.append(bool(iv.paired))
        s[col], s[f"{col}_lo"], s[f"{col}_hi"], s[f"{col}_paired"] = d, lo, hi, paired
    if teacher_acc is None:
        t_acc = _teacher_values(s, "teacher_test_acc_mean", cfg, baseline)
    else:
        t_acc = [float(teacher_acc) / (100.0 if float(teacher_acc) > 1.0 else 1.0)] * nrows
    notes: list[str] = []
    for col, metric, t_col, better, header, unit in _KEPT:
        if f"{metric}_mean" not in s.columns or (col == "teacher_kept_nll" and t_col not in s.columns):
            continue
        teacher = t_acc if col == "teacher_kept" else _teacher_values(s, t_col, cfg, baseline)
        mine = [to_float(v) for v in s[f"{metric}_mean"].tolist()]
        spread = [to_float(v) for v in s[f"{metric}_std"].tolist()] if f"{metric}_std" in s.columns \
            else [math.nan] * nrows
        sign = 1.0 if better == "max" else -1.0
        kept = []
        for i, r in enumerate(sc_ref):
            if r is None or math.isnan(teacher[i]) or math.isnan(mine[r]):
                kept.append(math.nan)
                continue
            lead = sign * (teacher[i] - mine[r])
            if lead > 1e-12 and not lead <= spread[r]:
                gain = mine[i] - mine[r] if better == "max" else mine[r] - mine[i]
                kept.append(gain / lead * 100.0)
                continue
            kept.append(math.nan)
            sd = "" if math.isnan(spread[r]) else f" ± {_fmt_kept(metric, spread[r])}"
            why = (f"the teacher's {unit} ({_fmt_kept(metric, teacher[i])}) is not "
                   f"{'better' if better == 'max' else 'lower'} than scratch's ({_fmt_kept(metric, mine[r])}{sd})"
                   if lead <= 1e-12 else
                   f"the teacher's lead in {unit} ({_fmt_kept(metric, teacher[i])} vs scratch "
                   f"{_fmt_kept(metric, mine[r])}{sd}) is within the scratch row's std over seeds")
            note = f"{header}: — where {why}: a ratio over no lead, or over noise, means nothing."
            if note not in notes:
                notes.append(note)
        s[col] = kept
    return replace(summary, table=s, teacher_acc=_one_value(t_acc), baseline_acc=_ref_value(kd_ref, acc),
                   scratch_acc=_ref_value(sc_ref, acc), notes=[*summary.notes, *notes])


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        v = group_key(v)
        if v is None or v == "" or v in out:
            continue
        out.append(v)
    return out


def add_published(summary: Summary, df) -> Summary:
    """Add ``published_top1_pct`` (the published top-1 (%) of each row's runs, NaN when they have
    none or disagree) when some row has one; :attr:`Summary.published_teacher_pct` (NaN unless one
    value) and ``published_refs`` (``[(source, protocol)]``). A summary of runs without published
    numbers is returned unchanged."""
    if df is None or not len(df) or not any(c in df.columns for c in PUBLISHED_COLS):
        return summary
    group_cols = list(summary.group_cols or ["variant"])
    per_group: dict[tuple, list] = {}
    for r in df.to_dict("records"):
        key = tuple(group_key(r.get(c)) for c in group_cols)
        per_group.setdefault(key, []).append(to_float(r.get("published_top1_pct")))
    keys = [tuple(group_key(v) for v in row) for row in summary.table[group_cols].itertuples(index=False, name=None)]
    col = []
    for k in keys:
        vals = {v for v in per_group.get(k, []) if not math.isnan(v)}
        col.append(vals.pop() if len(vals) == 1 else math.nan)
    s = summary.table.copy()
    if any(not math.isnan(v) for v in col):
        s["published_top1_pct"] = col
    teacher = [to_float(v) for v in _distinct(df.get("published_teacher_pct", []))]
    teacher = [v for v in teacher if not math.isnan(v)]
    refs = _distinct(zip(df["published_source"].tolist() if "published_source" in df else [""] * len(df),
                         df["published_protocol"].tolist() if "published_protocol" in df else [""] * len(df)))
    return replace(summary, table=s, published_teacher_pct=teacher[0] if len(teacher) == 1 else math.nan,
                   published_refs=[(_text(a), _text(b)) for a, b in refs if _text(a) or _text(b)])


def _text(v: Any) -> str:
    v = group_key(v)
    return "" if v is None else str(v)


# --------------------------------------------------------------------------------------------
# What a table is made of
# --------------------------------------------------------------------------------------------


def is_grid(df) -> bool:
    """Does some variant come with several (alpha, tau) settings?"""
    if df is None or not len(df) or "distill_alpha" not in df.columns or "distill_tau" not in df.columns:
        return False
    seen: dict[Any, set] = {}
    for v, a, t in zip(df["variant"].tolist(), df["distill_alpha"].tolist(), df["distill_tau"].tolist()):
        seen.setdefault(group_key(v), set()).add((group_key(a), group_key(t)))
    return any(len(s) > 1 for s in seen.values())


def default_group_cols(df, config_cols: Sequence[str] | None = None) -> tuple[str, ...]:
    """``variant``, then the config keys that tell runs of one variant apart (``config_cols``:
    :attr:`Frame.config_cols`; when not given, the dotted columns of ``df``), then α and τ when some
    variant ran with several (α, τ) settings."""
    cols = list(df.columns) if df is not None else []
    extra = [c for c in config_cols if c in cols] if config_cols is not None else [c for c in cols if "." in str(c)]
    tail = GRID_COLS[1:] if is_grid(df) else ()
    return ("variant", *extra, *tail)


def failed_rows(frame: Frame) -> list[dict]:
    """``run_id, variant, seed, status, error`` (first line) of every run that did not complete, and
    of every record file that could not be read (status ``unreadable``: its run is not in the table)."""
    df = frame.df
    if df is None or not len(df):
        return []
    out = [{"run_id": None, "variant": None, "seed": None, "status": "unreadable", "error": f"{u['path']}: {u['reason']}"}
           for u in frame.unreadable]
    for r in df.to_dict("records"):
        if r.get("status") != "complete":
            err = r.get("error")
            first = (str(err).strip().splitlines() or [""])[0][:200] if err is not None and err == err else ""
            out.append({"run_id": r.get("run_id"), "variant": r.get("variant"), "seed": group_key(r.get("seed")),
                        "status": r.get("status"), "error": first})
    return out


def caption_of(df, experiment: str) -> str:
    """``experiment: teacher → student on dataset`` from the runs' columns."""
    def one(col):
        if col not in df.columns:
            return None
        vals = sorted({str(v) for v in df[col].tolist() if group_key(v) is not None})
        return "/".join(vals) if vals else None

    teacher, student, data = one("teacher_arch"), one("student_arch"), one("dataset")
    parts = [experiment]
    if student:
        parts.append(f"{teacher} → {student}" if teacher else student)
    if data:
        parts.append(f"on {data}")
    return ": ".join(parts[:1] + [" ".join(parts[1:])]) if len(parts) > 1 else experiment
