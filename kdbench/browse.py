"""A results browser for the terminal: ``kdbench runs``, ``kdbench runs show <run id>``, ``kdbench compare A B``.

    kdbench runs [--experiment X] [--status running|complete|failed|...] [--runs-dir DIR]
    kdbench runs show RUN_ID [--runs-dir DIR]
    kdbench compare A B [--runs-dir DIR]

``--runs-dir`` defaults to the config's ``paths.runs_dir`` (``results/runs``, or what ``conf/local/``
makes it on this machine).

``runs`` lists the records under the runs folder (experiment, variant, seed, status, top-1, age), a
running job with its epoch and ETA from its ``progress.json``; ``runs show`` one record: what its config
changed against its experiment's defaults, its metrics, and where its files are; ``compare`` the compact
table of two experiments side by side, with the 95 % interval of each difference over seeds. Tables are
drawn with rich, at most 100 columns wide. Nothing here writes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError, exit_codes

__all__ = ["WIDTH", "print_table", "list_runs", "run_rows", "find_record", "config_diff", "show_run",
           "comparison_rows", "compare", "main"]

#: the widest a table is drawn (a terminal of 100 columns shows every line whole)
WIDTH = 100
#: a running record whose progress.json is older than this (and than three of its epochs) is likely abandoned
STALE_S = 600.0
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def _console(file=None):
    from rich.console import Console

    return Console(file=file or sys.stdout, width=WIDTH, highlight=False, soft_wrap=False, markup=False)


def say(text: str = "", file=None) -> None:
    """One paragraph on the terminal, wrapped at :data:`WIDTH` columns (a long path folds)."""
    _console(file).print(text, overflow="fold")


def print_table(df, *, title: str | None = None, right: Sequence[str] = (), sections: Iterable[int] = (),
                file=None) -> None:
    """A DataFrame of display strings as a rich table of at most :data:`WIDTH` columns (long cells wrap
    inside their column); ``right``: the columns aligned right (numbers); ``sections``: the rows after
    which a rule is drawn."""
    from rich import box
    from rich.table import Table

    if title:
        say(title, file)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in df.columns:
        num = c in right  # numbers never wrap; the text columns give way
        table.add_column(str(c), justify="right" if num else "left", overflow="fold", no_wrap=num)
    ends = set(sections)
    for i, row in enumerate(df.itertuples(index=False, name=None)):
        table.add_row(*[str(v) for v in row], end_section=i in ends)
    _console(file).print(table)


# --------------------------------------------------------------------------------------------
# kdbench runs
# --------------------------------------------------------------------------------------------


def _age(rec: Mapping, now: float) -> str:
    from datetime import datetime

    stamp = rec.get("finished_at") or rec.get("started_at")
    try:
        s = now - datetime.fromisoformat(str(stamp)).timestamp()
    except (TypeError, ValueError):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{max(s, 0):.0f}s"


def _plain(name: Any) -> bool:
    """A name read back from a record that may become a path part (no separators, no ``..``)."""
    return isinstance(name, str) and bool(_PLAIN.match(name)) and ".." not in name


def checkpoint_dir(rec: Mapping, runs_dir: Path) -> Path | None:
    """The run's checkpoint folder (``<checkpoints>/<experiment>/<run id>``, from its config's paths, else
    beside the runs folder); None when the record's names are not plain folder names."""
    from kdbench.files import abs_path

    exp, rid = rec.get("experiment"), rec.get("run_id")
    if not (_plain(exp) and _plain(rid)):
        return None
    ck = (((rec.get("config") or {}).get("paths") or {}).get("checkpoints_dir"))
    root = abs_path(ck) if isinstance(ck, str) and ck else runs_dir.parent / "checkpoints"
    return root / exp / rid


