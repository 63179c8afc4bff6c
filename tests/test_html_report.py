"""The self-contained HTML report (issue 14 part 6, issue 24 #10), loaded in a real headless Chromium
(Debian's package): the table rows and the images are there, a column sorts, a screenshot renders, and
at 1280 and 1400 px nothing overflows sideways while the compact columns are all in view."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kdbench import report
from kdbench.records import write_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ACC = {"scratch": [0.89, 0.90, 0.91], "kd": [0.94, 0.95, 0.965], "kd_t1": [0.925, 0.93, 0.935]}


def _record(variant: str, seed: int) -> dict:
    acc = ACC[variant][seed]
    test = {"acc": acc, "ece": 0.02 + 0.01 * seed, "mce": 0.1, "nll": 1 - acc, "brier": (1 - acc) / 2,
            "ece_ts": 0.01, "nll_ts": 0.9 - acc}
    if variant != "scratch":  # every column of a full table: 16 of them
        test |= {"agreement": acc + 0.02, "kl_teacher": 0.05 + 0.01 * seed}
    edges = [i / 15 for i in range(16)]
    rel = {"edges": edges, "confidence": [0.9 if i == 13 else 0.0 for i in range(15)],
           "accuracy": [acc if i == 13 else 0.0 for i in range(15)], "count": [100.0 if i == 13 else 0.0 for i in range(15)]}
    tau = 1.0 if variant == "kd_t1" else 4.0
    return {"run_id": f"{variant}-s{seed}", "experiment": "page", "variant": variant, "seed": seed, "status": "complete",
            "error": None, "overrides": [], "dataset": "digits", "teacher_arch": "mlp", "student_arch": "mlp_tiny",
            "config": {"seed": seed, "distill": {"tau": tau, "method": "none" if variant == "scratch" else "kd"},
                       # a long value without a space: the config table wraps it rather than scroll sideways
                       "student": {"kwargs": {"note": ("x" * 160) if variant == "kd_t1" else "y"}}},
            "distill": {"variant": variant, "tau": tau}, "teacher": {"test": {"acc": 0.98}},
            "metrics": {"last": {"epoch": 2, "val": {"acc": acc}, "test": test},
                        "best": {"epoch": 2, "val": {"acc": acc}, "test": test}},
            "history": [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_acc": acc} for e in range(3)],
            "reliability": {"last": rel, "best": rel}}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("page")
    runs = tmp_path / "results" / "runs" / "page"
    for v in ACC:
        for s in range(3):
            write_record(runs / f"{v}-s{s}.json", _record(v, s))
    out = report.make_report(tmp_path / "results" / "runs", "page")
    return out["tables"]["html"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.rows, self._in, self._row, self.table = [], [], [], None, None, None
        self._ref = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        if tag == "tbody" and self.table == "results":
            self._ref = a.get("class") == "reference"  # the teacher's row: not one of the sorted rows
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.srcs.append(a.get("src") or a.get("href"))
        if tag == "a":
            self.hrefs.append(a.get("href"))
        if tag == "tr" and self.table == "results" and not self._ref:
            self._row = []
        if tag == "td" and self._row is not None:
            self._in = ""

    def handle_data(self, data):
        if self._in is not None:
            self._in += data

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._in is not None:
            self._row.append(self._in.strip())
            self._in = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append(self._row)
            self._row = None
        if tag == "table":
            self.table = None


def test_the_page_is_self_contained_with_rows_images_differences_and_record_links(page):
    p = _Page()
    text = page.read_text()
    p.feed(text)
    assert [r[0] for r in p.rows] == ["scratch", "kd", "kd_t1"]
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)  # no network, no CDN
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert len(p.hrefs) == 9 and all((page.parent / h).is_file() for h in p.hrefs)  # relative links to records
    config = text.split('<table id="config"', 1)[1].split("</table>", 1)[0].replace("<wbr>", "")
    assert "distill.tau" in config and "distill.method" in config and "student.kwargs.note" in config


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (make test installs it as root)")
def test_the_page_in_a_headless_chromium_sorts_and_renders(page, tmp_path):
    url = page.absolute().as_uri()
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    # column 2 (top-1 last) sorted descending by the page's own script, as a click on its header does
    dom = subprocess.run([*base, "--dump-dom", url + "#sort=2&dir=desc"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    p = _Page()
    p.feed(dom.stdout)
    assert 'data-sorted="2:desc"' in dom.stdout  # the script ran in the browser
    assert [r[0] for r in p.rows] == ["kd", "kd_t1", "scratch"]
    asc = subprocess.run([*base, "--dump-dom", url + "#sort=0&dir=asc"], capture_output=True, text=True, timeout=120)
    q = _Page()
    q.feed(asc.stdout)
    assert [r[0] for r in q.rows] == ["kd", "kd_t1", "scratch"] and 'data-sorted="0:asc"' in asc.stdout
    shot = tmp_path / "shot.png"
    res = subprocess.run([*base, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, 1600) and hi - lo > 100  # something was drawn, not a blank page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (make test installs it as root)")
def test_the_committed_mnist_ablation_page_renders_and_sorts_in_chromium(tmp_path):
    page = Path(__file__).resolve().parent.parent / "results" / "mnist_ablation" / "index.html"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri() + "#sort=2&dir=desc"], capture_output=True, text=True,
                         timeout=120)
    p = _Page()
    p.feed(dom.stdout)
    accs = [float(r[2].split()[0]) for r in p.rows]
    assert len(p.rows) == 8 and accs == sorted(accs, reverse=True)  # 8 variants, sorted by top-1 last
    assert p.hrefs and all(not Path(h).is_absolute() and (page.parent / h).is_file() for h in p.hrefs)
    shot = tmp_path / "ablation.png"
    subprocess.run([*base, "--window-size=1400,1800", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    from PIL import Image

    lo, hi = Image.open(shot).convert("L").getextrema()
    assert hi - lo > 100
    o = _probe(page, 1280, tmp_path)  # the committed page as regenerated: fits, compact columns in view
    assert o["closed"] <= 1280 and o["open"] <= 1280 and [c[0] for c in o["cols"]] == COMPACT
    assert all(right <= 1280 for _, _, right in o["cols"])


#: appended to a copy of a page: what a reader sees at the window's width, written into the DOM
_PROBE = """<script>(function(){var d=document.documentElement,o={vw:window.innerWidth,closed:d.scrollWidth,cols:[]};
var hs=document.querySelectorAll('#results thead th');
for(var i=0;i<hs.length;i++){var r=hs[i].getBoundingClientRect();o.cols.push([hs[i].textContent,r.left,r.right]);}
var det=document.getElementById('all-columns');if(det){det.open=true;}o.open=d.scrollWidth;
document.body.setAttribute('data-probe',JSON.stringify(o));})();</script></body>"""
COMPACT = ["variant", "n", "top-1 last (%)", "Δ vs scratch (pp)", "ECE last", "agreement last (%)"]


def _probe(page: Path, width: int, tmp_path: Path) -> dict:
    probed = tmp_path / f"probe-{width}.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},900", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert m, dom.stderr[-1000:]
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (make test installs it as root)")
def test_at_1280_and_1400_px_nothing_overflows_and_the_compact_columns_are_in_view(page, tmp_path):
    for width in (1280, 1400):
        o = _probe(page, width, tmp_path)
        assert o["vw"] == width
        assert o["closed"] <= width and o["open"] <= width, o  # the full table scrolls inside its own box
        assert [c[0] for c in o["cols"]] == COMPACT
        assert all(0 <= left and right <= width for _, left, right in o["cols"]), o["cols"]
