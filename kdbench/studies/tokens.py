"""Issue 12's question as a table: ``python -m kdbench.studies.tokens [--experiment tokens_markov ...]``.

"How much of the teacher's quality did the student keep?" For each arm of a token study (scratch,
the live teacher, the captured top-k teacher with k, mode and KL direction), over its seeds, from the run
records (``<results>/runs/<experiment>/*.json``): test NLL and perplexity over kept tokens, the teacher
kept in NLL terms, ``(scratch NLL − student NLL) / (scratch NLL − teacher NLL)``, against the one scratch
group and the teacher's own test NLL, and, where the data has a known law (``markov``), the exact
KL(true ‖ student) and the teacher's. Writes ``<results>/<experiment>/kept.md`` and ``kept.csv``
beside the generic report (whose rows compare only within one capture configuration).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from kdbench.report.frame import iter_experiment_records
from kdbench.report.tables import markdown_table, write_text_files

COLUMNS = ("arm", "n", "nll", "nll_std", "ppl", "teacher_kept_nll", "kl_to_true", "ece", "agreement")


def arm_of(rec: dict) -> tuple[str, str, str, str, str]:
    """(direction, signal, k, mode, τ) of a record: what the study varies (runs of two temperatures are two arms,
    never averaged together)."""
    c = rec.get("config") or {}
    d = c.get("distill") or {}
    if rec.get("variant") == "scratch":
        return ("scratch", "-", "-", "-", "-")
    direction = "reverse" if d.get("kl") == "reverse" else "forward"
    signal = c.get("teacher_signal", "online")
    tau = f"{float(d['tau']):g}" if d.get("tau") is not None else "-"
    if signal != "captured":
        return (direction, signal, "-", "-", tau)
    return (direction, "captured", str((c.get("teacher_capture") or {}).get("k")), str(d.get("topk_mode", "renorm")),
            tau)


def _label(arm: tuple[str, str, str, str, str], with_tau: bool = False) -> str:
    """The arm's row label; with ``with_tau`` (the study ran more than one temperature) its τ too."""
    if arm[0] == "scratch":
        return "scratch (labels only)"
    tau = f", τ = {arm[4]}" if with_tau else ""
    if arm[1] != "captured":
        return f"{arm[0]} KL, {arm[1]} teacher{tau}"
    return f"{arm[0]} KL, captured top-{arm[2]}, {arm[3]}{tau}"


def collect(records_dir: Path, experiment: str) -> tuple[list[dict], dict]:
    """One row per arm (means over its complete seeds) and the teacher's metrics."""
    groups: dict[tuple, list[dict]] = {}
    teacher: dict = {}
    for _, r in iter_experiment_records(records_dir, experiment):
        if r.get("status") != "complete":
            continue
        groups.setdefault(arm_of(r), []).append(r)
        t = (r.get("teacher") or {}).get("test") or {}
        if "nll" in t and len(t) > len(teacher):  # a live teacher's block also holds its KL to the true law
            teacher = t
    if not groups:
        raise SystemExit(f"kdbench.studies.tokens: no complete {experiment} records under {records_dir}")

    def mean(recs: list[dict], key: str) -> float:
        vals = [float(v) for r in recs if (v := ((r.get("metrics") or {}).get("last") or {}).get("test", {}).get(key))
                is not None]
        return statistics.fmean(vals) if vals else math.nan

    scratch = mean(groups.get(("scratch", "-", "-", "-", "-"), []), "nll")
    with_tau = len({a[4] for a in groups if a[0] != "scratch"}) > 1
    t_nll = float(teacher.get("nll", math.nan))
    rows = []
    order = sorted(groups, key=lambda a: (a[0] != "scratch", a[0], -float(a[4]) if a[4] != "-" else 0.0,
                                          a[1] != "online", int(a[2]) if a[2].isdigit() else 0, a[3]))
    for arm in order:
        recs = groups[arm]
        nlls = [float(r["metrics"]["last"]["test"]["nll"]) for r in recs]
        nll = statistics.fmean(nlls)
        gap = scratch - t_nll
        rows.append({"arm": _label(arm, with_tau), "n": len(recs), "nll": nll,
                     "nll_std": statistics.stdev(nlls) if len(nlls) > 1 else math.nan, "ppl": mean(recs, "ppl"),
                     "teacher_kept_nll": (scratch - nll) / gap * 100 if gap and not math.isnan(gap) else math.nan,
                     "kl_to_true": mean(recs, "kl_to_true"), "ece": mean(recs, "ece"),
                     "agreement": mean(recs, "agreement")})
    return rows, teacher


def render(experiment: str, rows: list[dict], teacher: dict, info: dict) -> str:
    import pandas as pd

    has_true = any(not math.isnan(r["kl_to_true"]) for r in rows)

    def f(v: float, d: int, scale: float = 1.0) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{d}f}"

    shown = []
    for r in rows:
        row = {"arm": r["arm"], "seeds": str(r["n"]), "NLL": f"{f(r['nll'], 4)} ± {f(r['nll_std'], 4)}",
               "perplexity": f(r["ppl"], 3), "teacher kept, NLL (%)": f(r["teacher_kept_nll"], 0)}
        if has_true:
            row["KL(true ‖ S)"] = f(r["kl_to_true"], 4)
        row["ECE"] = f(r["ece"], 4)
        row["agreement (%)"] = f(r["agreement"], 1, 100)
        shown.append(row)
    t = (f"Teacher: NLL {f(float(teacher.get('nll', math.nan)), 4)}, perplexity {f(float(teacher.get('ppl', math.nan)), 3)}"
         + (f", KL(true ‖ T) {f(float(teacher['kl_to_true']), 4)}" if "kl_to_true" in teacher else "") + ".")
    floor = info.get("entropy_rate_nats")
    return "\n".join([
        f"# {experiment}: how much of the teacher's quality did the student keep?", "",
        "Last-epoch test metrics over kept tokens (labels ≠ −100), mean over seeds (± std for the NLL). "
        "Teacher kept, NLL = (scratch NLL − student NLL) / (scratch NLL − teacher NLL): 100 % = the teacher's "
        "NLL, above 100 % = better than the teacher." + (" KL(true ‖ S): the exact divergence of the student's "
                                                          "next-token law from the chain's, averaged over kept positions."
                                                          if has_true else ""), "",
        t + (f" The chain's entropy rate (the NLL floor): {floor:.4f} nats." if floor else ""), "",
        markdown_table(pd.DataFrame(shown), compact=True), "",
        f"Built by `python -m kdbench.studies.tokens --experiment {experiment}` from the run records.", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdbench.studies.tokens", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", action="append", default=None,
                    help="a token study (repeatable; default: tokens_markov and tokens_bytes)")
    ap.add_argument("--results", default="results")
    a = ap.parse_args(argv)
    results = Path(a.results)
    for exp in a.experiment or ["tokens_markov", "tokens_bytes"]:
        rows, teacher = collect(results / "runs" / exp, exp)
        import pandas as pd

        info = next((r.get("dataset_info") or {} for _, r in iter_experiment_records(results / "runs" / exp, exp)), {})
        md = render(exp, rows, teacher, info)
        write_text_files(results / exp, {"md": ("kept.md", md), "csv": ("kept.csv", pd.DataFrame(rows).to_csv(index=False))})
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
