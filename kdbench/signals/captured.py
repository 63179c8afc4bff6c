"""``captured``: top-k teacher log-probabilities read from a capture store (``kdbench capture``).

No teacher in memory: training reads ``(indices, log_probs)`` for each ``(idx, view)`` of the batch
from the store named by ``teacher_capture.path``. A store that does not match the run (another
dataset or split, another number of classes, another k than ``teacher_capture.k``, missing
examples, or no per-view entries for an augmenting run) is refused with one line before any work.

The store (written by ``kdbench capture``, :mod:`kdbench.capture`) is a folder:

- ``header.json``: teacher (name, key, arch, test metrics), dataset identity, k, the temperature at
  capture, ``values: "log_probs"``, the augmentation family and number of views per split;
- ``<split>.indices.npy`` (int32 ``[N, V, k]``) and ``<split>.log_probs.npy`` (float32
  ``[N, V, k]``) for ``train`` (V = every view of the family, or 1 with ``--views none``), ``val``
  and ``test`` (V = 1). The log-probabilities are those of the full softmax at the capture
  temperature, sorted from the largest.

``--jsonl`` also writes (and ``--from-jsonl`` reads) a JSON-lines form for interop: the first line
``{"header": {...}}``, then one object per (split, idx, view): ``{"split", "idx", "view",
"indices", "log_probs"}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import ConfigError
from kdbench.files import atomic_write, atomic_write_text
from kdbench.signals import SPLITS, TopK, register_signal, table_for

HEADER = "header.json"


def write_store(out: Path, header: dict, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write the arrays, then the header (the completion marker), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    def save(array: np.ndarray):
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        return write

    for split, (idx, logp) in arrays.items():
        atomic_write(out / f"{split}.indices.npy", save(idx.astype(np.int32)))
        atomic_write(out / f"{split}.log_probs.npy", save(logp.astype(np.float32)))
    atomic_write_text(out / HEADER, json.dumps(header, indent=2, sort_keys=True) + "\n")
    return out


def read_header(path: Path) -> dict:
    try:
        return json.loads((Path(path) / HEADER).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError("teacher_capture.path", f"no readable capture at {path} ({HEADER}: {e})") from None


def read_split(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.from_numpy(np.load(Path(path) / f"{split}.indices.npy").astype(np.int64))
    logp = torch.from_numpy(np.load(Path(path) / f"{split}.log_probs.npy"))
    return idx, logp


def export_jsonl(store: Path, out: Path) -> Path:
    header = read_header(store)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"header": header}, sort_keys=True) + "\n")
            for split in SPLITS:
                if not (store / f"{split}.indices.npy").exists():
                    continue
                idx, logp = read_split(store, split)
                tok_path = store / f"{split}.tokens.npy"
                tokens = np.load(tok_path) if tok_path.exists() else None
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

    Refused with one line naming the file and line, before anything is written: a line that is not
    one JSON object (a truncated file), a row whose k differs from the header's, class ids outside
    ``[0, num_classes)``, log-probabilities that are not finite and <= 0, an unknown split, and an
    ``--out`` that already holds something.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("--out", f"{out} already exists and is not empty; it is kept: give a new folder")
    where = f"{src}:1"
    try:
        with open(src, encoding="utf-8") as f:
            first = json.loads(f.readline())
            if not isinstance(first, dict) or "header" not in first:
                raise ConfigError("--from-jsonl", f"{src}: the first line must be {{\"header\": {{...}}}}")
            header = first["header"]
            k, n_cls = int(header["k"]), int(header["num_classes"])
            positions = int(header["positions"]) if header.get("positions") is not None else None
            tokens: dict[str, dict[int, list]] = {}
            rows: dict[str, dict[tuple[int, int], tuple[list, list]]] = {s: {} for s in SPLITS}
            for n, line in enumerate(f, start=2):
                where = f"{src}:{n}"
                o = json.loads(line)
                ids, lps = o["indices"], o["log_probs"]
                per_pos = positions is not None
                if per_pos and (len(ids) != positions or len(lps) != positions):
                    raise ConfigError("--from-jsonl", f"{where}: {len(ids)} positions where the header says "
                                                      f"{positions}")
                for pos_ids, pos_lps in zip(ids, lps) if per_pos else [(ids, lps)]:
                    if len(pos_ids) != k or len(pos_lps) != k:
                        raise ConfigError("--from-jsonl", f"{where}: {len(pos_ids)} entries where the header says k={k}")
                    if not all(isinstance(i, int) and 0 <= i < n_cls for i in pos_ids):
                        raise ConfigError("--from-jsonl", f"{where}: class ids must be integers in [0, {n_cls}), "
                                                          f"got {pos_ids}")
                    if not all(isinstance(v, (int, float)) and -math.inf < v <= 0 for v in pos_lps):
                        raise ConfigError("--from-jsonl", f"{where}: log_probs must be finite and <= 0, got {pos_lps}")
                if o["split"] not in rows:
                    raise ConfigError("--from-jsonl", f"{where}: split {o['split']!r} is not one of {', '.join(SPLITS)}")
                rows[o["split"]][(int(o["idx"]), int(o.get("view", 0)))] = (ids, lps)
                if per_pos and "tokens" in o:
                    tokens.setdefault(o["split"], {})[int(o["idx"])] = o["tokens"]
    except json.JSONDecodeError as e:
        raise ConfigError("--from-jsonl", f"{where}: not one JSON object per line ({e.msg}); a truncated file?") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("--from-jsonl", f"{where}: missing or malformed field ({e})") from None
    except OSError as e:
        raise ConfigError("--from-jsonl", f"cannot read {src} ({e.strerror})") from None
    arrays = {}
    for split, r in rows.items():
        if not r:
            continue
        n_ex = max(i for i, _ in r) + 1
        n_v = max(v for _, v in r) + 1
        if len(r) != n_ex * n_v:
            raise ConfigError("--from-jsonl", f"{src}: split {split} has {len(r)} rows, not {n_ex} examples x {n_v} views")
        shape = (n_ex, n_v, *((positions,) if positions is not None else ()), k)
        idx = np.zeros(shape, np.int64)
        logp = np.zeros(shape, np.float32)
        for (i, v), (a, b) in r.items():
            idx[i, v], logp[i, v] = a, b
        arrays[split] = (idx, logp)
    out = write_store(out, header, arrays)
    for split, toks in tokens.items():
        np.save(out / f"{split}.tokens.npy", np.array([toks[i] for i in sorted(toks)], np.int64))
    return out


def _store(conf: dict) -> Path:
    path = (conf.get("teacher_capture") or {}).get("path")
    if not path:
        raise ConfigError("teacher_capture.path", "teacher_signal=captured needs the capture store to read "
                                                  "(write one with `kdbench capture`)")
    return Path(path)


def preflight(conf: dict, data) -> None:
    from kdbench.data import augment as aug
    from kdbench.teachers import dataset_identity

    h = read_header(_store(conf))
    want_k = (conf.get("teacher_capture") or {}).get("k")
    if want_k is not None and int(want_k) != int(h["k"]):
        raise ConfigError("teacher_capture.k", f"the capture holds top-{h['k']}, the run asks for top-{want_k}")
    if int(h["num_classes"]) != data.num_classes:
        raise ConfigError("teacher_capture.path", f"the capture has {h['num_classes']} classes, the dataset "
                                                  f"{data.num_classes}")
    ours = dataset_identity(conf["dataset"], data)
    if h.get("dataset") != ours:
        diff = sorted(k for k in set(ours) | set(h.get("dataset") or {}) if ours.get(k) != (h.get("dataset") or {}).get(k))
        raise ConfigError("teacher_capture.path", f"the capture was made on other data (differs in: {', '.join(diff)})")
    n = {"train": data.train_x.shape[0], "test": data.test_x.shape[0],
         **({"val": data.val_x.shape[0]} if data.val_x is not None else {})}
    for split, count in n.items():
        if int((h.get("n") or {}).get(split, -1)) != int(count):
            raise ConfigError("teacher_capture.path", f"the capture has {(h.get('n') or {}).get(split)} {split} "
                                                      f"examples, the run {count}")
    if data.is_tokens:
        check_alignment(Path(_store(conf)), h, data)
    family = aug.family_of(conf["dataset"].get("augment"), data) if data.is_image else "none"
    views = aug.num_views(family)
    if int(h["views"]["train"]) != views or (views > 1 and h.get("family") != family):
        raise ConfigError("teacher_capture.path", f"the run augments with {family!r} ({views} views per image); the "
                                                  f"capture holds {h['views']['train']} view(s) of {h.get('family')!r}")


def check_alignment(path: Path, header: dict, data) -> None:
    """A token capture must hold one top-k per position, and position t must hold the distribution of
    token t + 1: a capture whose top-1 matches the current token more often than the next one is
    off by one (it was taken from logits not shifted the way the labels are), refused before any work."""
    if int(header.get("positions", -1)) != int(data.train_x.shape[1]):
        raise ConfigError("teacher_capture.path", f"the capture holds {header.get('positions')} positions per "
                                                  f"sequence, the data {data.train_x.shape[1]}")
    idx, _ = read_split(path, "test")
    top1 = idx[:, 0, :, 0]
    x, y = data.test_x, data.test_y
    keep = y != -100
    hits_next = (top1 == y)[keep].float().mean()
    hits_now = (top1 == x)[keep].float().mean()
    if hits_now > hits_next:
        raise ConfigError("teacher_capture.path", f"the capture looks off by one: its top-1 is the current token "
                                                  f"{100 * hits_now:.1f}% of the time and the next one only "
                                                  f"{100 * hits_next:.1f}%; position t must hold the distribution "
                                                  "of token t + 1")


class CapturedSignal:
    kind = "captured"
    trainable_parameters: list = []

    def __init__(self, path: Path):
        self.header = read_header(path)
        self.tau = float(self.header.get("capture_tau", 1.0))
        self.tables = {s: read_split(path, s) for s in SPLITS if (path / f"{s}.indices.npy").exists()}
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> CapturedSignal:
        self.device = torch.device(device)
        return self

    def __call__(self, batch, split: str) -> TopK:
        idx_t, logp_t = table_for(self.tables, split)
        idx = batch.idx.cpu()
        view = batch.view.cpu() if split == "train" else torch.zeros_like(idx)
        return TopK(idx_t[idx, view].to(self.device), logp_t[idx, view].to(self.device), self.tau)


@register_signal("captured", preflight=preflight, needs_teacher=False)
def _captured(*, conf: dict, **_) -> CapturedSignal:
    return CapturedSignal(_store(conf))
