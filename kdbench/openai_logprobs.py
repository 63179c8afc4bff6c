"""Top-k log-probs in the OpenAI / vLLM format, into and out of a capture store (:mod:`kdbench.stores`).

One JSON object per line, one line per row of the run's data::

    {"split": "train", "idx": 0, "logprobs": {"content": [
        {"token": " the", "logprob": -0.3, "bytes": [32, 116, 104, 101],
         "top_logprobs": [{"token": " the", "logprob": -0.3, "bytes": [...]}, ...]}, ...]}}

(``choices[0].logprobs`` of a completion response is read too.) Entry ``t`` of ``content`` is position ``t``
of the row: its ``token`` is the row's token ``t + 1`` and its ``top_logprobs`` the teacher's distribution of
that token (an OpenAI ``echo`` whose first entry has no ``top_logprobs`` is the row's token 0, checked and
dropped). Tokens map to ids through the run's tokenizer by their ``bytes`` (else the UTF-8 of ``token``);
``content`` may stop after the last position the loss counts (trailing pads), the rest is filled with a
placeholder no loss reads. Refused with the line and position: a token that maps to no id, a token that is not
the row's (the capture was tokenized otherwise), fewer than ``k`` alternatives. The store keeps the
tokenizer's identity and the teacher's name. Export writes the same form (``logprob`` null where the row's
token is outside the stored top-k).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from kdbench.errors import ConfigError, exit_codes

IGNORE = -100


def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): printable unicode characters standing for the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def token_bytes(tok) -> list[bytes]:
    """The bytes each id of ``tok`` stands for (byte-level BPE exactly; SentencePiece ``▁`` and ``<0xHH>`` too)."""
    vocab = {int(i): t for t, i in tok.get_vocab().items()}
    specials = set(tok.all_special_tokens) | {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()}
    dec = _byte_decoder()
    byte_level = "ByteLevel" in type(getattr(tok.backend_tokenizer, "decoder", None)).__name__ \
        if hasattr(tok, "backend_tokenizer") else False
    out = [b""] * (max(vocab) + 1)
    for i, t in vocab.items():
        if t in specials:
            out[i] = t.encode("utf-8")
        elif byte_level and all(c in dec for c in t):
            out[i] = bytes(dec[c] for c in t)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            out[i] = bytes([int(t[3:5], 16)])
        else:
            out[i] = t.replace("▁", " ").encode("utf-8")
    return out


def id_lookup(tok) -> dict[bytes, int]:
    """bytes -> id (the lowest id where two ids stand for the same bytes)."""
    out: dict[bytes, int] = {}
    for i, b in enumerate(token_bytes(tok)):
        out.setdefault(b, i)
    return out


def _content(o: dict, bad) -> list:
    lp = o.get("logprobs")
    if lp is None and isinstance(o.get("choices"), list) and o["choices"]:
        lp = o["choices"][0].get("logprobs") if isinstance(o["choices"][0], dict) else None
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list):
        bad("needs logprobs.content (or choices[0].logprobs.content): a list of {token, logprob, bytes, "
            "top_logprobs} per position")
    return content


def _entry_id(e, lookup: dict[bytes, int], bad, what: str) -> int:
    if not isinstance(e, dict) or not isinstance(e.get("token"), str):
        bad(f"{what}: needs a string token, got {e!r}"[:200])
    raw = e.get("bytes")
    if raw is not None and (not isinstance(raw, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in raw)):
        bad(f"{what}: bytes must be a list of integers in [0, 256), got {raw!r}"[:200])
    b = bytes(raw) if raw is not None else e["token"].encode("utf-8")
    if b not in lookup:
        bad(f"{what}: token {e['token']!r} (bytes {list(b)}) is no token of the run's tokenizer")
    return lookup[b]


def expected_tokens(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """A row's token at each position's label (``x[t + 1]``, and ``y[T - 1]`` last) and how many positions a
    capture must cover (up to the last one the loss counts)."""
    want = np.concatenate([x[1:], y[-1:]])
    kept = np.flatnonzero(y != IGNORE)
    return want, int(kept[-1]) + 1 if kept.size else 0


def import_openai(src: Path, out: Path, conf: dict, data, tok, *, k: int | None = None, tau: float = 1.0,
                  teacher: str | None = None) -> Path:
    """The OpenAI-format file ``src`` as a store at ``out`` for the run ``conf`` (its loaded ``data`` and tokenizer)."""
    from kdbench.stores import check_out, make_header, write_store
    from kdbench.teachers import dataset_identity
    from kdbench.tokenizers_check import identity

    src, out, key = Path(src), Path(out), "FILE"
    if check_out(out):
        raise ConfigError("--out", f"{out} already holds a capture; it is kept: give a new folder")
    if not data.is_tokens or not data.info.get("tokenizer"):
        raise ConfigError("dataset.name", "an OpenAI-format capture maps tokens through the run's tokenizer: use "
                                          "dataset=hf_text with dataset.tokenizer")
    splits = {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)}
    if data.val_x is not None:
        splits = {"train": splits["train"], "val": (data.val_x, data.val_y), "test": splits["test"]}
    T = int(data.train_x.shape[1])
    lookup = id_lookup(tok)
    seen: dict[tuple[str, int], int] = {}
    rows: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    where = f"{src}:1"

    def bad(msg: str):
        raise ConfigError(key, f"{where}: {msg}")

    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(key, f"cannot read {src} ({e})") from None
    for n, line in enumerate(lines, start=1):
        where = f"{src}:{n}"
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"not one JSON object per line ({e.msg})")
        if not isinstance(o, dict):
            bad(f"a line must be a JSON object, got {type(o).__name__}")
        split, i = o.get("split"), o.get("idx")
        if split not in splits:
            bad(f"split must be one of {', '.join(splits)} (the run's), got {split!r}")
        count = int(splits[split][0].shape[0])
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
            bad(f"idx must be an integer in [0, {count}) (the run's {split} rows), got {i!r}")
        if (split, i) in seen:
            bad(f"{split} idx {i} repeats line {seen[(split, i)]}")
        seen[(split, i)] = n
        x, y = splits[split][0][i].numpy(), splits[split][1][i].numpy()
        want, need = expected_tokens(x, y)
        content = _content(o, bad)
        if content and not (content[0] or {}).get("top_logprobs") and len(content) > 1:
            first = _entry_id(content[0], lookup, bad, "position -1 (the echoed first token)")
            if first != int(x[0]):
                bad(f"the echoed first token is id {first}, the row's is {int(x[0])} ({tok.convert_ids_to_tokens(int(x[0]))!r})")
            content = content[1:]
        if len(content) < need or len(content) > T:
            bad(f"{len(content)} positions; the row needs {need} (up to its last counted label) and has {T}")
        ids_rows, lps_rows = [], []
        for t, e in enumerate(content):
            got = _entry_id(e, lookup, bad, f"position {t}")
            if got != int(want[t]):
                bad(f"position {t}: token {e['token']!r} is id {got}, the row's token there is id {int(want[t])} "
                    f"({tok.convert_ids_to_tokens(int(want[t]))!r}): the capture was tokenized otherwise")
            tops = e.get("top_logprobs")
            if not isinstance(tops, list):
                bad(f"position {t}: top_logprobs must be a list")
            best: dict[int, float] = {}
            for j, a in enumerate(tops):
                tid = _entry_id(a, lookup, bad, f"position {t}, top_logprobs[{j}]")
                lp = a.get("logprob")
                if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not math.isfinite(lp) or lp > 1e-6:
                    bad(f"position {t}, top_logprobs[{j}]: logprob must be a finite number <= 0, got {lp!r}")
                best[tid] = max(best.get(tid, -math.inf), float(min(lp, 0.0)))
            if k is None:
                k = len(best)
                if k < 1:
                    bad(f"position {t}: no top_logprobs")
            if len(best) < k:
                bad(f"position {t}: {len(best)} distinct alternatives, fewer than k={k}")
            order = sorted(best.items(), key=lambda kv: -kv[1])[:k]
            ids_rows.append([a for a, _ in order])
            lps_rows.append([b for _, b in order])
        rows[(split, i)] = (np.asarray(ids_rows, np.int64), np.asarray(lps_rows, np.float32))
    if k is None:
        raise ConfigError(key, f"{src}: no rows")
    for split, (x, _) in splits.items():
        missing = [i for i in range(int(x.shape[0])) if (split, i) not in rows]
        if missing:
            raise ConfigError(key, f"{src}: {split} idx {missing[0]} is missing ({len(missing)} of the run's "
                                   f"{int(x.shape[0])} {split} rows); a capture covers every row of the run's splits")
    V = data.num_classes
    filler_i = np.arange(k, dtype=np.int64)
    filler_l = np.full(k, -math.log(max(V, k)), np.float32)  # a valid row no loss reads (labels -100 there)
    arrays, tokens = {}, {}
    for split, (x, _) in splits.items():
        n = int(x.shape[0])
        a_i = np.broadcast_to(filler_i, (n, 1, T, k)).copy()
        a_l = np.broadcast_to(filler_l, (n, 1, T, k)).copy()
        for i in range(n):
            ri, rl = rows[(split, i)]
            a_i[i, 0, : len(ri)], a_l[i, 0, : len(rl)] = ri, rl
        arrays[split], tokens[split] = (a_i, a_l), x.numpy()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    header = make_header(k=k, capture_tau=tau, num_classes=V, family="none", arrays=arrays,
                         dataset=dataset_identity(conf["dataset"], data),
                         teacher={"name": teacher or src.stem, "key": f"openai-{digest[:10]}", "arch": "external",
                                  "test": {}},
                         positions=T, tokenizer=identity(tok, conf["dataset"]["tokenizer"]))
    return write_store(out, header, arrays, tokens, key=key)


def export_openai(store: Path, out: Path, conf: dict, data, tok) -> Path:
    """The store as OpenAI-format lines (see the module docstring), for the run's data and tokenizer."""
    from kdbench.files import atomic_write
    from kdbench.stores import read_split, splits_of, validate_store
    from kdbench.tokenizers_check import check_run_tokenizer

    store, out = Path(store), Path(out)
    if out.exists():
        raise ConfigError("--out", f"{out} exists; it is kept: give a new file")
    header = validate_store(store, key="STORE")
    if header.get("positions") is None:
        raise ConfigError("STORE", f"{store} holds no token data (no positions): nothing to write per token")
    check_run_tokenizer(header.get("tokenizer"), conf, data, key="STORE")
    splits = {"train": data.train_y, "test": data.test_y, **({"val": data.val_y} if data.val_y is not None else {})}
    if set(splits) != set(splits_of(header)) or any(header["n"][s] != int(splits[s].shape[0]) for s in splits):
        raise ConfigError("STORE", f"{store} holds {header['n']} rows, the run's data "
                                   f"{ {s: int(v.shape[0]) for s, v in splits.items()} }")
    tb = token_bytes(tok)

    def entry(tid: int, lp) -> dict:
        b = tb[tid]
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for split in splits_of(header):
                idx, logp = read_split(store, split)
                x = np.load(store / f"{split}.tokens.npy", allow_pickle=False)
                y = splits[split].numpy()
                for i in range(idx.shape[0]):
                    if not np.array_equal(x[i], data_x(data, split)[i]):
                        raise ConfigError("STORE", f"{store}: {split} row {i} holds other tokens than the run's data")
                    want, need = expected_tokens(x[i], y[i])
                    content = []
                    for t in range(need):
                        ids, lps = idx[i, 0, t].tolist(), logp[i, 0, t].tolist()
                        own = dict(zip(ids, lps)).get(int(want[t]))
                        content.append({**entry(int(want[t]), None if own is None else round(own, 7)),
                                        "top_logprobs": [entry(a, round(b, 7)) for a, b in zip(ids, lps)]})
                    f.write(json.dumps({"split": split, "idx": i, "logprobs": {"content": content}}) + "\n")

    return atomic_write(out, write)


