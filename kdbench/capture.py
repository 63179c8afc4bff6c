"""``kdbench capture``: a teacher's top-k log-probabilities per example (and per view), written once.

``kdbench capture [options] [config overrides]`` runs any registry teacher (the one the config
names) over the dataset and writes a store (its format and validator: :mod:`kdbench.stores`) that
``teacher_signal=captured teacher_capture.path=<store>`` trains from with no teacher in memory.
``--jsonl`` also writes (and ``--from-jsonl`` reads) its JSON-lines form.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from kdbench.errors import ConfigError, exit_codes
from kdbench.stores import (
    check_out,
    export_jsonl,
    import_jsonl,
    make_header,
    read_header,
    validate_store,
    write_store,
)


def capture(cfg, out: Path, k: int, tau: float = 1.0, views: str = "all") -> Path:
    """Run the config's teacher over the config's dataset and write its top-k log-probs."""
    from kdbench import teachers
    from kdbench.config import resolve, validate
    from kdbench.data import augment as aug
    from kdbench.data import load_dataset, split_train_val
    from kdbench.teachers import train as teacher_training

    check_args(k, tau, out)
    validate(cfg)
    conf = resolve(cfg)
    d = {**conf["dataset"], **{k: str(Path(conf["dataset"][k]).absolute())
                               for k in ("root", "cache_dir") if conf["dataset"].get(k)}}
    data = split_train_val(load_dataset(d), d["val_size"], seed=d["split_seed"])
    if not 1 <= k <= data.num_classes:
        raise ConfigError("--k", f"must be in [1, {data.num_classes}] (the dataset's classes), got {k}")
    family = aug.family_of(conf["dataset"].get("augment"), data) if data.is_image else "none"
    n_views = aug.num_views(family) if views == "all" else 1
    want = {"k": k, "capture_tau": tau, "family": family if views == "all" else "none",
            "dataset": teachers.dataset_identity(conf["dataset"], data)}
    teachers_dir = Path(cfg.paths.teachers_dir).absolute()
    if _existing(out, want, lambda: teacher_key(conf, data, teachers_dir)):
        print(f"kdbench: {out} already holds this capture (top-{k}, tau {tau:g}): kept")
        return out
    teacher, tmeta = teacher_training.for_run(conf["teacher"], conf["dataset"], conf["trainer"], data,
                                      teachers_dir=teachers_dir,
                                      checkpoints_dir=Path(cfg.paths.checkpoints_dir).absolute(),
                                      eval_batch_size=conf["dataset"]["eval_batch_size"], log=print)
    teacher.eval()
    bs = int(conf["dataset"]["eval_batch_size"])
    splits = [("train", data.train_x, data.train_y, family if views == "all" else "none", n_views),
              ("test", data.test_x, data.test_y, "none", 1)]
    if data.val_x is not None:
        splits.insert(1, ("val", data.val_x, data.val_y, "none", 1))
    arrays = {}
    with torch.inference_mode():
        for split, x, y, fam, nv in splits:
            arrays[split] = top_k(teacher, x, y, fam, nv, data, bs, k, tau)
    header = make_header(k=k, capture_tau=tau, num_classes=data.num_classes, family=want["family"], arrays=arrays,
                         dataset=want["dataset"], teacher=tmeta,
                         positions=int(data.train_x.shape[1]) if data.is_tokens else None,
                         tokenizer=data.info.get("tokenizer"))
    # the sequences themselves, for the JSONL form (one line per sequence)
    tokens = {s: x.numpy() for s, x in (("train", data.train_x), ("val", data.val_x), ("test", data.test_x))
              if x is not None} if data.is_tokens else None
    # what the teacher gave is checked like any store before anything is written (e.g. NaN log-probs)
    out = write_store(out, header, arrays, tokens, key="teacher")
    print(f"kdbench: capture written to {out}")
    return out


def check_args(k: int, tau: float, out: Path) -> None:
    """``--k``, ``--tau`` and ``--out`` refused (one line) before any data or teacher is loaded."""
    if k < 1:
        raise ConfigError("--k", f"must be an integer >= 1 (classes kept per example), got {k}")
    if not math.isfinite(tau) or tau <= 0:
        raise ConfigError("--tau", f"must be a finite number > 0 (the temperature of the stored log-probs), got {tau}")
    check_out(out)


def teacher_key(conf: dict, data, teachers_dir: Path) -> str | None:
    """The registry key of the run's teacher, without loading or training it."""
    from kdbench.config import resolve_precision
    from kdbench.teachers import locate, oracle, read_meta

    tc = conf["teacher"]
    if tc["arch"] == "oracle":
        return oracle(data)[1]["key"]
    precision = resolve_precision(tc["recipe"].get("precision", "auto"), conf["trainer"]["accelerator"])
    entry, fields = locate(tc, conf["dataset"], data, precision, teachers_dir)
    return read_meta(entry).get("key") if tc.get("checkpoint") else fields["key"]


def _existing(out: Path, want: dict, key_of) -> bool:
    """True when ``out`` already holds exactly the capture asked for (``key_of()``: the teacher's key); refuses
    (one line, before the teacher runs) a folder holding anything else, so that nothing written is overwritten."""
    out = Path(out)
    if not check_out(out):
        return False
    h = read_header(out, key="--out")
    have = {key: h.get(key) for key in want}
    if have == want:
        have["teacher_key"], want["teacher_key"] = h["teacher"].get("key"), key_of()
    if have == want:
        try:
            validate_store(out, key="--out")  # kept only when whole: a broken copy is not this capture
        except ConfigError as e:
            raise ConfigError("--out", f"{out} holds this capture, broken ({e.message}); it is kept: delete it "
                                       "or give another folder") from None
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
    p.add_argument("--k", type=int, default=None, help="classes kept per example (top-k; default 5)")
    p.add_argument("--tau", type=float, default=None, help="temperature of the stored log-probs (default 1)")
    p.add_argument("--views", choices=("all", "none"), default=None,
                   help="all (default): every view of the training augmentation; none: the plain image only")
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--jsonl", default=None, help="also export it as JSON lines to this file")
    p.add_argument("--from-jsonl", default=None, help="import this JSON-lines capture into --out instead")
    p.add_argument("overrides", nargs="*", help="config overrides, as for python -m kdbench.train")
    a = p.parse_args(argv)
    if a.jsonl and Path(a.jsonl).exists():
        raise ConfigError("--jsonl", f"{a.jsonl} exists; it is kept: give a new file")
    if a.from_jsonl:
        unused = [f"--{n}" for n in ("k", "tau", "views") if getattr(a, n) is not None] + a.overrides[:1]
        if unused:  # an import takes them from its header: a value given here would have no effect
            raise ConfigError(unused[0], "not used with --from-jsonl (the file's header says k, tau, views and "
                                         "the data): leave it out")
        out = import_jsonl(Path(a.from_jsonl), Path(a.out))
        print(f"kdbench: capture imported into {out}")
    else:
        from kdbench.config import compose_job

        k, tau = 5 if a.k is None else a.k, 1.0 if a.tau is None else a.tau
        check_args(k, tau, Path(a.out))
        out = capture(compose_job(a.overrides), Path(a.out), k, tau, a.views or "all")
    if a.jsonl:
        export_jsonl(out, Path(a.jsonl))
        print(f"kdbench: exported as JSON lines to {a.jsonl}")
    return 0
