"""``python -m kdbench.train``: one distillation run from a Hydra config, end to end.

validate -> data -> teacher signal -> student -> method -> fit/test -> record (JSON, atomic) + W&B.
This module is the command (Hydra's entry point, exit codes, the config tree); the run itself is
:func:`kdbench.runner.run`, and each step's machinery lives in its own module.
"""

from __future__ import annotations

import errno
import logging
import sys

import hydra
from omegaconf import DictConfig

from kdbench.config import CONF_DIR
from kdbench.credentials import scrub_hydra_files
from kdbench.errors import DivergedError, KDBenchError
from kdbench.provenance import in_multirun
from kdbench.runner import quiet_libraries, run

__all__ = ["main", "run", "print_config", "WRITE_ERRNOS"]

log = logging.getLogger("kdbench")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the best validation accuracy (for sweepers that optimise)."""
    quiet_libraries()
    scrub_hydra_files(cfg)
    from kdbench.interrupts import RunInterrupted

    if not in_multirun() and (cfg.get("trainer") or {}).get("progress", False):
        print_config(cfg)
    try:
        rec = run(cfg)
    except RunInterrupted as e:
        # also under -m: a stopped sweep stops, rather than going on to its next job
        print(f"kdbench: {e}; record status 'interrupted' (run it again to resume)", file=sys.stderr)
        sys.exit(e.exit_code)
    except KDBenchError as e:
        if in_multirun():
            raise
        print(f"kdbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as e:
        if in_multirun():
            raise
        print(f"kdbench: error: {e}; record status 'diverged'", file=sys.stderr)
        sys.exit(3)
    except OSError as e:
        if in_multirun() or e.errno not in WRITE_ERRNOS:
            raise
        # a full disk, a read-only or foreign folder: one line naming the file, not a traceback
        where = f" {e.filename}" if e.filename else ""
        print(f"kdbench: error: could not write{where}: {e.strerror or e}; the run record says 'failed' "
              "(free space or fix the folder, then run it again: it resumes)", file=sys.stderr)
        sys.exit(4)
    return float((((rec.get("metrics") or {}).get("best") or {}).get("val") or {}).get("acc", 0.0))


#: errors of writing files (disk full, quota, read-only, permissions, a file where a folder should be)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR, errno.EFBIG}


def print_config(cfg) -> None:
    """The composed config as a tree (rich), before a single interactive run starts."""
    try:
        from omegaconf import OmegaConf
        from rich import print as rprint
        from rich.tree import Tree

        tree = Tree(f"config: {cfg.get('experiment_name')}", guide_style="dim")
        from kdbench.credentials import redact

        for key, node in redact(OmegaConf.to_container(cfg, resolve=True)).items():  # never print a secret
            if isinstance(node, dict):
                branch = tree.add(f"[bold]{key}[/bold]")
                for line in OmegaConf.to_yaml(OmegaConf.create(node)).rstrip().splitlines():
                    branch.add(line)
            else:
                tree.add(f"[bold]{key}[/bold]: {node}")
        rprint(tree)
    except Exception as e:  # noqa: BLE001 - a display aid must never stop a run (e.g. an unresolvable value)
        log.debug("config tree not printed: %s", e)


if __name__ == "__main__":
    main()
