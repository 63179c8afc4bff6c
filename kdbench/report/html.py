"""``index.html``: one self-contained page per study, to open without an account or a network.

A title naming teacher and student, the teacher's accuracy, the compact sortable results table (click a
header; ``#sort=<column>&dir=asc|desc`` in the address sorts on load) with every column behind a toggle,
the figures embedded as data URIs, the config keys in which the variants differ (only those), the failed
or unreadable runs, and links to every run record (relative, so the folder can be moved or zipped).
No CDN, no external script or style: everything is in the file; it fits 1280 px without scrolling sideways.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.identity import computational, is_computational
from kdbench.report.frame import config_leaves, group_sort_key, to_float
from kdbench.report.plots import columns_apart, short_cells, teachers_of
from kdbench.report.tables import MISSING, Display, fmt_value, short_header

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.45rem;margin-bottom:.4rem}h2{font-size:1.15rem;margin-top:2rem}
p.teacher{font-size:.95rem;margin:.2rem 0 .8rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .55rem;text-align:right;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.left,th.left{text-align:left}
tbody.reference td{font-style:italic;color:#444;background:#faf7ff}
table.wrap{width:100%;table-layout:auto}
table.wrap th,table.wrap td{white-space:normal;overflow-wrap:anywhere;text-align:left;vertical-align:top}
p.note{color:#555;font-size:.85rem;max-width:70rem}
details{margin:.6rem 0}summary{cursor:pointer;font-size:.9rem;color:#333}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
div.scroll{overflow-x:auto;max-width:100%}
ul#records{font-size:.85rem;overflow-wrap:anywhere}
"""

_JS = """
(function(){
  function sortable(table){
    var body=table.querySelector('tbody.rows')||table.tBodies[0],heads=table.tHead.rows[0].cells;
    function key(td){var v=td.getAttribute('data-sort');if(v!==null&&v!==''){return parseFloat(v);}return td.textContent.trim().toLowerCase();}
    function sortBy(col,dir){
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
        var xn=typeof x==='number'&&!isNaN(x),yn=typeof y==='number'&&!isNaN(y);
        if(xn&&!yn)return -1;if(yn&&!xn)return 1;
        var c=(x<y)?-1:(x>y)?1:0;return dir==='desc'?-c:c;});
      rows.forEach(function(r){body.appendChild(r);});
      for(var i=0;i<heads.length;i++){heads[i].classList.remove('sorted-asc','sorted-desc');}
      heads[col].classList.add(dir==='desc'?'sorted-desc':'sorted-asc');
      table.setAttribute('data-sorted',col+':'+dir);
    }
    for(var i=0;i<heads.length;i++){(function(c){heads[c].addEventListener('click',function(){
      var d=heads[c].classList.contains('sorted-asc')?'desc':'asc';sortBy(c,d);});})(i);}
    return {sortBy:sortBy,n:heads.length};
  }
  var tables=document.querySelectorAll('table.sortable'),main=null;
  for(var t=0;t<tables.length;t++){var s=sortable(tables[t]);if(tables[t].id==='results'){main=s;}}
  var m=/sort=(\\d+)(?:&dir=(asc|desc))?/.exec(location.hash||'');
  if(main&&m&&+m[1]<main.n){main.sortBy(+m[1],m[2]||'asc');}
})();
"""

#: the columns the page shows first (when present), after the group columns: the rest is behind a toggle
COMPACT_COLUMNS = ("n", "top-1 last (%)", "Δ vs scratch (pp)", "ECE last", "agreement last (%)")

_NUMBER = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def _sort_value(cell: Any) -> str:
    """The number a cell starts with (``95.17 ± 0.21`` -> 95.17), for sorting; '' for text."""
    m = _NUMBER.match(str(cell).replace("−", "-"))
    return m.group(1) if m else ""


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


#: keys that always differ between runs or say nothing about a variant (the variant is the row itself)
_NOT_A_DIFFERENCE = ("seed", "data_seed", "tags", "distill.variant")
#: a run trained on labels only reads none of these: not compared for it (shown as "—")
_DISTILLING_ONLY = ("distill.", "teacher.", "teacher_signal")


