"""``index.html``: one self-contained page per study, to open without an account or a network.

The sortable results table (click a header; ``#sort=<column>&dir=asc|desc`` in the address sorts on
load), the figures embedded as data URIs, the config keys in which the variants differ, the failed
or unreadable runs, and links to every run record (relative, so the folder can be moved or zipped).
No CDN, no external script or style: everything is in the file.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdbench.report.frame import config_leaves
from kdbench.report.tables import Display

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .55rem;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.left,th.left{text-align:left}
p.note{color:#555;font-size:.85rem;max-width:70rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
div.scroll{overflow-x:auto}
"""

_JS = """
(function(){
  var table=document.getElementById('results');if(!table)return;
  var body=table.tBodies[0],heads=table.tHead.rows[0].cells;
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
  var m=/sort=(\\d+)(?:&dir=(asc|desc))?/.exec(location.hash||'');
  if(m&&+m[1]<heads.length){sortBy(+m[1],m[2]||'asc');}
})();
"""

_NUMBER = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?)")


def _sort_value(cell: Any) -> str:
    """The number a cell starts with (``95.17 ± 0.21`` -> 95.17), for sorting; '' for text."""
    m = _NUMBER.match(str(cell).replace("−", "-"))
    return m.group(1) if m else ""


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


#: keys that always differ between runs and say nothing about a variant
_NOT_A_DIFFERENCE = ("seed", "data_seed", "paths.", "hydra", "logger.", "tags", "trainer.progress")


def config_differences(records: Sequence[Mapping]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``(keys, {variant: {key: value}})``: the config keys whose value differs between variants
    (one value per variant; ``a | b`` when the runs of one variant disagree)."""
    per: dict[str, dict[str, set]] = {}
    for r in records:
        v = str(r.get("variant"))
        for k, val in config_leaves(r.get("config") or {}).items():
            if not k.startswith(_NOT_A_DIFFERENCE) and k not in _NOT_A_DIFFERENCE:
                per.setdefault(v, {}).setdefault(k, set()).add(str(val))
    keys = sorted({k for vals in per.values() for k in vals})
    differ = [k for k in keys if len({" | ".join(sorted(per[v].get(k, {"—"}))) for v in per}) > 1]
    return differ, {v: {k: " | ".join(sorted(per[v].get(k, {"—"}))) for k in differ} for v in per}


def render_html(experiment: str, display: Display, *, caption: str, plots: Mapping[str, Path],
                records: Sequence[tuple[Path, Mapping]], out_dir: Path, notes: Sequence[str] = ()) -> str:
    """The page of one experiment: ``display``'s table (and its failed runs), the figures, the config
    differences and links to ``records`` (relative to ``out_dir``)."""
    e = html.escape
    display_df, failed = display.table, display.failed
    cols = list(display_df.columns)
    n_left = len(display.group_cols or ["variant"])
    head = "".join(f'<th class="{"left" if i < n_left else ""}">{e(str(c))}</th>' for i, c in enumerate(cols))
    rows = []
    for _, row in display_df.iterrows():
        cells = []
        for i, c in enumerate(cols):
            val = row[c]
            sv = "" if i < n_left else _sort_value(val)
            cells.append(f'<td class="{"left" if i < n_left else ""}" data-sort="{e(sv)}">{e(str(val))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kdbench: {e(experiment)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{e(caption)}</h1>"]
    parts += [f'<p class="note">{e(n)}</p>' for n in notes if n]
    parts.append(f'<h2>Results</h2><div class="scroll"><table id="results"><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')
    titles = {"reliability": "Reliability diagrams per variant (last epoch, bins pooled over seeds; the ECE is the table's)",
              "learning_curves": "Learning curves", "tau_curves": "Accuracy against the temperature",
              "seed_bars": "Top-1 per variant, one dot per seed", "acc_vs_ece": "Accuracy against ECE"}
    figs = [f'<figure><img alt="{e(name)}" src="{_img(p)}"><figcaption>{e(titles.get(name, name))}</figcaption></figure>'
            for name, p in plots.items() if p is not None and Path(p).is_file()]
    if figs:
        parts.append("<h2>Figures</h2>" + "".join(figs))
    keys, diffs = config_differences([r for _, r in records])
    if keys:
        head = "".join(f"<th>{e(k)}</th>" for k in keys)
        body = "".join(f'<tr><td class="left">{e(v)}</td>' + "".join(f"<td>{e(d[k])}</td>" for k in keys) + "</tr>"
                       for v, d in sorted(diffs.items()))
        parts.append(f'<h2>How the variants differ (config)</h2><table id="config"><thead><tr><th class="left">variant</th>'
                     f"{head}</tr></thead><tbody>{body}</tbody></table>")
    if failed:
        body = "".join(f'<tr><td class="left">{e(str(f.get("run_id") or ""))}</td><td class="left">{e(str(f.get("status")))}</td>'
                       f'<td class="left">{e(str(f.get("error") or ""))}</td></tr>' for f in failed)
        parts.append('<h2>Failed or unreadable runs</h2><table id="failed"><thead><tr><th class="left">run</th>'
                     f'<th class="left">status</th><th class="left">error</th></tr></thead><tbody>{body}</tbody></table>')
    links = []
    for path, r in sorted(records, key=lambda pr: (str(pr[1].get("variant")), str(pr[1].get("seed")))):
        rel = os.path.relpath(Path(path).absolute(), Path(out_dir).absolute())
        links.append(f'<li><a href="{e(Path(rel).as_posix())}">{e(str(r.get("run_id")))}</a> '
                     f'({e(str(r.get("variant")))}, seed {e(str(r.get("seed")))}, {e(str(r.get("status")))})</li>')
    parts.append(f'<h2>Run records</h2><ul id="records">{"".join(links)}</ul>')
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
