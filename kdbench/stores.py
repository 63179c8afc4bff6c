"""Capture stores: the format, its one writer (:func:`write_store`) and its one validator (:func:`validate_store`).

A store is what ``teacher_signal=captured`` trains from (``kdbench capture`` writes one; ``--from-jsonl`` and
other importers go through :func:`write_store` too). It is a folder:

- ``header.json`` (written last: the completion marker): ``format``, ``values: "log_probs"``, ``k``,
  ``capture_tau``, ``num_classes``, the augmentation ``family``, ``views`` and ``n`` (examples) per split,
  the ``dataset`` identity, the ``teacher`` (name, key, arch, test metrics), for token data ``positions``
  and ``alignment``, and ``checked``: the SHA-256 of every array file whose values passed the rules;
- ``<split>.indices.npy`` (int32) and ``<split>.log_probs.npy`` (float32), ``[N, V, k]`` (token data
  ``[N, V, T, k]``) for ``train`` (V = the family's views, or 1) and ``test`` (and ``val`` when the run
  has one; V = 1); token data also ``<split>.tokens.npy`` (int64 ``[N, T]``).

Nothing read back is trusted: the header's schema and types, the arrays' headers, sizes, shapes and dtypes
against it are checked on every open (cheap: no array is read), and the values (class ids in range and
distinct per row, log-probs finite, <= 0, sorted from the largest, per-row mass <= 1) whenever the files'
checksums are not the ones the header says passed. Every refusal is one line naming the file, split, row
and rule.

An importer (JSONL here; other tools' top-k log-probs) builds ``{split: (indices, log_probs)}`` arrays, a header
with :func:`make_header`, and calls :func:`write_store`, which refuses what breaks a rule before writing.

The JSON-lines form (``--jsonl`` / ``--from-jsonl``): the first line ``{"header": {...}}``, then one
object per (split, idx, view): ``{"split", "idx", "view", "indices", "log_probs"}`` (token data: also
``"tokens"``, and a list of top-k per position).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tokenize
from pathlib import Path

import numpy as np
from filelock import FileLock

from kdbench.errors import ConfigError
from kdbench.files import atomic_write, atomic_write_text

HEADER = "header.json"
FORMAT = "kdbench-capture-1"
SPLITS = ("train", "val", "test")
#: per-row probability mass allowed above 1, and log-probability above 0 (rounding of a written file)
MASS_TOL = 1e-3
LOGP_TOL = 1e-6
#: the value rules' version: a store checked under older rules is checked again
RULES = 1
#: the keys a header may hold: required ones first
REQUIRED = ("format", "values", "k", "capture_tau", "num_classes", "family", "views", "n", "dataset", "teacher")
OPTIONAL = ("positions", "alignment", "checked", "tokenizer")
_MIN_ROW_BYTES = 16  # no JSONL row (or position of one) is shorter than this
_CHUNK = 1 << 22  # entries per chunk of the value check (~32 MB per float64 copy)


class StoreDefect(ValueError):
    """One rule broken by one row of one split's arrays (``row``: the example, view and position)."""

    def __init__(self, split: str, rule: str, row: tuple[int, ...] | None = None, file: str | None = None):
        self.split, self.rule, self.row, self.file = split, rule, row, file
        super().__init__(f"split {split}{describe_row(row)}: {rule}")


def describe_row(row: tuple[int, ...] | None) -> str:
    if row is None:
        return ""
    names = ("row", "view", "position")
    return ", " + ", ".join(f"{name} {int(i)}" for name, i in zip(names, row))


def splits_of(header: dict) -> list[str]:
    """The splits a header counts, in the order they are stored and read (train, val, test)."""
    return [s for s in SPLITS if s in header["n"]]


