"""``hf_text``: local text tokenized with the run's Hugging Face tokenizer (``dataset.tokenizer``), offline.

``dataset.path``: a ``.jsonl`` file of ``{"prompt", "response"}`` rows (the prompt's tokens get label -100,
the seed's SFT setting; a ``{"text"}`` row is all response) or a plain-text file (documents separated by a
blank line); null: the shipped corpus of ``bytes_text`` (CPython's ``pydoc_data.topics``). Rows are
``packed`` (one token stream cut into windows of ``max_length + 1``, an EOS after each document) or padded
(each document cut to ``max_length + 1`` tokens and right-padded, pads labelled -100). The labels are
shifted as in :mod:`kdbench.data.text`: position ``t`` holds token ``t`` and the label token ``t + 1``.
A fixed ``test_fraction`` of the rows (a seed-independent permutation) is the test split.

``python -m kdbench.data.hf_text --train-tokenizer DIR [--vocab 512]`` trains a byte-level BPE tokenizer on
the shipped corpus and saves it (``save_pretrained``) for the ``hf_*`` experiments and the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from kdbench.data import keys
from kdbench.data.core import TensorData
from kdbench.data.text import IGNORE, corpus_bytes
from kdbench.errors import ConfigError, DataError
from kdbench.tokenizers_check import offline

EOS = "<|endoftext|>"
offline()  # before anything here imports transformers


def read_documents(path: Path | None) -> tuple[list[tuple[str, str]], dict]:
    """``[(prompt, response)]`` of a JSONL file, a text file (prompt empty) or the shipped corpus, and provenance."""
    if path is None:
        blob, info = corpus_bytes()
        return [("", d) for d in blob.decode("utf-8").split("\n\n") if d.strip()], info
    if not path.is_file():
        raise DataError("dataset.path", f"{path} is not a file ({'a folder' if path.is_dir() else 'no such file'}); "
                                        "give a .jsonl of prompt/response rows or a plain-text file")
    raw = path.read_bytes()
    info = {"source": str(path.resolve()), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError("dataset.path", f"{path}: not UTF-8 text (byte {e.start})") from None
    if path.suffix != ".jsonl":
        return [("", d) for d in text.split("\n\n") if d.strip()], {**info, "format": "text"}
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError("dataset.path", f"{path}:{n}: not one JSON object per line ({e.msg})") from None
        if not isinstance(o, dict):
            raise DataError("dataset.path", f"{path}:{n}: a row must be a JSON object, got {type(o).__name__}")
        if "text" in o and "response" not in o:
            o = {"prompt": "", "response": o["text"]}
        p, r = o.get("prompt", ""), o.get("response")
        if not isinstance(p, str) or not isinstance(r, str):
            raise DataError("dataset.path", f"{path}:{n}: needs string fields prompt and response (or text), "
                                            f"got {sorted(o)}")
        docs.append((p, r))
    if not docs:
        raise DataError("dataset.path", f"{path}: no rows")
    return docs, {**info, "format": "jsonl"}


def encode(tok, docs: list[tuple[str, str]], add_eos: bool) -> list[tuple[list[int], list[bool]]]:
    """Each document's token ids and, per token, whether it is counted (response) or masked (prompt)."""
    eos = tok.eos_token_id
    out = []
    prompts = tok([p for p, _ in docs], add_special_tokens=False)["input_ids"]
    responses = tok([r for _, r in docs], add_special_tokens=False)["input_ids"]
    for p, r in zip(prompts, responses):
        ids = list(p) + list(r) + ([eos] if add_eos and eos is not None else [])
        out.append((ids, [False] * len(p) + [True] * (len(ids) - len(p))))
    return out