def progress(rec: Mapping, runs_dir: Path, now: float | None = None) -> dict | None:
    """A running job's ``progress.json`` (epoch, epochs, s_per_epoch, eta_s now, ``stale``), or None."""
    ck = checkpoint_dir(rec, runs_dir)
    if ck is None:
        return None
    try:
        p = json.loads((ck / "progress.json").read_text())
        since = (time.time() if now is None else now) - float(p["updated"])
        per = float(p["s_per_epoch"])
        return {"epoch": int(p["epoch"]), "epochs": int(p["epochs"]), "s_per_epoch": per,
                "eta_s": max(0.0, float(p["eta_s"]) - since), "since": since, "stale": since > max(STALE_S, 3 * per)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _top1(rec: Mapping) -> float:
    v = ((((rec.get("metrics") or {}).get("last") or {}).get("test") or {}).get("acc"))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def run_rows(runs_dir: str | Path, experiment: str | None = None, status: str | None = None,
             now: float | None = None) -> tuple[list[dict], list[tuple[Path, str]]]:
    """One row per record under ``runs_dir`` (optionally one experiment / status), newest first, and the
    files that could not be read as records."""
    from kdbench.records import iter_records
    from kdbench.report.tables import fmt_value

    runs_dir = Path(runs_dir)
    now = time.time() if now is None else now
    problems: list[tuple[Path, str]] = []
    rows = []
    for _, rec in iter_records(runs_dir, problems) if runs_dir.is_dir() else []:
        if experiment is not None and rec.get("experiment") != experiment:
            continue
        if status is not None and rec.get("status") != status:
            continue
        st = str(rec.get("status"))
        top1 = fmt_value(_top1(rec), 100.0)
        if st == "running":
            p = progress(rec, runs_dir, now)
            if p is not None:
                top1 = f"epoch {p['epoch']}/{p['epochs']}, ETA {p['eta_s'] / 60:.1f} min"
                if p["stale"]:  # its process likely died: the record was never closed
                    st, top1 = "running?", f"epoch {p['epoch']}/{p['epochs']}, no progress for {p['since'] / 60:.0f} min"
        rows.append({"experiment": str(rec.get("experiment")), "variant": str(rec.get("variant")),
                     "seed": str(rec.get("seed")), "status": st, "top-1 (%)": top1, "age": _age(rec, now),
                     "run id": str(rec.get("run_id")), "_t": rec.get("finished_at") or rec.get("started_at") or ""})
    rows.sort(key=lambda r: str(r["_t"]), reverse=True)
    for r in rows:
        r.pop("_t")
    return rows, problems


def list_runs(runs_dir: str | Path, experiment: str | None = None, status: str | None = None, file=None) -> int:
    import pandas as pd

    from kdbench.records import STATUSES

    if status is not None and status not in STATUSES:
        raise KDBenchError("--status", f"unknown status {status!r}; allowed: {', '.join(STATUSES)}")
    rows, problems = run_rows(runs_dir, experiment, status)
    out = file or sys.stdout
    what = " ".join(x for x in (f"experiment {experiment}" if experiment else "",
                                f"status {status}" if status else "") if x)
    if not rows:
        say(f"no run records under {runs_dir}" + (f" for {what}" if what else ""), out)
    else:
        counts = pd.Series([r["status"] for r in rows]).value_counts()
        print_table(pd.DataFrame(rows), right=("seed", "top-1 (%)", "age"), file=out,
                    title=f"{len(rows)} runs under {runs_dir}" + (f" ({what})" if what else "") + ": "
                          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for p, why in problems:
        say(f"unreadable: {p}: {why}", out)
    return 0


# --------------------------------------------------------------------------------------------
# kdbench runs show
# --------------------------------------------------------------------------------------------


def find_record(runs_dir: str | Path, run_id: str) -> tuple[Path, dict]:
    """The record of ``run_id`` (or of the one run whose id starts with it) under ``runs_dir``."""
    from kdbench.records import iter_records

    runs_dir = Path(runs_dir)
    found = [(p, r) for p, r in (iter_records(runs_dir) if runs_dir.is_dir() else [])
             if str(r.get("run_id", "")).startswith(run_id)]
    exact = [(p, r) for p, r in found if r.get("run_id") == run_id]
    hits = exact or found
    ids = sorted({str(r.get("run_id")) for _, r in hits})
    if not hits:
        raise KDBenchError("RUN_ID", f"no run record with id {run_id!r} under {runs_dir} (`kdbench runs` lists them)")
    if len(ids) > 1:
        raise KDBenchError("RUN_ID", f"{run_id!r} matches {len(ids)} runs ({', '.join(ids[:5])}"
                                     f"{', ...' if len(ids) > 5 else ''}): give more of the id")
    own = [(p, r) for p, r in hits if p.name == f"{r.get('run_id')}.json"]
    return (own or hits)[0]


def experiment_defaults(rec: Mapping) -> tuple[dict | None, str]:
    """The resolved config of the run's experiment with no other override (its ``experiment=`` and
    ``pair=`` choices only), and how it was composed; ``(None, why)`` when it cannot be composed now."""
    from kdbench.config import compose_job, resolve

    keep = [o for o in (rec.get("overrides") or []) if isinstance(o, str)
            and o.lstrip("+").split("=", 1)[0] in ("experiment", "pair")]
    try:
        return resolve(compose_job(keep)), " ".join(keep) or "the defaults of conf/train.yaml"
    except Exception as e:  # noqa: BLE001 - a config renamed or removed since the run
        return None, f"{' '.join(keep) or 'conf/train.yaml'} does not compose now ({type(e).__name__}: " \
                     f"{str(e).splitlines()[0][:120] if str(e) else ''})"


def config_diff(config: Mapping, defaults: Mapping) -> list[tuple[str, str, str]]:
    """``(key, default, run's value)`` for every computational key where the two configs differ
    (``—``: the key is absent on that side)."""
    from kdbench.identity import computational
    from kdbench.report.frame import config_leaves

    a = config_leaves(computational(dict(defaults)))
    b = config_leaves(computational(dict(config)))
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in b or k not in a or str(a[k]) != str(b[k]):
            out.append((k, _text(a.get(k, "—")), _text(b.get(k, "—"))))
    return out


def _text(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


_METRICS = ("acc", "ece", "nll", "brier", "agreement", "kl_teacher", "ece_ts", "nll_ts")


def metric_rows(rec: Mapping) -> list[dict]:
    """One row per metric: last / best epoch, validation and test (accuracies in %)."""
    from kdbench.report.tables import fmt_value

    m = rec.get("metrics") or {}
    cols = [(f"{w} {s}", ((m.get(w) or {}).get(s) or {})) for w in ("last", "best") for s in ("val", "test")]
    rows = []
    for k in _METRICS:
        if not any(k in vals for _, vals in cols):
            continue
        pct = k in ("acc", "agreement")
        row = {"metric": f"{k} (%)" if pct else k}
        for name, vals in cols:
            row[name] = fmt_value(vals.get(k), 100.0 if pct else 1.0, 2 if pct else 4)
        rows.append(row)
    return rows


def show_run(runs_dir: str | Path, run_id: str, file=None) -> int:
    import pandas as pd

    from kdbench.report.tables import fmt_value

    runs_dir = Path(runs_dir)
    path, rec = find_record(runs_dir, run_id)
    out = file or sys.stdout
    t = rec.get("teacher") or {}
    best = (rec.get("metrics") or {}).get("best") or {}
    say(f"{rec.get('experiment')}/{rec.get('run_id')}: {rec.get('status')}  ({rec.get('variant')}, seed "
          f"{rec.get('seed')}, {rec.get('dataset')}, "
          + (f"teacher {rec.get('teacher_arch')} -> " if rec.get("teacher_arch") else "")
          + f"student {rec.get('student_arch')})", out)
    when = f"started {rec.get('started_at')}" + (f", finished {rec.get('finished_at')}" if rec.get("finished_at") else "")
    wall = rec.get("wall_time_s")
    say(f"  {when}" + (f", {float(wall) / 60:.1f} min" if isinstance(wall, (int, float)) else "")
          + (f", on {rec.get('device')}" if rec.get("device") else ""), out)
    if rec.get("error"):
        say(f"  error: {str(rec['error']).splitlines()[0][:300]}", out)
    if rec.get("status") == "running":
        p = progress(rec, runs_dir)
        if p is not None:
            say(f"  epoch {p['epoch']}/{p['epochs']}, {p['s_per_epoch']:.1f} s/epoch, about {p['eta_s'] / 60:.1f} "
                  "min left" + ("; no progress for a while (stopped?)" if p["stale"] else ""), out)
    defaults, how = experiment_defaults(rec)
    say("", out)
    if defaults is None:
        say(f"config: no diff: {how}", out)
    else:
        diff = config_diff(rec.get("config") or {}, defaults)
        if diff:
            print_table(pd.DataFrame(diff, columns=["key", "default", "this run"]), file=out,
                        title=f"config against its experiment's defaults ({how})")
        else:
            say(f"config: the experiment's defaults ({how})", out)
    rows = metric_rows(rec)
    if rows:
        print_table(pd.DataFrame(rows), right=[c for c in rows[0] if c != "metric"], file=out,
                    title=f"metrics (best = epoch {best.get('epoch')}, the best validation accuracy)")
    if t:
        acc = (t.get("test") or {}).get("acc")
        say(f"teacher: {t.get('name') or t.get('key')} ({t.get('arch')}), test top-1 {fmt_value(acc, 100.0)}%"
              + (f"; {t['drift']}" if t.get("drift") else ""), out)
    say("\nfiles:", out)
    ck = checkpoint_dir(rec, runs_dir)
    files = [("record", str(path))]
    if ck is not None:
        have = sorted(p.name for p in ck.glob("*.ckpt")) if ck.is_dir() else []
        files.append(("checkpoints", f"{ck} ({', '.join(have) if have else 'none there'})"))
        if "best.ckpt" in have:
            files.append(("evaluate", f"kdbench eval ckpt={ck / 'best.ckpt'} {' '.join(rec.get('overrides') or [])}".rstrip()))
    if rec.get("wandb_dir"):
        files.append(("W&B", str(rec["wandb_dir"])))
    page = runs_dir.parent / str(rec.get("experiment")) / "index.html"
    if _plain(rec.get("experiment")) and page.is_file():
        files.append(("report", str(page)))
    for k, v in files:
        say(f"  {k + ':':<13}{v}", out)
    return 0


# --------------------------------------------------------------------------------------------
# kdbench compare
# --------------------------------------------------------------------------------------------


def _summaries(runs_dir: Path, a: str, b: str):
    """Both experiments' summaries, grouped by the same columns (each one's grouping columns, together),
    so that a row of one is the same configuration as the row of the other with the same key."""
    from kdbench.report import build_table
    from kdbench.report.frame import default_group_cols, load_experiment

    frames = [load_experiment(runs_dir, e) for e in (a, b)]
    cols = list(dict.fromkeys(c for fr in frames for c in default_group_cols(fr.df)))
    return [build_table(runs_dir, e, cols, frame=fr)[0] for e, fr in zip((a, b), frames)]


def _row_keys(summary) -> dict[tuple, int]:
    """Row position per configuration key; a scratch row is keyed by its variant alone (α and τ do not
    apply to a student trained on labels)."""
    from kdbench.report.frame import GRID_COLS, group_key

    out = {}
    for i in range(len(summary.table)):
        key = tuple((c, group_key(summary.table[c].iloc[i])) for c in summary.group_cols)
        if dict(key).get("variant") == "scratch":
            key = tuple((c, v) for c, v in key if c not in GRID_COLS[1:])
        out.setdefault(key, i)
    return out


def _label(key: tuple) -> str:
    from kdbench.report.tables import GROUP_HEADERS, fmt_num

    return " ".join(str(v) if c == "variant" else f"{GROUP_HEADERS.get(c, c.rsplit('.', 1)[-1])}={fmt_num(v)}"
                    for c, v in key)


def _compact_cells(summary) -> tuple[list[dict], list[dict], str | None]:
    """The compact table's cells (:func:`kdbench.report.terminal.compact_rows`) of a summary: its teacher
    rows, one row per summary row (same order), each ``{header: cell}``, and its Δ header (vs scratch, or
    vs KD without a scratch row; None without either)."""
    from kdbench.report.terminal import compact_rows

    headers, rows, _, _ = compact_rows(summary.table)
    cells = [dict(zip(headers, r)) for r in rows]
    n_teacher = len(cells) - len(summary.table)
    delta = next((h for h in headers if h.startswith("Δ")), None)
    return cells[:n_teacher], cells[n_teacher:], delta


def comparison_rows(runs_dir: str | Path, a: str, b: str) -> tuple[list[dict], list[str]]:
    """The rows of ``kdbench compare``: the compact table's cells of both experiments (the teachers, then
    per configuration, the variant and the settings that tell a variant's runs apart, one row per
    experiment: n, top-1 last mean ± std, Δ with its 95 % interval) and on B's row the difference B − A
    with its interval over seeds (paired when both ran the same seeds, Welch otherwise). And notes: what
    each Δ is against, configurations that only one side has."""
    from kdbench.report.frame import row_samples
    from kdbench.report.stats import diff_interval
    from kdbench.report.tables import MISSING, fmt_delta_ci

    sa, sb = _summaries(Path(runs_dir), a, b)
    (teach_a, cells_a, delta_a), (teach_b, cells_b, delta_b) = _compact_cells(sa), _compact_cells(sb)
    ka, kb = _row_keys(sa), _row_keys(sb)
    rows, notes = [], []
    for side, teachers in (("A", teach_a), ("B", teach_b)):
        for t in teachers:
            rows.append({"variant": t["variant"], "exp": side, "n": "", "top-1 last (%)": t["top-1 last (%)"],
                         "Δ (pp)": "", "B − A (pp)": ""})
    for key in list(ka) + [k for k in kb if k not in ka]:
        for side, cells, keys, delta in (("A", cells_a, ka, delta_a), ("B", cells_b, kb, delta_b)):
            c = cells[keys[key]] if key in keys else {}
            diff = ""
            if side == "B":
                if key in ka and key in kb:
                    iv = diff_interval(row_samples(sb, kb[key], "last_test_acc"), row_samples(sa, ka[key], "last_test_acc"))
                    diff = fmt_delta_ci(iv.diff * 100.0, iv.lo * 100.0, iv.hi * 100.0)
                else:
                    diff = MISSING
            rows.append({"variant": _label(key) if side == "A" else "", "exp": side, "n": c.get("n", "0"),
                         "top-1 last (%)": c.get("top-1 last (%)", MISSING),
                         "Δ (pp)": c.get(delta, MISSING) if delta else MISSING, "B − A (pp)": diff})
        if key not in ka or key not in kb:
            notes.append(f"{_label(key)}: only in {a if key in ka else b}")
    against = {side: (d or "Δ: no scratch or KD row").split(" (pp)")[0].replace("Δ ", "")
               for side, d in (("A", delta_a), ("B", delta_b))}
    notes.insert(0, f"Δ: A {against['A']}, B {against['B']}" if against["A"] != against["B"]
                 else f"Δ: {against['A']}")
    return rows, notes


def compare(runs_dir: str | Path, a: str, b: str, file=None) -> int:
    import pandas as pd

    rows, notes = comparison_rows(runs_dir, a, b)
    out = file or sys.stdout
    n_teacher = sum(1 for r in rows if r["n"] == "")
    print_table(pd.DataFrame(rows), right=("n", "top-1 last (%)", "Δ (pp)", "B − A (pp)"), file=out,
                sections=[n_teacher - 1, *range(n_teacher + 1, len(rows), 2)],
                title=f"A = {a}, B = {b}: top-1 last, mean ± std over seeds")
    say(f"{notes.pop(0)}. Δ and B − A: percentage points with the 95% interval over seeds [lo, hi] (paired t "
        "when both ran the same seeds, Welch otherwise; n/a: one seed). The full tables: "
              f"{Path(runs_dir).parent / a / 'table.md'}, {Path(runs_dir).parent / b / 'table.md'}.", out)
    for n in notes:
        say(f"  {n}", out)
    return 0


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def build_parser(prog: str = "kdbench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="browse run records")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("runs", help="list runs, or `runs show RUN_ID`")
    r.add_argument("show", nargs="*", metavar="show RUN_ID", help="one run's record")
    r.add_argument("--experiment", default=None)
    r.add_argument("--status", default=None, help="running, complete, failed, diverged, interrupted, debug")
    r.add_argument("--runs-dir", default=None, help="default: the config's paths.runs_dir")
    c = sub.add_parser("compare", help="two experiments side by side")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--runs-dir", default=None, help="default: the config's paths.runs_dir")
    return p


def default_runs_dir() -> Path:
    """The runs folder the config names (``paths.runs_dir``, with this machine's ``conf/local`` overrides)."""
    from kdbench.config import compose_job
    from kdbench.files import abs_path

    return abs_path(compose_job([]).paths.runs_dir)


@exit_codes()
def main(argv: list[str] | None = None) -> int:
    """``kdbench runs ...`` / ``kdbench compare ...`` (``argv`` starts with the subcommand)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.runs_dir is None:
        args.runs_dir = default_runs_dir()
    if args.cmd == "compare":
        return compare(args.runs_dir, args.a, args.b)
    if args.show:
        if args.show[0] != "show" or len(args.show) != 2:
            raise KDBenchError("runs", f"unknown arguments {' '.join(args.show)!r}; usage: kdbench runs "
                                       "[--experiment X] [--status S] | kdbench runs show RUN_ID")
        return show_run(args.runs_dir, args.show[1])
    return list_runs(args.runs_dir, args.experiment, args.status)
