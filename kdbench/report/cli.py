"""``kdbench-report`` / ``python -m kdbench.report``: rebuild tables and plots from run records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdbench.errors import exit_codes
from kdbench.report.build import make_report
from kdbench.report.frame import ReportError, default_out_dir, experiments_under
from kdbench.report.tables import PROTOCOL_NOTE
from kdbench.report.terminal import print_summary

__all__ = ["main"]


@exit_codes("kdbench-report", key=False)
def main(argv: list[str] | None = None) -> int:
    """``kdbench-report``: rebuild tables and plots from run records (or from W&B with --from-wandb)."""
    ap = argparse.ArgumentParser(
        prog="kdbench-report",
        description="Paper-style tables (md, tex, csv) and plots from kdbench run records. " + PROTOCOL_NOTE + ".")
    ap.add_argument("--experiment", "-e", help="experiment name (records in <records>/<experiment>/*.json)")
    ap.add_argument("--all", action="store_true", help="report every experiment found under --records")
    ap.add_argument("--results", default="results", help="results directory (default: results)")
    ap.add_argument("--records", help="runs directory holding <experiment>/*.json (default: <results>/runs)")
    ap.add_argument("--out", help="output directory (default: <results>/<experiment>)")
    ap.add_argument("--wandb", action="store_true",
                    help="also log the figures and tables to a W&B run (WANDB_MODE, default offline)")
    ap.add_argument("--from-wandb", metavar="ENTITY/PROJECT",
                    help="read finished runs from the W&B API instead of local records (online only; tables only)")
    ap.add_argument("--print", dest="print_table", action=argparse.BooleanOptionalAction, default=True,
                    help="print the compact table and the paths of the full table and the page (default: on)")
    args = ap.parse_args(argv)
    if not args.experiment and not args.all:
        ap.error("--experiment NAME is required (or --all)")
    if args.all and args.experiment:
        ap.error("--experiment and --all are exclusive")
    if args.all and args.out:
        ap.error("--out cannot be used with --all (each experiment goes to <results>/<experiment>)")
    if args.from_wandb and args.all:
        ap.error("--from-wandb needs --experiment")
    records = Path(args.records) if args.records else Path(args.results) / "runs"
    if args.all:
        experiments = experiments_under(records)
        if not experiments:
            raise ReportError("--all", f"no run records under {records}")
    else:
        experiments = [args.experiment]
    for exp in experiments:
        frame = None
        if args.from_wandb:
            from kdbench.report.tracking import load_wandb_runs

            frame = load_wandb_runs(args.from_wandb, exp)
        out_dir = Path(args.out) if args.out else (
            Path(args.results) / exp if not args.records else default_out_dir(records, exp))
        res = make_report(records, exp, out_dir=out_dir, wandb_log=args.wandb, frame=frame)
        for w in res.get("warnings") or []:
            print(f"kdbench-report: warning: {exp}: {w}", file=sys.stderr)
        files = [*res["tables"].values(), *res["plots"].values()]
        print(f"kdbench-report: {exp}: wrote {len(files)} files into {res['out_dir']}", file=sys.stderr)
        if args.print_table:
            print_summary(res["out_dir"])
    return 0
