"""Captured teachers: a teacher's top-k log-probabilities per example (and per view), written once.

``kdbench capture [options] [config overrides]`` runs any registry teacher (the one the config
names) over the dataset and writes a store that ``teacher_signal=captured
teacher_capture.path=<store>`` trains from with no teacher in memory. The store is a folder:

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

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import ConfigError, KDBenchError
from kdbench.files import atomic_write, atomic_write_text

HEADER = "header.json"
SPLITS = ("train", "val", "test")


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


def capture(cfg, out: Path, k: int, tau: float = 1.0, views: str = "all") -> Path:
    """Run the config's teacher over the config's dataset and write its top-k log-probs."""
    from kdbench import teachers
    from kdbench.config import resolve, validate
    from kdbench.data import augment as aug
    from kdbench.data import load_dataset, split_train_val

    validate(cfg)
    conf = resolve(cfg)
    d = {**conf["dataset"], **{k: str(Path(conf["dataset"][k]).absolute())
                               for k in ("root", "cache_dir") if conf["dataset"].get(k)}}
    data = split_train_val(load_dataset(d), d["val_size"], seed=d["split_seed"])
    if not 1 <= k <= data.num_classes:
        raise ConfigError("--k", f"must be in [1, {data.num_classes}] (the dataset's classes), got {k}")
    teacher, tmeta = teachers.for_run(conf["teacher"], conf["dataset"], conf["trainer"], data,
                                      teachers_dir=Path(cfg.paths.teachers_dir).absolute(),
                                      checkpoints_dir=Path(cfg.paths.checkpoints_dir).absolute(),
                                      eval_batch_size=conf["dataset"]["eval_batch_size"], log=print)
    teacher.eval()
    a = conf["dataset"].get("augment", "default")
    family = (data.default_augment if a in ("default", None) else a) if data.is_image else "none"
    n_views = aug.num_views(family) if views == "all" else 1
    want = {"k": k, "capture_tau": tau, "family": family if views == "all" else "none",
            "dataset": teachers.dataset_identity(conf["dataset"], data), "teacher_key": tmeta.get("key")}
    if _existing(out, want):
        print(f"kdbench: {out} already holds this capture (teacher {want['teacher_key']}, top-{k}, tau {tau:g}): kept")
        return out
    bs = int(conf["dataset"]["eval_batch_size"])
    splits = [("train", data.train_x, data.train_y, family if views == "all" else "none", n_views),
              ("test", data.test_x, data.test_y, "none", 1)]
    if data.val_x is not None:
        splits.insert(1, ("val", data.val_x, data.val_y, "none", 1))
    arrays = {}
    with torch.inference_mode():
        for split, x, y, fam, nv in splits:
            arrays[split] = top_k(teacher, x, y, fam, nv, data, bs, k, tau)
    positions = {"positions": int(data.train_x.shape[1]),
                 "alignment": "position t holds the distribution of token t + 1 (the label at t)"} \
        if data.is_tokens else {}
    header = {"format": "kdbench-capture-1", "values": "log_probs", "k": k, "capture_tau": tau, **positions,
              "num_classes": data.num_classes, "family": family if views == "all" else "none",
              "views": {s: int(arrays[s][0].shape[1]) for s in arrays},
              "n": {s: int(arrays[s][0].shape[0]) for s in arrays},
              "dataset": teachers.dataset_identity(conf["dataset"], data),
              "teacher": {key: tmeta.get(key) for key in ("name", "key", "arch", "test")}}
    out = write_store(out, header, arrays)
    if data.is_tokens:  # the sequences themselves, for the JSONL form (one line per sequence)
        for split, x in (("train", data.train_x), ("val", data.val_x), ("test", data.test_x)):
            if x is not None:
                def save(tmp: Path, x=x) -> None:
                    with open(tmp, "wb") as f:
                        np.save(f, x.numpy().astype(np.int64))

                atomic_write(out / f"{split}.tokens.npy", save)
    print(f"kdbench: capture written to {out}")
    return out


def _existing(out: Path, want: dict) -> bool:
    """True when ``out`` already holds exactly the capture asked for; refuses (one line, before any
    work) a folder holding anything else, so that nothing already written is overwritten."""
    out = Path(out)
    if not out.exists():
        return False
    if not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a folder")
    if not (out / HEADER).exists():
        if any(out.iterdir()):
            raise ConfigError("--out", f"{out} is not empty and holds no capture; give an empty or new folder")
        return False
    h = read_header(out)
    have = {"k": h.get("k"), "capture_tau": h.get("capture_tau"), "family": h.get("family"),
            "dataset": h.get("dataset"), "teacher_key": (h.get("teacher") or {}).get("key")}
    if have != want:
        diff = ", ".join(f"{key} {have[key]!r} (asked {want[key]!r})" for key in want
                         if have[key] != want[key] and key != "dataset") or "dataset"
        raise ConfigError("--out", f"{out} holds another capture ({diff}); it is kept: give another folder or "
                                   "delete it")
    return True


def top_k(teacher, x, y, family: str, n_views: int, data, bs: int, k: int, tau: float):
    """``[N, V, k]`` indices and log-probabilities (at ``tau``) of the teacher on every view of every row."""
    from kdbench.data import TensorLoader

    device = next(iter(teacher.parameters()), next(iter(teacher.buffers()), torch.empty(0))).device
    loader = TensorLoader(x, y, bs, augment=family, mean=data.mean, std=data.std).to(device)
    # tokens: one top-k per position, [N, V, T, k] (position t: the distribution of token t + 1)
    positions = tuple(x.shape[1:2]) if x.dtype == torch.int64 else ()
    idx_out = np.zeros((x.shape[0], n_views, *positions, k), np.int64)
    lp_out = np.zeros((x.shape[0], n_views, *positions, k), np.float32)
    for v in range(n_views):
        for start in range(0, x.shape[0], bs):
            rows = torch.arange(start, min(start + bs, x.shape[0]), device=device)
            logp = torch.log_softmax(teacher(loader.view_batch(rows, torch.full_like(rows, v))).float() / tau, -1)
            top = logp.topk(k, dim=-1)
            idx_out[start:start + len(rows), v] = top.indices.cpu().numpy()
            lp_out[start:start + len(rows), v] = top.values.cpu().numpy()
    return idx_out, lp_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdbench capture", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=5, help="classes kept per example (top-k)")
    p.add_argument("--tau", type=float, default=1.0, help="temperature of the stored log-probs")
    p.add_argument("--views", choices=("all", "none"), default="all",
                   help="all: every view of the training augmentation; none: the plain image only")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--jsonl", default=None, help="also export it as JSON lines to this file")
    p.add_argument("--from-jsonl", default=None, help="import this JSON-lines capture into --out instead")
    p.add_argument("overrides", nargs="*", help="config overrides, as for python -m kdbench.train")
    a = p.parse_args(argv)
    try:
        if a.from_jsonl:
            out = import_jsonl(Path(a.from_jsonl), Path(a.out))
            print(f"kdbench: capture imported into {out}")
        else:
            from kdbench.config import compose_job

            out = capture(compose_job(a.overrides), Path(a.out), a.k, a.tau, a.views)
        if a.jsonl:
            export_jsonl(out, Path(a.jsonl))
    except KDBenchError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 2
    if a.jsonl:
        print(f"kdbench: exported as JSON lines to {a.jsonl}")
    return 0
