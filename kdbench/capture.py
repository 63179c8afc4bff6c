"""``kdbench capture``: a teacher's top-k log-probabilities per example (and per view), written once.

``kdbench capture [options] [config overrides]`` runs any registry teacher (the one the config
names) over the dataset and writes a store (its format: :mod:`kdbench.signals.captured`) that
``teacher_signal=captured teacher_capture.path=<store>`` trains from with no teacher in memory.
``--jsonl`` also writes (and ``--from-jsonl`` reads) its JSON-lines form.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import ConfigError, exit_codes
from kdbench.files import atomic_write
from kdbench.signals.captured import HEADER, export_jsonl, import_jsonl, read_header, write_store


def capture(cfg, out: Path, k: int, tau: float = 1.0, views: str = "all") -> Path:
    """Run the config's teacher over the config's dataset and write its top-k log-probs."""
    from kdbench import teachers
    from kdbench.config import resolve, validate
    from kdbench.data import augment as aug
    from kdbench.data import load_dataset, split_train_val
    from kdbench.teachers import train as teacher_training

    validate(cfg)
    conf = resolve(cfg)
    d = {**conf["dataset"], **{k: str(Path(conf["dataset"][k]).absolute())
                               for k in ("root", "cache_dir") if conf["dataset"].get(k)}}
    data = split_train_val(load_dataset(d), d["val_size"], seed=d["split_seed"])
    if not 1 <= k <= data.num_classes:
        raise ConfigError("--k", f"must be in [1, {data.num_classes}] (the dataset's classes), got {k}")
    teacher, tmeta = teacher_training.for_run(conf["teacher"], conf["dataset"], conf["trainer"], data,
                                      teachers_dir=Path(cfg.paths.teachers_dir).absolute(),
                                      checkpoints_dir=Path(cfg.paths.checkpoints_dir).absolute(),
                                      eval_batch_size=conf["dataset"]["eval_batch_size"], log=print)
    teacher.eval()
    family = aug.family_of(conf["dataset"].get("augment"), data) if data.is_image else "none"
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


@exit_codes()
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
    if a.from_jsonl:
        out = import_jsonl(Path(a.from_jsonl), Path(a.out))
        print(f"kdbench: capture imported into {out}")
    else:
        from kdbench.config import compose_job

        out = capture(compose_job(a.overrides), Path(a.out), a.k, a.tau, a.views)
    if a.jsonl:
        export_jsonl(out, Path(a.jsonl))
        print(f"kdbench: exported as JSON lines to {a.jsonl}")
    return 0