def _labels_only(cfg: Mapping) -> bool:
    d = cfg.get("distill") if isinstance(cfg.get("distill"), Mapping) else {}
    return d.get("method") == "none" or d.get("enabled") is False


def _compared_leaves(cfg: Any) -> dict[str, str]:
    """The keys of one run's config the page compares: what the run computed with
    (:func:`kdbench.identity.computational`), less the run's own seeds, and for a labels-only run every
    distillation and teacher key but ``distill.method``."""
    cfg = cfg if isinstance(cfg, Mapping) else {}
    flat = {k: str(v) for k, v in config_leaves(computational(cfg)).items()
            if is_computational(k) and not any(k == n or k.startswith(n + ".") for n in _NOT_A_DIFFERENCE)}
    if _labels_only(cfg):
        flat = {k: v for k, v in flat.items() if k == "distill.method" or not k.startswith(_DISTILLING_ONLY)}
    return flat


def config_differences(records: Sequence[Mapping]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``(keys, {variant: {key: value}})``: the config keys in which the variants (or the runs of one
    variant) differ, each variant's value (``a | b`` when its runs disagree, ``—`` where it does not have
    the key).

    A key is listed when the variants that have it hold different values, when the runs of one variant do,
    or when a variant lacks a key that another of the same method has (a ``+key`` of one variant). A key
    with one value wherever it applies is not: ``distill.alpha`` of every KD row, a DKD-only key, a
    distillation key of the labels-only (scratch) runs, which read none of them.
    """
    runs_of: dict[str, list[dict[str, str]]] = {}
    method_of: dict[str, set] = {}
    for r in records:
        v = str(r.get("variant"))
        flat = _compared_leaves(r.get("config"))
        runs_of.setdefault(v, []).append(flat)
        method_of.setdefault(v, set()).add(flat.get("distill.method"))
    per: dict[str, dict[str, str]] = {}
    spread = set()
    for v, runs in runs_of.items():
        keys = {k for flat in runs for k in flat}
        for k in keys:
            vals = {flat.get(k, MISSING) for flat in runs}
            if len(vals) > 1:
                spread.add(k)
            per.setdefault(v, {})[k] = " | ".join(sorted(vals))
    differ = []
    for k in sorted({k for vals in per.values() for k in vals}):
        having = [v for v in per if k in per[v]]
        methods = {m for v in having for m in method_of[v]}
        lacking = [v for v in per if k not in per[v] and method_of[v] & methods]
        if k in spread or len({per[v][k] for v in having}) > 1 or lacking:
            differ.append(k)
    return differ, {v: {k: per[v].get(k, MISSING) for k in differ} for v in per}


def _variant_order(v: str) -> tuple:
    return group_sort_key((v,), ["variant"])


def _fmt_teacher(t: Mapping) -> str:
    acc = fmt_value(t["acc"], 100.0, 2)
    bits = [f"test top-1 {acc} %" if acc != MISSING else "test top-1 not in the records (a captured signal has none)"]
    if not math.isnan(to_float(t["ece"])):
        bits.append(f"ECE {fmt_value(t['ece'], 1.0, 4)}")
    text = f"{t['arch']}" + (f" ({t['name']})" if t.get("name") else "") + ", " + ", ".join(bits)
    text += f"; {t['runs']} run{'s' if t['runs'] != 1 else ''} distilled from it"
    if t.get("changed"):
        moved = "; ".join(f"{v}: {', '.join(fmt_value(a, 100.0, 2) for a in accs)} %"
                          for v, accs in sorted(t["changed"].items()))
        text += f". Re-measured after runs that changed it: {moved}"
    return text + "."


def page_title(experiment: str, records: Sequence[Mapping], caption: str | None = None) -> str:
    """``experiment: teacher T → student S on D`` from the records (``caption`` when they name no student)."""
    def one(key):
        vals = sorted({str(r.get(key)) for r in records if r.get(key) is not None})
        return "/".join(vals) if vals else None

    distilled = [r for r in records if not _labels_only(r.get("config") or {})]
    teacher = "/".join(sorted({str(t["arch"]) for t in teachers_of(distilled)}))
    if not teacher and distilled:
        teacher = "/".join(sorted({str(r.get("teacher_arch")) for r in distilled if r.get("teacher_arch")}))
    student, data = one("student_arch"), one("dataset")
    if not student:
        return caption or experiment
    pair = f"teacher {teacher} → student {student}" if teacher else f"student {student}"
    return f"{experiment}: {pair}" + (f" on {data}" if data else "")


def _table(table_id: str, df, n_left: int, reference: Sequence[Mapping[str, str]] = ()) -> str:
    e = html.escape
    cols = list(df.columns)
    head = "".join(f'<th class="{"left" if i < n_left else ""}">{e(str(c))}</th>' for i, c in enumerate(cols))
    ref = "".join("<tr>" + "".join(f'<td class="{"left" if i < n_left else ""}">{e(r.get(c, ""))}</td>'
                                   for i, c in enumerate(cols)) + "</tr>" for r in reference)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for i, c in enumerate(cols):
            val = row[c]
            sv = "" if i < n_left else _sort_value(val)
            cells.append(f'<td class="{"left" if i < n_left else ""}" data-sort="{e(sv)}">{e(str(val))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            + (f'<tbody class="reference">{ref}</tbody>' if ref else "")
            + f'<tbody class="rows">{"".join(rows)}</tbody></table>')


def compact_table(display: Display):
    """``(table, n_left)``: the page's first table. The variant and only the config columns that tell its
    rows apart (:func:`kdbench.report.plots.columns_apart`, short names, paths as their last part; a row
    that would be bare beside others of its variant keeps the columns it has), then :data:`COMPACT_COLUMNS`."""
    import pandas as pd

    df = display.table
    cols = list(df.columns)
    gcols = list(display.group_cols or ["variant"])
    n_left = len(gcols)
    vi = gcols.index("variant") if "variant" in gcols else None
    keys = [tuple(v if i == vi or str(v) != MISSING else None for i, v in enumerate(row))
            for row in df[cols[:n_left]].itertuples(index=False, name=None)]
    cells = short_cells(keys, gcols)
    keep = columns_apart(keys, gcols)
    for j, k in enumerate(keys):
        if vi is not None and sum(kk[vi] == k[vi] for kk in keys) > 1 and all(cells[i][j] is None for i in keep):
            keep += [i for i in cells if cells[i][j] is not None and i not in keep]
    data: dict[str, list] = {}
    if vi is not None:
        data[cols[vi]] = df[cols[vi]].tolist()
    for i in sorted(set(keep)):
        data[short_header(gcols[i], gcols)] = [MISSING if c is None else c for c in cells[i]]
    for c in COMPACT_COLUMNS:
        if c in cols[n_left:]:
            data[c] = df[c].tolist()
    return pd.DataFrame(data), len(data) - sum(c in cols[n_left:] for c in COMPACT_COLUMNS)


def _teacher_rows(teachers: Sequence[Mapping], cols: Sequence[str], n_left: int) -> list[dict[str, str]]:
    out = []
    for t in teachers:
        row = {c: MISSING for c in cols[n_left:]}
        row.update({c: "" for c in cols[:n_left]})
        row[cols[0]] = f"teacher: {t['arch']}"
        if "n" in row:
            row["n"] = ""
        if "top-1 last (%)" in row:
            row["top-1 last (%)"] = fmt_value(t["acc"], 100.0, 2)
        if "ECE last" in row:
            row["ECE last"] = fmt_value(t["ece"], 1.0, 4)
        out.append(row)
    return out


def _wbr(key: str) -> str:
    """A dotted key that may break after its dots."""
    return "<wbr>".join(html.escape(p) + "." for p in key.split(".")[:-1]) + "<wbr>" + html.escape(key.split(".")[-1]) \
        if "." in key else html.escape(key)


def render_html(experiment: str, display: Display, *, caption: str, plots: Mapping[str, Path],
                records: Sequence[tuple[Path, Mapping]], out_dir: Path, notes: Sequence[str] = ()) -> str:
    """The page of one experiment: a title naming teacher and student, the teacher's line, ``display``'s
    compact table (:func:`compact_table`, the teacher as a reference row) with every column behind a
    toggle, the figures, the config keys in which the variants differ, the failed runs and links to
    ``records`` (relative to ``out_dir``)."""
    e = html.escape
    recs = [r for _, r in records]
    display_df, failed = display.table, display.failed
    cols = list(display_df.columns)
    n_left = len(display.group_cols or ["variant"])
    compact, c_left = compact_table(display)
    teachers = teachers_of(recs)
    title = page_title(experiment, recs, caption)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kdbench: {e(experiment)}</title>"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    if teachers:
        label = "Teacher" if len(teachers) == 1 else "Teachers"
        parts.append(f'<p class="teacher" id="teacher"><b>{label}:</b> '
                     + " ".join(e(_fmt_teacher(t)) for t in teachers) + "</p>")
    parts += [f'<p class="note">{e(n)}</p>' for n in notes if n]
    parts.append('<h2>Results</h2><div class="scroll">'
                 + _table("results", compact, c_left, _teacher_rows(teachers, list(compact.columns), c_left))
                 + "</div>")
    rest = [c for c in cols[n_left:] if c not in compact.columns]
    if rest:
        parts.append(f'<details id="all-columns"><summary>All {len(cols)} columns (also {e(" · ".join(rest))})</summary>'
                     f'<div class="scroll">{_table("results-full", display_df, n_left)}</div></details>')
    titles = {"reliability": "Reliability diagrams per variant (last epoch, bins pooled over seeds; the ECE is the table's)",
              "learning_curves": "Learning curves (validation top-1; the teacher's test top-1 as a line)",
              "tau_curves": "Accuracy and ECE against the temperature",
              "seed_bars": "Top-1 per variant against the scratch student: Δ with its 95 % interval, one dot per seed",
              "acc_vs_ece": "Accuracy against ECE (the teacher as a star)"}
    figs = [f'<figure><img alt="{e(name)}" src="{_img(p)}"><figcaption>{e(titles.get(name, name))}</figcaption></figure>'
            for name, p in plots.items() if p is not None and Path(p).is_file()]
    if figs:
        parts.append("<h2>Figures</h2>" + "".join(figs))
    keys, diffs = config_differences(recs)
    if keys:
        head = "".join(f"<th>{_wbr(k)}</th>" for k in keys)
        body = "".join(f'<tr><td>{e(v)}</td>' + "".join(f"<td>{e(d[k])}</td>" for k in keys) + "</tr>"
                       for v, d in sorted(diffs.items(), key=lambda vd: _variant_order(vd[0])))
        parts.append('<h2>How the variants differ (config)</h2><p class="note">Only the keys whose value differs '
                     "between variants or between the runs of one; — : the variant does not have the key (a "
                     'labels-only run reads no distillation key).</p><table id="config" class="wrap"><thead><tr>'
                     f"<th>variant</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    if failed:
        body = "".join(f'<tr><td>{e(str(f.get("run_id") or ""))}</td><td>{e(str(f.get("status")))}</td>'
                       f'<td>{e(str(f.get("error") or ""))}</td></tr>' for f in failed)
        parts.append('<h2>Failed or unreadable runs</h2><table id="failed" class="wrap"><thead><tr><th>run</th>'
                     f'<th>status</th><th>error</th></tr></thead><tbody>{body}</tbody></table>')
    links = []
    for path, r in sorted(records, key=lambda pr: (str(pr[1].get("variant")), str(pr[1].get("seed")))):
        rel = os.path.relpath(Path(path).absolute(), Path(out_dir).absolute())
        links.append(f'<li><a href="{e(Path(rel).as_posix())}">{e(str(r.get("run_id")))}</a> '
                     f'({e(str(r.get("variant")))}, seed {e(str(r.get("seed")))}, {e(str(r.get("status")))})</li>')
    parts.append(f'<h2>Run records</h2><ul id="records">{"".join(links)}</ul>')
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
