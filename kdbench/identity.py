"""What makes two runs the same computation: the config keys that never do, and the run id.

One list, used by the run id, the report's grouping columns and the sweep planner. A key is
listed here when changing it cannot change a number the run produces (where files go, how
progress is shown, how often the host checks for NaN, how big the evaluation batches are).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: top-level config keys that never change what a run computes
NOT_COMPUTATIONAL_TOP: tuple[str, ...] = (
    "paths", "logger", "hydra", "resume", "force", "tags", "teacher_only", "experiment_name", "pair",
    "fuse",  # how many jobs share a process (kdbench.fused): the same numbers either way
    "print_config",  # the config tree on the terminal
)
#: dotted keys below the top level that never change what a run computes
NOT_COMPUTATIONAL_KEYS: tuple[str, ...] = (
    "trainer.progress", "trainer.log_every_n_steps", "trainer.check_finite_every",
    "dataset.root", "dataset.download", "dataset.cache_dir", "dataset.eval_batch_size",
    "teacher.train_if_missing", "teacher_cache.max_gb", "teacher_cache.on_device",
    # callbacks that only watch (early stopping changes the run: it stays computational)
    "callbacks.lr_monitor", "callbacks.model_summary",
)


def is_computational(dotted: str) -> bool:
    """False for a key listed above or below one that is (``paths.runs_dir``, ``trainer.progress``)."""
    top = dotted.split(".", 1)[0]
    if top in NOT_COMPUTATIONAL_TOP:
        return False
    return not any(dotted == k or dotted.startswith(k + ".") for k in NOT_COMPUTATIONAL_KEYS)


def computational(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a resolved config (plain dicts) without the keys that do not change the computation
    (``teacher_cache`` only matters to runs whose teacher signal is the cache, ``teacher`` only to runs
    that distill)."""

    def strip(node: Any, prefix: str) -> Any:
        if not isinstance(node, Mapping):
            return node
        return {k: strip(v, f"{prefix}{k}.") for k, v in node.items() if is_computational(f"{prefix}{k}")}

    out = strip(cfg, "")
    t = out.get("trainer")
    if isinstance(t, Mapping) and t.get("compile") is False:
        # not compiled: what every run did before the key existed (their ids stay); a compiled run may
        # differ within float tolerance (fused kernels), so it is a run of its own
        out["trainer"] = {k: v for k, v in t.items() if k != "compile"}
    ds = out.get("dataset")
    if isinstance(ds, Mapping):
        # the whole training split (no transfer restriction): what every run did before the keys existed
        out["dataset"] = {k: v for k, v in ds.items()
                          if not ((k == "transfer_subset" and v is None) or (k == "train_exclude_classes" and not v))}
    m = out.get("metrics")
    if isinstance(m, Mapping):
        # measurements the runs before the key made (none per class): their ids stay; per_class_acc=true is a
        # run of its own, so a complete record without the per-class numbers is never taken for one with them
        m = {k: v for k, v in m.items() if not (k == "per_class_acc" and not v)}
        out["metrics"] = m
        if not m:
            out.pop("metrics")
    if not out.get("callbacks"):
        out.pop("callbacks", None)  # none that changes a number: the ids of runs from before the group
    d = out.get("distill") or {}
    if d.get("method") == "none" or d.get("enabled") is False:
        # trained on labels only: no teacher is built, so which one the config names changes nothing
        # (`distill=kd,none teacher=a,b` trains the scratch student once)
        out.pop("teacher", None)
    if out.get("teacher_signal") != "cached":
        out.pop("teacher_cache", None)
    if out.get("teacher_signal") != "captured":
        out.pop("teacher_capture", None)
    return out


def run_id_of(conf: Mapping[str, Any]) -> str:
    """``<variant>-s<seed>-<hash>``: the hash of the computational part of a resolved config.

    ``conf`` is :func:`kdbench.config.resolve`'s output (every ``auto`` already resolved), so the
    same computation gives the same id (a re-run resumes or skips it), two different computations
    never share one, and a CPU run and a GPU run of one config are two runs.
    """
    import hashlib
    import json

    blob = json.dumps(computational(conf), sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{conf['distill']['variant']}-s{conf['seed']}-{digest}"


def wandb_id(experiment: str, run_id: str) -> str:
    """The W&B run id of a kdbench run: one run, one W&B run (a resumed run continues it). Run ids are
    unique within an experiment, so the experiment is part of it; W&B ids take letters, digits, - and _."""
    import hashlib
    import re

    raw = re.sub(r"[^A-Za-z0-9_-]", "_", f"{experiment}-{run_id}")
    return raw if len(raw) <= 64 else f"{raw[:53]}-{hashlib.sha256(raw.encode()).hexdigest()[:10]}"
