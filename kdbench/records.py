"""Run records: one JSON file per run, written atomically, loaded into pandas for reports.

Schema (``schema: 1``)::

    run_id, experiment, variant, seed, status ("running"|"complete"|"failed"|"diverged"|"interrupted"), error,
    config (resolved), overrides, dataset, teacher_arch, student_arch,
    distill {alpha, tau, kl, tau_squared, ...switches},
    metrics {last|best: {epoch, val: {...}, test: {acc, ece, mce, nll, brier, agreement, kl_teacher}}},
    teacher {key, arch, test: {acc, ece, mce, nll, brier}} | null,
    history [{epoch, train_loss, val_acc, val_ece, val_nll, ...}],
    reliability {last|best: {confidence: [..], accuracy: [..], count: [..]}} (15 equal-width bins),
    versions, device, deterministic, wall_time_s, started_at, finished_at
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdbench.files import atomic_write_text

SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "failed", "diverged", "interrupted", "debug")
TEST_METRICS = ("acc", "ece", "mce", "nll", "brier", "agreement", "kl_teacher")
#: which way is better for every metric a record holds (tables bold it, W&B summaries keep it)
DIRECTIONS: dict[str, str] = {
    "acc": "max", "agreement": "max",
    "ece": "min", "mce": "min", "nll": "min", "brier": "min", "kl_teacher": "min", "loss": "min", "ppl": "min",
    "ece_ts": "min", "nll_ts": "min", "kl_to_true": "min",
}


def _clean(obj: Any) -> Any:
    """Make a record JSON-safe: NaN/Inf become None, tuples become lists, tensors become numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_record(path: str | os.PathLike, record: dict) -> Path:
    """Atomically write one run record (JSON)."""
    record = {"schema": SCHEMA_VERSION, **record}
    atomic_write_text(path, json.dumps(_clean(record), indent=2, sort_keys=False) + "\n")
    return Path(path)


@contextmanager
def run_lock(lock_path: Path, record_path: Path, run_id: str, wait: bool = False) -> Iterator[None]:
    """Hold the run's lock for the length of the run: a second process asking for the same run gets
    one line naming the running one instead of training beside it, or with ``wait`` (the jobs of a
    sweep) waits for it (an OS lock: a killed process releases it)."""
    from filelock import FileLock, Timeout

    from kdbench.errors import BusyError

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        try:
            rec = read_record(record_path)
            who = f"started {_one_line(rec['started_at'])} on {_one_line(rec['host'])}, record {record_path}"
        except (OSError, ValueError, TypeError, KeyError):  # unreadable, not a mapping, or without them
            who = f"lock {lock_path}"
        raise BusyError("run", f"{run_id} is already running in another process ({who}); wait for it to "
                               "finish, or stop it (the next invocation resumes it)") from None
    try:
        yield
    finally:
        lock.release()


