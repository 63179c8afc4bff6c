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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from kdbench.errors import ConfigError, exit_codes
from kdbench.identity import computational, run_id_of
from kdbench.kinds import NAME
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


def _shown(text: object) -> str:
    """A name read back from disk, printable on one line (a newline or control character escaped)."""
    return repr(str(text))[1:-1]


def _inside(path: Path, root: Path) -> bool:
    """``path`` (symbolic links resolved) lies under ``root``."""
    return path.resolve().is_relative_to(root.resolve())


def malformed(path: Path, rec: Any, runs_root: Path) -> str | None:
    """Why the record read from ``path`` cannot be migrated safely, or None: every path migrate builds from
    it must stay inside its root, so its ``experiment`` and ``run_id`` must be plain names that say where it
    lies (``<runs_root>/<experiment>/<run_id>.json``), and the fields it reads must have their types."""
    if not isinstance(rec, dict):
        return f"not a run record (a JSON {type(rec).__name__})"
    if not _inside(path, runs_root):
        return f"lies outside {_shown(runs_root)} (a symbolic link to {_shown(path.resolve())})"
    for key, where in (("run_id", path.stem), ("experiment", path.parent.name)):
        value = rec.get(key)
        if not isinstance(value, str) or not NAME.fullmatch(value):
            return f"its {key} {value!r} is not a plain name (letters, digits, '.', '_', '-')"
        if value != where:
            return f"its {key} {value!r} is not where it lies ({_shown(where)}): a copy or a moved file"
    if path.parent.parent.resolve() != runs_root.resolve():
        return f"not at {_shown(runs_root)}/<experiment>/<run id>.json (a copy in a sub-folder?)"
    overrides = rec.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return f"its overrides are not a list of strings (got {type(overrides).__name__})"
    if not isinstance(rec.get("config"), dict):
        return f"its config is not a mapping (got {type(rec.get('config')).__name__})"
    earlier = rec.get("migrated_from")
    if earlier is not None and not isinstance(earlier, str) and not (
            isinstance(earlier, list) and all(isinstance(e, str) for e in earlier)):
        return f"its migrated_from is not a list of run ids (got {type(earlier).__name__})"
    return None


def _checkpoint_move(checkpoints_dir: str | os.PathLike | None, experiment: str, old_id: str,
                     new_id: str) -> tuple[Path, Path] | str | None:
    """The checkpoint folder's move ``(old, new)``, None when it has none, or why it cannot move: a folder
    reached through a symbolic link out of ``checkpoints_dir``, or a folder of the new id already there."""
    if not checkpoints_dir:
        return None
    root = Path(checkpoints_dir)
    old, new = root / experiment / old_id, root / experiment / new_id
    if not old.is_dir():
        return None
    if old.is_symlink() or not _inside(old, root):
        return f"its checkpoint folder {_shown(old)} leads out of {_shown(root)} (to {_shown(old.resolve())})"
    if new.exists() or new.is_symlink():
        return f"checkpoint folder {_shown(new)} exists already"
    return old, new


@contextmanager
def _unless_running(lock_path: Path) -> Iterator[bool]:
    """Hold the run's lock if it is there (a lock file of a dead process is free); yields False when
    another process holds it (the run is training now and would write its record at the old id)."""
    from filelock import FileLock, Timeout

    if not lock_path.is_file():
        yield True
        return
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def migrate(runs_dir: str | os.PathLike, experiment: str | None = None, *, checkpoints_dir: str | None = None,
            dry_run: bool = False, log=print) -> dict[str, list]:
    """Re-key the records under ``runs_dir`` (one experiment or all); returns moved / current / refused.
    A record that is unreadable, malformed or would lead a path out of its root is refused with its reason;
    the others move."""
    from kdbench.config import compose_job, resolve

    runs_root = Path(runs_dir)
    if not runs_root.is_dir():
        raise ConfigError("--runs-dir", f"{_shown(runs_root)} is not a folder of run records")
    if experiment is not None and not NAME.fullmatch(experiment):
        raise ConfigError("--experiment", f"{experiment!r} is not an experiment name (letters, digits, "
                                          "'.', '_', '-'; not starting with '.')")
    root = runs_root / experiment if experiment else runs_root
    if not root.is_dir():
        raise ConfigError("--experiment", f"no records of experiment {experiment!r}: {_shown(root)} is not a folder")
    result: dict[str, list] = {"moved": [], "current": [], "refused": []}
    problems: list = []
    for path, rec in list(iter_records(root, problems)):
        why = malformed(path, rec, runs_root)
        if why:
            result["refused"].append((str(path), why))
            continue
        try:
            conf = resolve(compose_job(list(rec["overrides"])))
        except Exception as e:  # an option that no longer exists, ...
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            result["refused"].append((str(path), f"its overrides no longer compose: {type(e).__name__}: {msg}"))
            continue
        if conf.get("experiment_name") != rec["experiment"]:  # the moved record's config would disown its folder
            result["refused"].append((str(path), f"its overrides compose to experiment_name "
                                                 f"{conf.get('experiment_name')!r}, not {rec['experiment']!r}"))
            continue
        new_id = run_id_of(conf)
        if new_id == rec["run_id"]:
            result["current"].append(str(path))
            continue
        try:
            why = "; ".join(differences(rec, conf))
        except (AttributeError, TypeError, ValueError) as e:  # a config of other shapes than it was written in
            why = f"its config is malformed ({type(e).__name__}: {e})"
        if why:
            result["refused"].append((str(path), why))
            continue
        target = path.with_name(f"{new_id}.json")
        if target.exists() or target.is_symlink():
            result["refused"].append((str(path), f"{target.name} exists already"))
            continue
        move = _checkpoint_move(checkpoints_dir, rec["experiment"], rec["run_id"], new_id)
        if isinstance(move, str):
            result["refused"].append((str(path), move))
            continue
        lock = Path(checkpoints_dir) / rec["experiment"] / f"{rec['run_id']}.lock" if checkpoints_dir else None
        with _unless_running(lock) if lock is not None else nullcontext(True) as free:
            if not free:
                result["refused"].append((str(path), f"its run is running in another process (lock {lock})"))
                continue
            log(f"{path.name} -> {target.name}")
            result["moved"].append((str(path), str(target)))
            if dry_run:
                continue
            earlier = rec.get("migrated_from") or []
            earlier = [earlier] if isinstance(earlier, str) else list(earlier)
            moved = {**rec, "run_id": new_id, "config": conf, "migrated_from": earlier + [rec["run_id"]]}
            moved.pop("schema", None)
            if move is not None:
                move[0].rename(move[1])
            try:
                write_record(target, moved)
            except BaseException:
                if move is not None:
                    move[1].rename(move[0])  # the record stays where it was: so does its checkpoint
                raise
            path.unlink()
    result["refused"] += [(str(p), why) for p, why in problems]
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
        print(f"left as it is: {_shown(path)}: {_shown(why)}")
    print(json.dumps({k: len(v) for k, v in res.items()}))
    return 0
