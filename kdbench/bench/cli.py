"""The ``make bench`` command: which sections run, the header, and ``--out``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from kdbench.bench.table import Report, Section
from kdbench.bench.timing import device_label, device_slug


def _section(name: str):
    """The section module ``kdbench.bench.<name>``, imported only when it runs (the harness needs Lightning)."""
    import importlib

    return importlib.import_module(f"kdbench.bench.{name}")


def _mode(a: argparse.Namespace) -> str:
    return "quick" if a.quick else "full" if a.full else "default"


#: section name -> how to run it from the parsed arguments, in the order they print
SECTIONS: dict[str, Callable[[torch.device, argparse.Namespace], Section]] = {
    "loss": lambda dev, a: _section("losses").section(dev, quick=not a.full),
    "data": lambda dev, a: _section("data").section(dev),
    "step": lambda dev, a: _section("step").section(dev, full=a.full),
    "signals": lambda dev, a: _section("signals").section(dev),
    "harness": lambda dev, a: _section("harness").section(dev, _mode(a), a.peak_tflops),
    "fused": lambda dev, a: _section("fused").section(dev, quick=not a.full),
    "features": lambda dev, a: _section("features").section(dev, full=a.full),
    "feature-params": lambda dev, a: _section("features").params_section(dev),
}


def main(argv: list[str] | None = None) -> int:
    """Run the sections (all, or ``--only`` one) and print their tables; ``--out`` also writes them."""
    import kdbench.bench

    p = argparse.ArgumentParser(prog="kdbench-bench", description=kdbench.bench.__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="all ten CIFAR pairs and larger loss shapes")
    p.add_argument("--quick", action="store_true", help="the smallest sizes (the harness section in a few minutes "
                                                       "on a busy 2-core CPU)")
    p.add_argument("--only", choices=tuple(SECTIONS), default=None)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for MFU (default: a table of GPUs' dense bf16 peaks; CPU: none)")
    p.add_argument("--out", nargs="?", const="auto", default=None, metavar="PATH",
                   help="also write the tables as Markdown (default path: results/bench/<device>.md)")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    device = torch.device(args.device)
    torch.manual_seed(0)
    report = Report()
    report.emit(f"# kdbench bench — device: {device_label(device)}, torch {torch.__version__}")
    for name, run in SECTIONS.items():
        if args.only in (None, name):
            report.section(run(device, args))
    if args.out:
        out = Path("results") / "bench" / f"{device_slug(device)}.md" if args.out == "auto" else Path(args.out)
        report.write(out)
        print(f"\nwrote {out}")
    return 0