def files_of(split: str, header: dict) -> dict[str, str]:
    """The array files of one split: ``indices``, ``log_probs`` and, for token data, ``tokens``."""
    out = {"indices": f"{split}.indices.npy", "log_probs": f"{split}.log_probs.npy"}
    if header.get("positions") is not None:
        out["tokens"] = f"{split}.tokens.npy"
    return out


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_header(h, where: str, key: str) -> dict:
    """The header's schema and types, and the rules between its own fields; returns it."""
    from kdbench.data.augment import augment_names, num_views

    def bad(msg: str):
        raise ConfigError(key, f"{where}: {msg}")

    if not isinstance(h, dict):
        bad(f"the header must be a JSON object, got {type(h).__name__}")
    missing = [k for k in REQUIRED if k not in h]
    if missing:
        bad(f"the header lacks {', '.join(missing)} (a store's header holds {', '.join(REQUIRED)})")
    unknown = sorted(set(h) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        bad(f"unknown header key(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    if h["format"] != FORMAT:
        bad(f"format must be {FORMAT!r}, got {h['format']!r}")
    if h["values"] != "log_probs":
        bad(f"values must be 'log_probs' (log-probabilities of the full softmax), got {h['values']!r}")
    if not _int(h["num_classes"]) or h["num_classes"] < 2:
        bad(f"num_classes must be an integer >= 2, got {h['num_classes']!r}")
    if not _int(h["k"]) or not 1 <= h["k"] <= h["num_classes"]:
        bad(f"k must be an integer in [1, num_classes={h['num_classes']}], got {h['k']!r}")
    tau = h["capture_tau"]
    if not _num(tau) or not math.isfinite(tau) or tau <= 0:
        bad(f"capture_tau must be a finite number > 0, got {tau!r}")
    if h["family"] not in augment_names():
        bad(f"family must be one of {', '.join(augment_names())}, got {h['family']!r}")
    for field in ("views", "n"):
        d = h[field]
        if not isinstance(d, dict) or not all(s in d for s in ("train", "test")) or set(d) - set(SPLITS):
            bad(f"{field} must map train, test (and val) to counts, got {d!r}")
        for s, c in d.items():
            if not _int(c) or c < 1:
                bad(f"{field}.{s} must be an integer >= 1, got {c!r}")
    if set(h["views"]) != set(h["n"]):
        bad(f"views and n name other splits ({', '.join(sorted(h['views']))} vs {', '.join(sorted(h['n']))})")
    if h["views"]["train"] not in (1, num_views(h["family"])):
        bad(f"views.train is {h['views']['train']}, but family {h['family']!r} has {num_views(h['family'])} views "
            "(or 1 without them)")
    if h["views"]["train"] > 1 and h["family"] == "none":
        bad(f"views.train is {h['views']['train']} for family 'none'")
    for s in ("val", "test"):
        if h["views"].get(s, 1) != 1:
            bad(f"views.{s} must be 1 (only training is augmented), got {h['views'][s]}")
    if not isinstance(h["dataset"], dict):
        bad(f"dataset must be an object (the data's identity), got {h['dataset']!r}")
    ds = h["dataset"]
    if "num_classes" in ds and ds["num_classes"] != h["num_classes"]:
        bad(f"num_classes is {h['num_classes']} but dataset.num_classes is {ds['num_classes']!r}")
    if "n_train" in ds and ds["n_train"] != h["n"]["train"]:
        bad(f"n.train is {h['n']['train']} but dataset.n_train is {ds['n_train']!r}")
    t = h["teacher"]
    if not isinstance(t, dict) or not all(t.get(f) is None or isinstance(t.get(f), str) for f in ("name", "key", "arch")) \
            or not isinstance(t.get("test") or {}, dict):
        bad(f"teacher must be an object with string name, key, arch and a test-metrics object, got {t!r}")
    for metric, v in (t.get("test") or {}).items():  # a run's record carries them as the teacher's
        if v is not None and not _num(v):
            bad(f"teacher.test.{metric} must be a number or null, got {v!r}")
    if h.get("positions") is not None and (not _int(h["positions"]) or h["positions"] < 1):
        bad(f"positions must be an integer >= 1 (token data) or absent, got {h['positions']!r}")
    if h.get("positions") is not None and h["views"]["train"] != 1:
        bad("token data has one view per sequence, views.train must be 1")
    tok = h.get("tokenizer")
    if tok is not None and (not isinstance(tok, dict) or not isinstance(tok.get("sha256"), str)
                            or not _int(tok.get("size")) or not isinstance(tok.get("path"), str)):
        bad(f"tokenizer must be an object with path, size and sha256 (kdbench.tokenizers_check.identity), got {tok!r}")
    return h


def read_header(path: Path, key: str = "teacher_capture.path") -> dict:
    """The store's header, schema-checked (no array is read)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(key, f"no capture store at {path} ({'not a folder' if path.exists() else 'no such folder'})")
    if (path / HEADER).is_symlink():
        _inside(path, path / HEADER, key)
    try:
        h = json.loads((path / HEADER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ConfigError(key, f"no readable capture at {path} ({HEADER}: {e})") from None
    return check_header(h, str(path / HEADER), key)


def expected_shape(header: dict, split: str, name: str) -> tuple[int, ...]:
    n, v = header["n"][split], header["views"][split]
    pos = (header["positions"],) if header.get("positions") is not None else ()
    return (n, header["positions"]) if name == "tokens" else (n, v, *pos, header["k"])


#: the dtypes each array may have (the writer writes the first)
DTYPES = {"indices": ("int32", "int64"), "log_probs": ("float32",), "tokens": ("int64", "int32")}


def _npy_layout(f: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """An .npy file's shape and dtype from its own header, and its size checked against them (not read)."""
    try:
        with open(f, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError, tokenize.TokenError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise ConfigError(key, f"{f}: not a readable .npy array ({why})") from None
    if dtype.hasobject:
        raise ConfigError(key, f"{f}: an object array (pickled Python objects); allowed: numeric arrays only")
    want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = f.stat().st_size
    if size != want:
        raise ConfigError(key, f"{f}: {size} bytes, but its header {dtype}{list(shape)} needs {want}"
                               f"{' (truncated)' if size < want else ''}")
    return tuple(shape), dtype


def _inside(store: Path, f: Path, key: str) -> None:
    if not f.exists() and not f.is_symlink():
        raise ConfigError(key, f"{f}: missing (the header lists this split)")
    real = f.resolve()
    if not real.is_relative_to(store.resolve()):
        raise ConfigError(key, f"{f}: a link to {real}, outside the store; a store's files must be its own")
    if not real.is_file():
        raise ConfigError(key, f"{f}: not a file")


def check_layout(store: Path, header: dict, key: str) -> None:
    """Every array file of every split present, inside the store, complete, of the header's shape and dtype."""
    for split in splits_of(header):
        for name, fname in files_of(split, header).items():
            f = store / fname
            _inside(store, f, key)
            shape, dtype = _npy_layout(f, key)
            _match(str(f), split, name, shape, dtype, header, key)


def _match(where: str, split: str, name: str, shape, dtype, header: dict, key: str) -> None:
    want = expected_shape(header, split, name)
    if tuple(shape) != want:
        what = "[N, T]" if name == "tokens" else "[N, V, T, k]" if header.get("positions") is not None else "[N, V, k]"
        raise ConfigError(key, f"{where}: split {split}: shape {list(shape)}, but the header says {list(want)} "
                               f"({what}: n.{split}, views.{split}{', positions' if 'T' in what else ''}"
                               f"{', k' if name != 'tokens' else ''})")
    if np.dtype(dtype).name not in DTYPES[name]:
        raise ConfigError(key, f"{where}: split {split}: dtype {np.dtype(dtype).name}; allowed: "
                               f"{', '.join(DTYPES[name])}")


#: the value rules, in the order they are checked: (row mask of the rows that break it, the rule)
_RULES = (
    (lambda i, lp, c: ~np.isfinite(lp).all(-1), "log-probs must be finite"),
    (lambda i, lp, c: ((i < 0) | (i >= c)).any(-1), "class ids must be in [0, num_classes)"),
    (lambda i, lp, c: (np.diff(np.sort(i, -1), axis=-1) == 0).any(-1), "class ids repeat within the row"),
    (lambda i, lp, c: (lp > LOGP_TOL).any(-1), "log-probs must be <= 0"),
    (lambda i, lp, c: (np.diff(lp, axis=-1) > 0).any(-1), "log-probs must be sorted from the largest (top-1 first)"),
    (lambda i, lp, c: np.exp(lp).sum(-1) > 1 + MASS_TOL, f"the row's probabilities sum above 1 (+{MASS_TOL:g})"),
)


def check_values(split: str, idx: np.ndarray, logp: np.ndarray, num_classes: int,
                 tokens: np.ndarray | None = None) -> None:
    """The value rules for one split, chunk by chunk; raises :class:`StoreDefect` for the first row that breaks one."""
    rows = max(1, _CHUNK // max(1, int(np.prod(idx.shape[1:]))))
    for start in range(0, idx.shape[0], rows):
        i = np.asarray(idx[start:start + rows]).astype(np.int64)
        lp = np.asarray(logp[start:start + rows]).astype(np.float64)

        for mask, rule in _RULES:
            hit = np.argwhere(mask(i, lp, num_classes))
            if hit.size:
                local = tuple(int(j) for j in hit[0])
                rule = rule.replace("num_classes", str(num_classes))
                raise StoreDefect(split, f"{rule}, got ids {i[local].tolist()} log-probs "
                                         f"{np.round(lp[local], 4).tolist()}", (local[0] + start, *local[1:]))
    if tokens is not None:
        t = np.asarray(tokens)
        row = np.argwhere((t < 0) | (t >= num_classes))
        if row.size:
            raise StoreDefect(split, f"token ids must be in [0, {num_classes}), got {int(t[tuple(row[0])])}",
                              tuple(int(r) for r in row[0][:1]))


def file_digest(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _checked_note(store: Path, header: dict) -> dict:
    return {"rules": RULES, "num_classes": header["num_classes"], "k": header["k"],
            "sha256": {fname: file_digest(store / fname) for s in splits_of(header) for fname in files_of(s, header).values()}}


def store_identity(header: dict) -> dict:
    """What a run's record keeps of the store it read: k, the capture temperature and a digest of the arrays'
    checksums (of the whole header for a store written without them), so a store replaced at the same path
    is told apart from the one a record was trained on."""
    import json

    sums = (header.get("checked") or {}).get("sha256") if isinstance(header.get("checked"), dict) else None
    blob = json.dumps(sums or {k: v for k, v in header.items() if k != "checked"}, sort_keys=True, default=str)
    return {"k": header["k"], "capture_tau": header["capture_tau"],
            "sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def validate_store(path: Path, *, values: bool = True, key: str = "teacher_capture.path") -> dict:
    """Validate the store at ``path`` fully and return its header; refuse (``ConfigError`` on ``key``, one line
    naming the file, split, row and rule) a store that breaks any rule. The header and the arrays' layout are
    checked always; the values (``values=True``) unless the header's checksums say they already passed."""
    store = Path(path)
    header = read_header(store, key)
    check_layout(store, header, key)
    stamp = _stamp(store, header)
    if values and _PASSED.get(store.resolve()) != stamp:  # not already checked by this process, unchanged since
        note = header.get("checked")
        if not isinstance(note, dict) or note != _checked_note(store, header):
            for split in splits_of(header):
                files = files_of(split, header)
                arrays = {name: np.load(store / f, mmap_mode="r", allow_pickle=False) for name, f in files.items()}
                try:
                    check_values(split, arrays["indices"], arrays["log_probs"], header["num_classes"],
                                 arrays.get("tokens"))
                except StoreDefect as e:
                    f = store / files["tokens" if e.rule.startswith("token") else
                                      "indices" if "class ids" in e.rule else "log_probs"]
                    raise ConfigError(key, f"{f}: {e}") from None
        _PASSED[store.resolve()] = stamp
    return header


#: stores whose values passed in this process: their files' (size, mtime, inode) then, so that a run's
#: preflight and its signal read the checksums once (a file changed since is checked again)
_PASSED: dict[Path, tuple] = {}


def _stamp(store: Path, header: dict) -> tuple:
    names = [HEADER, *(f for s in splits_of(header) for f in files_of(s, header).values())]
    return tuple((n, st.st_size, st.st_mtime_ns, st.st_ino) for n in names for st in [(store / n).stat()])


def read_split(path: Path, split: str):
    """``(indices int64, log_probs float32)`` tensors of one split (validate the store first)."""
    import torch

    idx = torch.from_numpy(np.load(Path(path) / f"{split}.indices.npy", allow_pickle=False).astype(np.int64))
    logp = torch.from_numpy(np.load(Path(path) / f"{split}.log_probs.npy", allow_pickle=False))
    return idx, logp


def check_out(out: Path, key: str = "--out") -> bool:
    """Where a store will be written: True when ``out`` already holds a (complete) store, False when it is
    new or an empty folder; refused (one line) under a file, on a file, or a non-empty folder with no store."""
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.is_symlink() and not parent.exists():
            raise ConfigError(key, f"{parent} is a broken symbolic link; fix or remove it")
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(key, f"{out} is a file" if parent == out else f"{out} is under {parent}, a file")
            if not os.access(parent, os.W_OK | os.X_OK) and parent != out:
                raise ConfigError(key, f"{out} cannot be created: {parent} is not writable")
            break
    if not out.exists():
        return False
    if (out / HEADER).exists():
        return True
    if any(out.iterdir()):
        raise ConfigError(key, f"{out} is not empty and holds no capture; give an empty or new folder")
    return False


def make_header(*, k: int, capture_tau: float, num_classes: int, family: str, arrays: dict, dataset: dict,
                teacher: dict, positions: int | None = None, tokenizer: dict | None = None) -> dict:
    """A header for ``arrays`` (``{split: (indices, log_probs)}``): its views and counts read from their shapes."""
    h = {"format": FORMAT, "values": "log_probs", "k": int(k), "capture_tau": float(capture_tau),
         "num_classes": int(num_classes), "family": family, "dataset": dataset,
         "views": {s: int(a[0].shape[1]) for s, a in arrays.items()},
         "n": {s: int(a[0].shape[0]) for s, a in arrays.items()},
         "teacher": {f: teacher.get(f) for f in ("name", "key", "arch", "test")}}
    if positions is not None:
        h["positions"] = int(positions)
        h["alignment"] = "position t holds the distribution of token t + 1 (the label at t)"
    if tokenizer is not None:  # token data read with a Hugging Face tokenizer: its identity, checked against a run's
        h["tokenizer"] = {f: tokenizer[f] for f in ("path", "size", "sha256")}
    return h


def write_store(out: Path, header: dict, arrays: dict[str, tuple[np.ndarray, np.ndarray]],
                tokens: dict[str, np.ndarray] | None = None, *, key: str = "--out") -> Path:
    """Check ``header`` and ``arrays`` (and token ``tokens``) against every rule, then write the arrays and the
    header (last: the completion marker, with the files' checksums), each atomically. Nothing is written
    for a store that breaks a rule."""
    out = Path(out)
    header = {k: v for k, v in header.items() if k != "checked"}
    check_header(header, f"{out / HEADER}", key)
    tokens = tokens or {}
    if set(arrays) != set(header["n"]) or (header.get("positions") is not None and set(tokens) != set(arrays)):
        raise ConfigError(key, f"{out}: the arrays' splits ({', '.join(arrays)}) are not the header's "
                               f"({', '.join(splits_of(header))})")
    for split, (idx, logp) in arrays.items():
        for name, a in (("indices", idx), ("log_probs", logp), *((("tokens", tokens[split]),) if split in tokens else ())):
            kind = np.asarray(a).dtype
            ok = kind.kind in "iu" if name != "log_probs" else kind.kind == "f"
            _match(str(out / f"{split}.{name}.npy"), split, name, np.shape(a), DTYPES[name][0] if ok else kind,
                   header, key)
        try:
            check_values(split, idx, logp, header["num_classes"], tokens.get(split))
        except StoreDefect as e:
            raise ConfigError(key, f"{out}: {e}") from None
    check_out(out, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(array: np.ndarray):
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)

        return write

    with FileLock(str(out) + ".lock"):  # two writers of one folder: the second finds the first's store
        if check_out(out, "--out"):
            raise ConfigError("--out", f"{out} already holds a capture (or another writer's files); it is kept: "
                                       "give a new folder")
        out.mkdir(exist_ok=True)
        for split, (idx, logp) in arrays.items():
            atomic_write(out / f"{split}.indices.npy", save(np.asarray(idx).astype(np.int32)))
            atomic_write(out / f"{split}.log_probs.npy", save(np.asarray(logp).astype(np.float32)))
            if split in tokens:
                atomic_write(out / f"{split}.tokens.npy", save(np.asarray(tokens[split]).astype(np.int64)))
        header["checked"] = _checked_note(out, header)
        atomic_write_text(out / HEADER, json.dumps(header, indent=2, sort_keys=True) + "\n")
    return out


def export_jsonl(store: Path, out: Path) -> Path:
    """The store as JSON lines (the first line its header, then one line per (split, idx, view))."""
    store = Path(store)
    header = validate_store(store, key="--jsonl")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"header": {k: v for k, v in header.items() if k != "checked"}}, sort_keys=True)
                    + "\n")
            for split in splits_of(header):
                idx, logp = read_split(store, split)
                tok_path = store / f"{split}.tokens.npy"
                tokens = np.load(tok_path, allow_pickle=False) if header.get("positions") is not None else None
                for i in range(idx.shape[0]):
                    for v in range(idx.shape[1]):
                        row = {"split": split, "idx": i, "view": v, "indices": idx[i, v].tolist(),
                               "log_probs": np.round(logp[i, v].numpy().astype(np.float64), 7).tolist()}
                        if tokens is not None:  # a sequence: its token ids, then a top-k per position
                            row["tokens"] = tokens[i].tolist()
                        f.write(json.dumps(row) + "\n")

    return atomic_write(out, write)


def import_jsonl(src: Path, out: Path) -> Path:
    """A JSONL capture (as :func:`export_jsonl` writes it, or from another tool) as a store folder.

    Each row's (class id, log-prob) pairs are put in descending order of log-prob. Refused with one line
    naming the file and line, before anything is written: a line that is not one JSON object, a field of
    the wrong type (``true`` is not a class id), a row whose k or positions differ from the header's, a
    split the header does not count, a repeated (split, idx, view), an idx or view outside the header's
    counts, fewer rows than the header counts, any value rule of :func:`check_values`, an ``--out`` that
    already holds something.
    """
    src, out, key = Path(src), Path(out), "--from-jsonl"
    if check_out(out):
        raise ConfigError("--out", f"{out} already holds a capture; it is kept: give a new folder")
    where = f"{src}:1"

    def bad(msg: str):
        raise ConfigError(key, f"{where}: {msg}")

    try:
        with open(src, encoding="utf-8") as f:
            first = json.loads(f.readline())
            if not isinstance(first, dict) or "header" not in first:
                bad("the first line must be {\"header\": {...}}")
            header = check_header({k: v for k, v in first["header"].items() if k != "checked"}
                                  if isinstance(first["header"], dict) else first["header"], where, key)
            k, positions = header["k"], header.get("positions")
            rows = sum(header["n"][s] * header["views"][s] for s in header["n"]) * (positions or 1)
            if rows * _MIN_ROW_BYTES > os.path.getsize(src):  # before allocating what the header claims
                bad(f"the header counts {rows} rows (n x views{' x positions' if positions else ''}); the file "
                    f"({os.path.getsize(src)} bytes) cannot hold them")
            arrays = {s: (np.zeros(expected_shape(header, s, "indices"), np.int64),
                          np.zeros(expected_shape(header, s, "log_probs"), np.float32)) for s in header["n"]}
            tokens = {s: np.zeros(expected_shape(header, s, "tokens"), np.int64) for s in header["n"]} \
                if positions is not None else {}
            line_of: dict[tuple[str, int, int], int] = {}
            for n, line in enumerate(f, start=2):
                where = f"{src}:{n}"
                if not line.strip():
                    bad("an empty line")
                o = json.loads(line)
                if not isinstance(o, dict):
                    bad(f"a row must be a JSON object, got {type(o).__name__}")
                split, i, v = o.get("split"), o.get("idx"), o.get("view", 0)
                if split not in header["n"]:
                    bad(f"split {split!r} is not one the header counts ({', '.join(header['n'])})")
                for name, val, top in (("idx", i, header["n"][split]), ("view", v, header["views"][split])):
                    if not _int(val) or not 0 <= val < top:
                        bad(f"{name} must be an integer in [0, {top}) ({split}: header n/views), got {val!r}")
                if (split, i, v) in line_of:
                    bad(f"{split} idx {i} view {v} repeats line {line_of[(split, i, v)]}")
                line_of[(split, i, v)] = n
                ids, lps = o.get("indices"), o.get("log_probs")
                per_pos = [(ids, lps)]
                if positions is not None:
                    if not isinstance(ids, list) or not isinstance(lps, list) or len(ids) != positions \
                            or len(lps) != positions:
                        bad(f"indices and log_probs must be lists of {positions} positions (the header's)")
                    per_pos = list(zip(ids, lps))
                for pos_ids, pos_lps in per_pos:
                    if not isinstance(pos_ids, list) or not isinstance(pos_lps, list) or len(pos_ids) != k \
                            or len(pos_lps) != k:
                        bad(f"{len(pos_ids) if isinstance(pos_ids, list) else pos_ids!r} entries where the header "
                            f"says k={k}")
                    if not all(_int(c) and 0 <= c < header["num_classes"] for c in pos_ids):
                        bad(f"class ids must be integers in [0, {header['num_classes']}), got {pos_ids}")
                    if not all(_num(x) and -math.inf < x <= LOGP_TOL for x in pos_lps):
                        bad(f"log_probs must be finite and <= 0, got {pos_lps}")
                a_i, a_l = np.asarray(ids, np.int64), np.asarray(lps, np.float64)
                order = np.argsort(-a_l, axis=-1, kind="stable")
                arrays[split][0][i, v] = np.take_along_axis(a_i, order, -1)
                arrays[split][1][i, v] = np.take_along_axis(a_l, order, -1)
                if positions is not None:
                    toks = o.get("tokens")
                    if not isinstance(toks, list) or len(toks) != positions or not all(map(_int, toks)):
                        bad(f"tokens must be a list of {positions} integer token ids")
                    tokens[split][i] = toks
    except json.JSONDecodeError as e:
        raise ConfigError(key, f"{where}: not one JSON object per line ({e.msg}); a truncated file?") from None
    except (UnicodeDecodeError, ValueError, OverflowError) as e:
        raise ConfigError(key, f"{where}: malformed value ({e})") from None
    except OSError as e:
        raise ConfigError(key, f"cannot read {src} ({e.strerror})") from None
    for split in header["n"]:
        want = header["n"][split] * header["views"][split]
        have = sum(1 for s, _, _ in line_of if s == split)
        if have != want:
            missing = next((i, v) for i in range(header["n"][split]) for v in range(header["views"][split])
                           if (split, i, v) not in line_of)
            raise ConfigError(key, f"{src}: split {split} has {have} rows, the header counts {want} "
                                   f"({header['n'][split]} examples x {header['views'][split]} views); "
                                   f"idx {missing[0]} view {missing[1]} is missing")
    for split, (idx, logp) in arrays.items():
        try:
            check_values(split, idx, logp, header["num_classes"], tokens.get(split))
        except StoreDefect as e:
            line = line_of.get((split, e.row[0], e.row[1] if len(e.row) > 1 else 0)) if e.row else None
            raise ConfigError(key, f"{src}:{line}: {e}" if line else f"{src}: {e}") from None
    return write_store(out, header, arrays, tokens, key=key)