def data_x(data, split: str):
    return {"train": data.train_x, "val": data.val_x, "test": data.test_x}[split].numpy()


def _run_data(overrides: list[str]):
    """The run's resolved config, its data (splits as a run holds them) and its tokenizer."""
    from kdbench.config import compose_job, resolve, validate
    from kdbench.runner import load_data
    from kdbench.tokenizers_check import load_tokenizer

    cfg = compose_job(overrides)
    validate(cfg)  # the run's own checks (its tokenizers compared), before any data is read
    conf = resolve(cfg)
    if conf["dataset"].get("name") != "hf_text" or not conf["dataset"].get("tokenizer"):
        raise ConfigError("dataset.name", "OpenAI-format captures map tokens through the run's tokenizer: give "
                                          "dataset=hf_text dataset.tokenizer=DIR (and the run's other dataset keys)")
    data = load_data(conf["dataset"])
    return conf, data, load_tokenizer(conf["dataset"]["tokenizer"], "dataset.tokenizer")


@exit_codes()
def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    cmd = argv[0] if argv else None
    if cmd not in ("import", "export"):
        raise ConfigError("kdbench openai", f"needs a command, import or export, got {cmd!r}")
    i = argparse.ArgumentParser(prog="kdbench openai import",
                                description="an OpenAI/vLLM top_logprobs JSONL into a capture store")
    i.add_argument("file")
    i.add_argument("--out", required=True, help="the store folder to write")
    i.add_argument("--k", type=int, default=None, help="alternatives kept per position (default: the first position's)")
    i.add_argument("--tau", type=float, default=1.0, help="temperature the log-probs were served at")
    i.add_argument("--teacher", default=None, help="the teacher's name for the store (default: the file's name)")
    i.add_argument("overrides", nargs="*", help="the run's config overrides (dataset=hf_text dataset.tokenizer=...)")
    e = argparse.ArgumentParser(prog="kdbench openai export", description="a capture store as OpenAI-format "
                                                                          "top_logprobs JSONL")
    e.add_argument("store")
    e.add_argument("--out", required=True, help="the JSONL file to write")
    e.add_argument("overrides", nargs="*", help="the run's config overrides")
    a = (i if cmd == "import" else e).parse_intermixed_args(argv[1:])  # options and overrides in any order
    if cmd == "import":
        if a.k is not None and a.k < 1:
            raise ConfigError("--k", f"must be an integer >= 1, got {a.k}")
        if not math.isfinite(a.tau) or a.tau <= 0:
            raise ConfigError("--tau", f"must be a finite number > 0, got {a.tau}")
        from kdbench.stores import check_out

        if check_out(Path(a.out)):
            raise ConfigError("--out", f"{a.out} already holds a capture; it is kept: give a new folder")
        if not Path(a.file).is_file():
            raise ConfigError("FILE", f"no such file: {a.file}")
        conf, data, tok = _run_data(a.overrides)
        out = import_openai(Path(a.file), Path(a.out), conf, data, tok, k=a.k, tau=a.tau, teacher=a.teacher)
        print(f"kdbench: OpenAI-format capture imported into {out}")
    else:
        if Path(a.out).exists():
            raise ConfigError("--out", f"{a.out} exists; it is kept: give a new file")
        conf, data, tok = _run_data(a.overrides)
        out = export_openai(Path(a.store), Path(a.out), conf, data, tok)
        print(f"kdbench: exported in the OpenAI format to {out}")
    return 0