def rows(encoded, length: int, pack: bool, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, length]`` token ids and keep flags: one stream cut into windows (``pack``) or one row per document."""
    if pack:
        ids = [i for d, _ in encoded for i in d]
        keep = [k for _, m in encoded for k in m]
        n = len(ids) // length
        if n == 0:
            raise DataError("dataset.max_length", f"the text has {len(ids)} tokens, fewer than one window of "
                                                  f"max_length + 1 = {length}")
        return (torch.tensor(ids[: n * length]).view(n, length), torch.tensor(keep[: n * length]).view(n, length))
    docs = [(d[:length], m[:length]) for d, m in encoded if len(d) >= 2]
    x = torch.full((len(docs), length), pad_id, dtype=torch.long)
    k = torch.zeros((len(docs), length), dtype=torch.bool)
    for i, (d, m) in enumerate(docs):
        x[i, : len(d)] = torch.tensor(d)
        k[i, : len(m)] = torch.tensor(m)
    return x, k


def shift_kept(seqs: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = seq[:, :-1]``; ``y = seq[:, 1:]`` with -100 where the label token is not counted."""
    y = seqs[:, 1:].clone()
    y[~keep[:, 1:]] = IGNORE
    return seqs[:, :-1].clone(), y


def load_hf_text(cfg: Mapping) -> TensorData:
    """The ``hf_text`` dataset (see the module docstring for its keys)."""
    from kdbench.tokenizers_check import identity, load_tokenizer

    tok_path = keys.get(cfg, "tokenizer")
    if not tok_path:
        raise ConfigError("dataset.tokenizer", "hf_text needs a local tokenizer folder (save_pretrained) or "
                                               "tokenizer.json; `python -m kdbench.data.hf_text --train-tokenizer DIR` "
                                               "makes one from the shipped corpus")
    max_length = keys.integer(cfg, "max_length", 128, 2)
    pack = keys.boolean(cfg, "pack", True)
    test_fraction = keys.number(cfg, "test_fraction", 0.1, 0.0, 1.0, open_lo=True, open_hi=True)
    path = keys.get(cfg, "path")
    tok = load_tokenizer(tok_path, "dataset.tokenizer")
    docs, info = read_documents(Path(str(path)).expanduser() if path else None)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    seqs, keep = rows(encode(tok, docs, add_eos=True), max_length + 1, pack, int(pad_id))
    if seqs.shape[0] < 2:
        raise DataError("dataset.path", f"{path or 'the corpus'} gives {seqs.shape[0]} row(s) of {max_length + 1} "
                                        "tokens; a train and a test split need at least 2")
    order = torch.randperm(seqs.shape[0], generator=torch.Generator().manual_seed(1234))
    n_test = max(1, min(seqs.shape[0] - 1, int(round(test_fraction * seqs.shape[0]))))
    test_i, train_i = order[:n_test], order[n_test:]
    n_train, n_cap = keys.integer(cfg, "n_train", None, 1), keys.integer(cfg, "n_test", None, 1)
    train_i, test_i = train_i[:n_train] if n_train else train_i, test_i[:n_cap] if n_cap else test_i
    train_x, train_y = shift_kept(seqs[train_i], keep[train_i])
    test_x, test_y = shift_kept(seqs[test_i], keep[test_i])
    vocab = len(tok)
    info = {**info, "tokenizer": identity(tok, tok_path), "max_length": max_length, "pack": pack,
            "seq_len": max_length, "vocab": vocab, "documents": len(docs),
            "alignment": "position t holds input token t and the label token t + 1",
            "kept_tokens": {"train": int((train_y != IGNORE).sum()), "test": int((test_y != IGNORE).sum())},
            "sizes": {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])}}
    return TensorData(name="hf_text", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                      num_classes=vocab, mean=(0.0,), std=(1.0,), default_augment="none", class_names=None,
                      info=info)


def train_tokenizer(out: Path, vocab_size: int = 512, text: str | None = None):
    """A byte-level BPE tokenizer (``EOS`` at id 0, also the pad) trained with ``tokenizers`` on ``text`` (default:
    the shipped corpus), saved to ``out`` with ``save_pretrained``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if text is None:
        text = corpus_bytes()[0].decode("utf-8")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(text.split("\n\n"), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    tok.save_pretrained(str(out))
    return tok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdbench.data.hf_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-tokenizer", required=True, metavar="DIR", help="write a byte-level BPE tokenizer here")
    p.add_argument("--vocab", type=int, default=512)
    a = p.parse_args(argv)
    out = Path(a.train_tokenizer)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"kdbench: --train-tokenizer: {out} is not empty; it is kept: give a new folder")
    tok = train_tokenizer(out, a.vocab)
    print(f"kdbench: tokenizer ({len(tok)} ids) written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
