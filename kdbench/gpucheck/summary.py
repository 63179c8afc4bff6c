"""What ``make gpu-check`` writes: ``<device>.md`` (through the bench's one table writer), ``summary.json`` and
``records.tar.gz``; each is written from whatever the parts left, also when they failed or ran out of time."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from kdbench.bench.table import Report, Section
from kdbench.gpucheck import PARTS

WHAT = {"checks": "(a) the CUDA tests, and one epoch per method family on a slice (bf16, compiled)",
        "bench": "(b) make bench's GPU sections: 3 pairs x batch 64/256 x online/cached; fused K = 1, 4, 8",
        "run": "(c) 10-epoch CIFAR-10 (JPEG q75 copy) KD resnet56 -> resnet20, killed and resumed"}
LOG_CAP = 15 * 2**20  # the `run` tool brings back files of up to 16 MiB


def pct(x) -> float | str:
    return round(100 * x, 2) if isinstance(x, (int, float)) else "-"


def failures(results: dict[str, dict]) -> list[str]:
    """One line per thing that did not succeed, naming the part, the run or section, and the error."""
    out = []
    setup = results.get("setup") or {}
    if setup.get("status") not in ("ok", None):
        out.append(f"setup: {setup.get('status')}: {setup.get('error', '')}")
    for name in PARTS:
        res = results.get(name) or {}
        for it in res.get("items", []):
            if it.get("status") not in ("ok", None):
                out.append(f"{name} / {it['name']}: {it['status']}"
                           + (f" ({it['kind']})" if it.get("kind") else "") + (f": {it['error']}" if it.get("error") else ""))
                if it.get("failed"):
                    out.append(f"{name} / {it['name']}: failed tests: {', '.join(it['failed'])}")
        for key, sec in (res.get("sections") or {}).items():
            if sec.get("status") != "ok":
                out.append(f"{name} / {key}: {sec.get('status')}" + (f" ({sec['kind']})" if sec.get("kind") else "")
                           + (f": {sec['error']}" if sec.get("error") else ""))
        if res.get("status") not in ("ok", "not selected") and not res.get("items") and not res.get("sections"):
            out.append(f"{name}: {res.get('status')}" + (f": {res['error']}" if res.get("error") else ""))
        elif res.get("status") not in ("ok", "not selected") and res.get("error"):
            out.append(f"{name}: {res.get('status')}: {res['error']}")
    return out


def write_summary(out: Path, name: str, header: dict, results: dict[str, dict], plan) -> Path:
    """The summary tables, one section per part, a part that did not run or finish saying so."""
    rep = Report()
    rep.emit(f"# kdbench GPU check: {header['device']}" + (" (DRY RUN on CPU)" if plan.dry_run else ""))
    rep.emit()
    rep.emit(f"{header['started']} UTC; torch {header['torch']}, CUDA {header['cuda']}, Python {header['python']}; "
             f"{header['setup']}; total {header['seconds']:.0f} s of a {plan.total_s:.0f} s budget.")
    if plan.dry_run:
        rep.emit("A rehearsal on CPU at tiny sizes (float32, not compiled, K = 1, 2): its numbers measure nothing.")
    rep.section(Section("Parts", [{"part": p, "what": WHAT[p], "status": (results.get(p) or {}).get("status", "not run"),
                                   "seconds": round((results.get(p) or {}).get("seconds", 0.0), 1),
                                   "budget (s)": round((results.get(p) or {}).get("budget", 0.0))} for p in PARTS]))
    bad = failures(results)
    rep.emit("\n## Failures\n")
    for line in bad or ["none"]:
        rep.emit(f"- {line}")

    res = results.get("checks") or {}
    rows = []
    notes = []
    for it in res.get("items", []):
        if it["family"] == "tests":
            notes.append(f"CUDA tests ({', '.join(plan.test_files)}; the tests skipped without CUDA): "
                         f"{it.get('tests', 0)} collected, {it.get('passed', 0)} passed, {it.get('failures', 0)} failed, "
                         f"{it.get('errors', 0)} errors, {it.get('skipped', 0)} skipped; {it['status']}.")
            continue
        ran = f"{it['precision']}{', compiled' if it.get('compiled') else ''}" if it.get("precision") else "-"
        rows.append({"run": it["name"], "family": it["family"], "what": it["what"], "status": it["status"],
                     "ran (record)": ran, "seconds": it.get("seconds", "-"), "test acc %": pct(it.get("acc")),
                     "error": f"{it.get('kind')}: {it['error']}" if it.get("error") else ""})
    notes.append(f"Smoke runs: {' '.join(plan.trainer)}, {plan.smoke.get('train_subset')} training / "
                 f"{plan.smoke.get('test_subset')} test images of the CIFAR-10 JPEG copy (resnet20 -> resnet8), "
                 f"{plan.smoke.get('n_tokens')} token sequences; one epoch each. Part status: {res.get('status', 'not run')}.")
    rep.section(Section("(a) CUDA tests and smoke runs", rows, notes))

    res = results.get("bench") or {}
    secs = res.get("sections") or {}
    if not secs:
        rep.section(Section("(b) bench", [], [f"Part status: {res.get('status', 'not run')}."]))
    for sec in secs.values():
        notes = [f"{sec['status']} after {sec.get('seconds', '-')} s" + (f": {sec['error']}" if sec.get("error") else "")]
        rep.section(Section(f"(b) {sec['title']}", sec.get("rows", []), notes, sec.get("targets")))
    if res.get("harness_targets"):
        rep.emit("\n## (b) harness: notes and speed targets\n")
        for line in [*res.get("harness_notes", []), "", *res["harness_targets"]]:
            rep.emit(line)
    b = plan.bench
    rep.emit(f"\nBench sizes: {b.get('n_train')} training images, {b.get('epochs')} epochs per harness fit, augment "
             f"{b.get('augment')}, batches {b.get('batches')}; part status: {res.get('status', 'not run')}.")

    res = results.get("run") or {}
    t, first = res.get("teacher") or {}, res.get("first") or {}
    row = {"teacher epochs (batch)": f"{t.get('epochs', '-')} ({t.get('batch', '-')})",
           "teacher acc %": pct(t.get("acc")), "teacher s": t.get("seconds", "-"),
           "killed (SIGKILL) after epochs": first.get("killed_after_epochs", "-"),
           "resumed from epoch": res.get("resumed_from_epoch", "-"),
           "epochs in record": res.get("history_epochs", "-"), "wall s (both processes)": res.get("wall_s", "-"),
           "s / epoch (resumed process)": res.get("s_per_epoch", "-"), "final test acc %": pct(res.get("final_acc")),
           "best-epoch test acc %": pct(res.get("best_acc")), "record": res.get("record_status", "-"),
           "status": res.get("status", "not run")}
    notes = [res.get("what", WHAT["run"])] + ([f"command: `{res['command']}`"] if res.get("command") else [])
    if res.get("error"):
        notes.append(f"error ({res.get('kind')}): {res['error']}")
    rep.section(Section("(c) 10-epoch CIFAR-10 run, killed and resumed", [row], notes))
    return rep.write(out / f"{name}.md")


def write_json(out: Path, header: dict, results: dict[str, dict]) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps({"header": header, "parts": results, "failures": failures(results)}, indent=1,
                               default=str) + "\n")
    return path


def archive(out: Path, work: Path) -> Path:
    """``records.tar.gz``: the run records, the parts' results, the test report, the plan, progress files."""
    path = out / "records.tar.gz"
    globs = ("plan.json", "tests.xml", "parts/*.json", "results/runs/**/*.json", "results/checkpoints/*/*/progress.json",
             "results/teachers/*/*.json")
    with tarfile.open(path, "w:gz") as tar:
        for g in globs:
            for f in sorted(work.glob(g)):
                if f.is_file():
                    tar.add(f, arcname=str(f.relative_to(work)))
    return path


def cap_log(path: Path, cap: int = LOG_CAP) -> None:
    """Keep a log under ``cap`` bytes: its head and its tail, with a line saying what was cut."""
    if not path.exists() or path.stat().st_size <= cap:
        return
    data = path.read_bytes()
    half = cap // 2
    cut = len(data) - 2 * half
    path.write_bytes(data[:half] + f"\n[... {cut} bytes cut: the log was over {cap} bytes ...]\n".encode() + data[-half:])