def _one_line(value: Any) -> str:
    """A value read back from a record, printable in a one-line message (control characters escaped)."""
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def read_record(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def iter_records(root: str | os.PathLike, problems: list | None = None) -> Iterable[tuple[Path, dict]]:
    """Yield ``(path, record)`` for every ``*.json`` record under ``root``; a file that cannot be read
    or is not a run record is skipped, and appended to ``problems`` as ``(path, reason)`` when given."""
    for p in sorted(Path(root).rglob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            rec = read_record(p)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            if problems is not None:
                problems.append((p, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"))
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA_VERSION and "run_id" in rec:
            yield p, rec
        elif problems is not None:
            what = f"schema {rec.get('schema')!r}, not {SCHEMA_VERSION}" if isinstance(rec, dict) else type(rec).__name__
            problems.append((p, f"not a run record ({what})"))


def run_time_s(rec: dict) -> float | None:
    """Seconds from the record's ``started_at`` to its ``finished_at``: the student's fit and test (the teacher's
    training or loading and a teacher cache come before ``started_at``; ``wall_time_s`` counts them too; the
    members of a fused group share one). None when either time is missing or unreadable."""
    from datetime import datetime

    try:
        a, b = datetime.fromisoformat(str(rec["started_at"])), datetime.fromisoformat(str(rec["finished_at"]))
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (b - a).total_seconds())


def flatten_record(rec: dict) -> dict:
    """One flat row per record: identity columns, distill settings, ``last_test_acc``, ``best_test_acc``...."""
    row: dict[str, Any] = {k: rec.get(k) for k in (
        "run_id", "experiment", "variant", "seed", "status", "error", "dataset", "teacher_arch",
        "student_arch", "wall_time_s", "device")}
    for k, v in (rec.get("distill") or {}).items():
        row[f"distill_{k}"] = v
    for which in ("last", "best"):
        m = (rec.get("metrics") or {}).get(which) or {}
        row[f"{which}_epoch"] = m.get("epoch")
        for split in ("val", "test"):
            for k, v in (m.get(split) or {}).items():
                row[f"{which}_{split}_{k}"] = v
    row["run_time_s"] = run_time_s(rec)
    params = rec.get("params")
    if isinstance(params, dict):  # the student's and a method's trainable modules' (never deployed) counts
        row["params_student"], row["params_training_only"] = params.get("student"), params.get("training_only")
    t = rec.get("teacher") or {}
    row["teacher_key"] = t.get("key")
    for k, v in (t.get("test") or {}).items():
        row[f"teacher_test_{k}"] = v
    return row


def load_records(root: str | os.PathLike, experiment: str | None = None):
    """All records under ``root`` as a pandas DataFrame (one row per run), optionally one experiment."""
    import pandas as pd

    rows = [flatten_record(r) | {"path": str(p)} for p, r in iter_records(root)]
    df = pd.DataFrame(rows)
    if experiment is not None and not df.empty:
        df = df[df["experiment"] == experiment].reset_index(drop=True)
    return df


def not_a_result(rec: Any, run_id: str) -> str | None:
    """Why a record that says ``complete`` is not run ``run_id``'s result (another run's id, or no test metrics
    of its last and best epochs), or None."""
    if rec.get("run_id") != run_id:
        return f"it is run {_one_line(rec.get('run_id'))}'s record, not {run_id}'s"
    metrics = rec.get("metrics")
    for which in ("last", "best"):
        m = metrics.get(which) if isinstance(metrics, dict) else None
        if not isinstance(m, dict) or not isinstance(m.get("test"), dict) or not m["test"]:
            return f"it has no test metrics of its {which} epoch"
    return None


def complete_record(path: str | os.PathLike) -> dict | None:
    """The record at ``path`` (``<run_id>.json``) if it is there, readable and complete: this run's, with the
    test metrics of its last and best epochs; otherwise None (the run is trained again). A record that says
    ``complete`` but is not a result is named in a warning on stderr."""
    path = Path(path)
    try:
        rec = read_record(path)
    except (OSError, ValueError):  # missing, garbage JSON or bytes that are not UTF-8
        return None
    if not isinstance(rec, dict) or rec.get("status") != "complete":
        return None
    why = not_a_result(rec, path.stem)
    if why is not None:
        import sys

        print(f"kdbench: warning: {path} says 'complete' but {why}: training it again", file=sys.stderr)
        return None
    return rec


def jsonable(obj: Any) -> Any:
    """Plain JSON data for a record (tensors become a short description)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return f"<tensor {tuple(obj.shape)}>"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def summary(record: dict, path: str | os.PathLike) -> str:
    """The lines a finished run prints: headline metrics, the record's path and the W&B run folder."""
    last = record["metrics"]["last"]["test"]
    best = record["metrics"]["best"]
    t = record.get("teacher") or {}
    parts = [f"kdbench {record['experiment']}/{record['run_id']}: {record['dataset']}"]
    if t:
        parts.append(f"teacher {t.get('arch')} acc {100 * (t.get('test') or {}).get('acc', float('nan')):.2f}%")
    parts.append(f"student {record['student_arch']} acc {100 * last['acc']:.2f}% (best-epoch "
                 f"{100 * best['test']['acc']:.2f}% @ {best['epoch']})")
    if "agreement" in last:
        parts.append(f"agreement {100 * last['agreement']:.2f}%")
    parts.append(f"ECE {last['ece']:.4f}")
    lines = [" | ".join(parts), f"  record: {path}"]
    if record.get("wandb_dir"):
        lines.append(f"  wandb:  {Path(record['wandb_dir']).parent}  (upload with `wandb sync` on it)")
    return "\n".join(lines)
