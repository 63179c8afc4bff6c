"""``make run``: the quickstart ablation on the embedded digits data (offline, CPU, a few minutes)."""

from __future__ import annotations

import os
import sys

from kdbench.sweep import run_sweep


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_sweep(["experiment=quickstart", *argv], hints=True)  # ends with the teacher and what to try next


if __name__ == "__main__":
    sys.exit(main())
