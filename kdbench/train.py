"""``python -m kdbench.train``: one distillation run from a Hydra config, end to end.

validate -> data -> teacher signal -> student -> method -> fit/test -> record (JSON, atomic) + W&B.
This module is the command (Hydra's entry point, exit codes, the config tree); the run itself is
:func:`kdbench.runner.run`, and each step's machinery lives in its own module.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from kdbench.config import CONF_DIR
from kdbench.credentials import scrub_hydra_files
from kdbench.errors import exit_codes
from kdbench.provenance import in_multirun
from kdbench.runner import quiet_libraries, run

__all__ = ["main", "run", "print_config", "verbose"]

log = logging.getLogger("kdbench")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the best validation accuracy (for sweepers that optimise)."""
    quiet_libraries()
    scrub_hydra_files(cfg)
    if cfg.get("print_config") or cfg.get("debug") or verbose():  # asked for, a debug= run, hydra.verbose
        print_config(cfg)
    with exit_codes(run=True, reraise=in_multirun(), exit=True):  # docs/errors.md; under -m the launcher sees it
        rec = run(cfg)
    return float((((rec.get("metrics") or {}).get("best") or {}).get("val") or {}).get("acc", 0.0))


def verbose() -> bool:
    """Hydra's debug verbosity is on (``hydra.verbose=true``, or naming kdbench's logger)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        v = HydraConfig.get().verbose
    except Exception:  # outside Hydra
        return False
    names = [v] if isinstance(v, str) else list(v) if not isinstance(v, bool) else []
    return v is True or any(n in ("kdbench", "root", "__main__") for n in names)


def print_config(cfg) -> None:
    """The composed config as a tree (rich), when asked: ``print_config=true``, a ``debug=`` run, or
    ``hydra.verbose``."""
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
