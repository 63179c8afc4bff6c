"""Re-key run records written before the run id hashed resolved configs (``kdbench records migrate``).

Run ids hash the resolved config (:func:`kdbench.identity.run_id_of`), and the config gained keys
(``data_seed``, ``teacher_signal``, ``distill.method``): a record written earlier sits under an id
that a sweep no longer plans, so the sweep would train it again. This re-composes each record's
job from its own command-line overrides with today's configs and moves the record to today's id
only when the computation is provably the one that ran:

- every computational key the old record holds has the same value today, where an old ``auto``
  counts as what it resolves to on the device the record names (a CPU record: ``cpu``,
  ``32-true``, no channels-last);
- every key that is new today has the value that reproduces the old behaviour (``data_seed`` =
  ``seed``, ``distill.method`` = ``kd`` or ``none``, ``teacher_signal`` = ``online`` or ``none``);
- a scratch run (trained on labels only) is compared without its distillation keys and teacher: it
  read none of them.

Anything else is left where it is and reported. A migrated record keeps its metrics and history
as written; its ``config`` becomes today's resolved config and ``migrated_from`` lists its earlier ids.
Its checkpoint folder, if any, moves with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdbench.errors import exit_codes
from kdbench.identity import computational, run_id_of
from kdbench.records import iter_records, write_record
from kdbench.schema import leaves


def _old_value_resolved(key: str, old: Any, device: str) -> Any:
    """An old ``auto`` as it resolved on the record's device."""
    if old != "auto":
        return old
    gpu = not str(device or "cpu").startswith("cpu")
    return {"trainer.accelerator": "gpu" if gpu else "cpu",
            "trainer.precision": "bf16-mixed" if gpu else "32-true",
            "trainer.channels_last": gpu, "trainer.deterministic": not gpu,
            "trainer.compile": gpu}.get(key, old)


def _expected_new(key: str, rec: dict, conf: dict) -> Any:
    """The value of a key that did not exist when ``rec`` was written, under the old behaviour: a new
    method parameter at its default (a parameter's default reproduces what ran before it existed)."""
    from kdbench.methods import method_defaults, method_names

    cfg = rec.get("config") or {}
    scratch = not (cfg.get("distill") or {}).get("enabled", True)
    fixed = {"data_seed": cfg.get("seed"), "distill.method": "none" if scratch else "kd",
             "teacher_signal": "none" if scratch else "online", "trainer.compile": False}
    if key in fixed:
        return fixed[key]
    if key.startswith("distill."):
        name = (conf.get("distill") or {}).get("method")
        name = "kd" if name == "none" else name  # scratch configs carry KD's keys (conf/distill/none.yaml)
        if name in method_names():
            return method_defaults(name).get(key[len("distill."):], KeyError)
    return KeyError


def differences(rec: dict, conf: dict) -> list[str]:
    """Why ``conf`` (today's resolved config of the record's job) is not the computation ``rec`` ran."""
    old, new = leaves(computational(rec.get("config") or {})), leaves(computational(conf))
    out = []
    if (conf.get("distill") or {}).get("method") == "none":
        # a scratch run read no distillation key (its loss is CE alone, alpha = 1, whatever was written)
        old = {k: v for k, v in old.items() if not k.startswith("distill.")}
        new = {k: v for k, v in new.items() if not k.startswith("distill.")}
    for key in sorted(set(old) | set(new)):
        if key in old and key in new:
            if _old_value_resolved(key, old[key], rec.get("device")) != new[key]:
                out.append(f"{key}: {old[key]!r} then, {new[key]!r} now")
        elif key in new:
            want = _expected_new(key, rec, conf)
            if want is KeyError or want != new[key]:
                out.append(f"{key}: new key with {new[key]!r}")
        else:
            out.append(f"{key}: {old[key]!r} then, gone now")
    return out


def migrate(runs_dir: str | os.PathLike, experiment: str | None = None, *, checkpoints_dir: str | None = None,
            dry_run: bool = False, log=print) -> dict[str, list]:
    """Re-key the records under ``runs_dir`` (one experiment or all); returns moved / current / refused."""
    from kdbench.config import compose_job, resolve

    root = Path(runs_dir) / experiment if experiment else Path(runs_dir)
    result: dict[str, list] = {"moved": [], "current": [], "refused": []}
    for path, rec in list(iter_records(root)):
        try:
            conf = resolve(compose_job(list(rec.get("overrides") or [])))
        except Exception as e:  # an option that no longer exists, ...
            result["refused"].append((str(path), f"its overrides no longer compose: {type(e).__name__}: {e}"))
            continue
        new_id = run_id_of(conf)
        if new_id == rec.get("run_id"):
            result["current"].append(str(path))
            continue
        why = differences(rec, conf)
        if why:
            result["refused"].append((str(path), "; ".join(why)))
            continue
        target = path.with_name(f"{new_id}.json")
        if target.exists():
            result["refused"].append((str(path), f"{target.name} exists already"))
            continue
        log(f"{path.name} -> {target.name}")
        result["moved"].append((str(path), str(target)))
        if dry_run:
            continue
        earlier = rec.get("migrated_from") or []
        earlier = [earlier] if isinstance(earlier, str) else list(earlier)
        moved = {**rec, "run_id": new_id, "config": conf, "migrated_from": earlier + [rec.get("run_id")]}
        moved.pop("schema", None)
        write_record(target, moved)
        path.unlink()
        if checkpoints_dir:
            old_ck = Path(checkpoints_dir) / str(rec.get("experiment")) / str(rec.get("run_id"))
            if old_ck.is_dir():
                old_ck.rename(old_ck.with_name(new_id))
    return result


@exit_codes()
def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="kdbench records migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", default="results/runs")
    p.add_argument("--checkpoints-dir", default="results/checkpoints")
    p.add_argument("--experiment", default=None)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    res = migrate(a.runs_dir, a.experiment, checkpoints_dir=a.checkpoints_dir, dry_run=a.dry_run)
    for path, why in res["refused"]:
        print(f"left as it is: {path}: {why}")
    print(json.dumps({k: len(v) for k, v in res.items()}))
    return 0
