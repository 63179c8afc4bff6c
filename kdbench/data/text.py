"""Sequence data for token-level distillation, offline: a language with a known next-token law, and bytes.

Both are :class:`~kdbench.data.core.TensorData` with int64 token ids ``x`` ``[N, T]`` and labels ``y``
``[N, T]`` **already shifted**: position ``t`` of a row holds input token ``t`` and, as its label, token
``t + 1`` (the distribution a causal model outputs at ``t`` is that of token ``t + 1``). Positions whose
label is ``-100`` count in no loss and no metric: in prompt/response mode (``prompt_len > 0``) the
labels of the prompt (``y[:, :prompt_len - 1]``, the positions predicting prompt tokens) are -100;
with ``prompt_len: 0`` every token counts (plain language modelling).

- ``markov``: a seeded sparse Markov chain over ``vocab`` tokens (each token has ``branching``
  successors with Dirichlet(1) weights). The true next-token law at any position is the row of
  the transition matrix for the current token: :func:`markov_oracle` is the exact teacher.
- ``bytes_text``: byte-level tokens (vocabulary 256, no tokenizer) of the text of Python's own
  ``pydoc_data.topics`` (the documentation of the language, PSF licence, shipped with every CPython):
  windows of ``seq_len + 1`` bytes; the module file, its size and its SHA-256 are recorded.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping

import torch

from kdbench.data import keys
from kdbench.data.core import TensorData
from kdbench.errors import ConfigError, DataError

IGNORE = -100


def shift(seqs: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of sequences ``[N, T + 1]``: ``x = seq[:, :-1]``, ``y = seq[:, 1:]`` with the labels of
    prompt tokens (``y[:, t]`` for ``t + 1 < prompt_len``) set to -100."""
    x, y = seqs[:, :-1].clone(), seqs[:, 1:].clone()
    if prompt_len > 1:
        y[:, : prompt_len - 1] = IGNORE
    return x, y


def _finish(name: str, cfg: Mapping, train: torch.Tensor, test: torch.Tensor, vocab: int, info: dict) -> TensorData:
    prompt_len = keys.integer(cfg, "prompt_len", 0, 0)
    if prompt_len >= train.shape[1]:
        raise ConfigError("dataset.prompt_len", f"must be < seq_len + 1 = {train.shape[1]}, got {prompt_len}")
    for split in ("train", "test"):
        k = keys.subset(cfg, split)
        if k is not None:  # a prefix: the rows are already in random order
            if split == "train":
                train = train[:k]
            else:
                test = test[:k]
    train_x, train_y = shift(train, prompt_len)
    test_x, test_y = shift(test, prompt_len)
    info = {**info, "prompt_len": prompt_len, "seq_len": int(train_x.shape[1]), "vocab": vocab,
            "alignment": "position t holds input token t and the label token t + 1",
            "sizes": {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])}}
    return TensorData(name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                      num_classes=vocab, mean=(0.0,), std=(1.0,), default_augment="none",
                      class_names=None, info=info)


def transition_matrix(vocab: int, branching: int, seed: int) -> torch.Tensor:
    """``P[a, b]``: probability that token ``b`` follows ``a``. Each row has ``branching`` successors,
    drawn without replacement, with weights uniform on the simplex (Dirichlet(1): normalised
    exponential draws), all from the seeded generator."""
    g = torch.Generator().manual_seed(seed)
    p = torch.zeros(vocab, vocab, dtype=torch.float64)
    for a in range(vocab):
        succ = torch.randperm(vocab, generator=g)[:branching]
        e = -torch.log(torch.rand(branching, generator=g, dtype=torch.float64).clamp_min(1e-300))
        p[a, succ] = e / e.sum()
    return p


def load_markov(cfg: Mapping) -> TensorData:
    """The ``markov`` dataset: seeded chain, sequences drawn from it, its transition matrix kept as the oracle."""
    vocab = keys.integer(cfg, "vocab", 32, 2)
    branching = keys.integer(cfg, "branching", 4, 1)
    if branching > vocab:
        raise ConfigError("dataset.branching", f"must be <= vocab ({vocab}), got {branching}")
    seq_len = keys.integer(cfg, "seq_len", 32, 2)
    n_train, n_test = keys.integer(cfg, "n_train", 4000, 1), keys.integer(cfg, "n_test", 500, 1)
    seed = keys.integer(cfg, "seed", 0, 0)
    p = transition_matrix(vocab, branching, seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = n_train + n_test
    seqs = torch.empty(n, seq_len + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(seq_len):
        seqs[:, t + 1] = torch.multinomial(p[seqs[:, t]].float(), 1, generator=g).squeeze(1)
    info = {"source": "markov", "vocab": vocab, "branching": branching, "seed": seed,
            "entropy_rate_nats": float(_entropy_rate(p)), "oracle": {"transition": p.float()}}
    return _finish("markov", cfg, seqs[:n_train], seqs[n_train:], vocab, info)


def _entropy_rate(p: torch.Tensor) -> float:
    """Mean next-token entropy under the chain's stationary law: the NLL the true law achieves."""
    pi = torch.full((p.shape[0],), 1.0 / p.shape[0], dtype=torch.float64)
    for _ in range(500):
        pi = pi @ p
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
    return float((pi * h).sum())


class MarkovOracle(torch.nn.Module):
    """The true next-token law of a ``markov`` dataset as a frozen model: logits ``log P[x_t]``
    (``-inf`` where a successor is impossible, floored at -1e4 so that softmax stays exact)."""

    def __init__(self, transition: torch.Tensor):
        super().__init__()
        self.register_buffer("log_p", torch.where(transition > 0, transition.log(), torch.full_like(transition, -1e4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_p[x]


def markov_oracle(data: TensorData) -> MarkovOracle:
    """The frozen exact teacher of a ``markov`` dataset."""
    oracle = (data.info or {}).get("oracle") or {}
    if "transition" not in oracle:
        raise DataError("dataset", f"{data.name} has no next-token oracle (only dataset.name=markov does)")
    return MarkovOracle(oracle["transition"]).eval().requires_grad_(False)


def corpus_bytes() -> tuple[bytes, dict]:
    """The text of ``pydoc_data.topics`` (CPython's language documentation) as UTF-8 bytes, and its provenance."""
    try:
        import pydoc_data.topics as topics
    except ImportError as e:  # a Python built without its docs
        raise DataError("dataset.name", f"bytes_text needs Python's pydoc_data module ({e})") from None
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    blob = text.encode("utf-8")
    return blob, {"source": "pydoc_data.topics (CPython documentation, PSF licence)", "file": topics.__file__,
                  "python": sys.version.split()[0], "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def load_bytes_text(cfg: Mapping) -> TensorData:
    """The ``bytes_text`` dataset: windows of ``seq_len + 1`` bytes of :func:`corpus_bytes`, a fixed tenth as test."""
    seq_len = keys.integer(cfg, "seq_len", 64, 2)
    blob, info = corpus_bytes()
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).long()
    n = data.numel() // (seq_len + 1)
    seqs = data[: n * (seq_len + 1)].view(n, seq_len + 1)
    # a fixed, seed-independent split: a random tenth of the windows is test (text order kept inside windows)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    n_test_windows = max(1, n // 10)
    train, test = seqs[order[n_test_windows:]], seqs[order[:n_test_windows]]
    n_train, n_test = keys.integer(cfg, "n_train", None, 1), keys.integer(cfg, "n_test", None, 1)
    if n_train is not None:
        train = train[:n_train]
    if n_test is not None:
        test = test[:n_test]
    info.update(windows={"train": int(train.shape[0]), "test": int(test.shape[0])},
                unigram_entropy_nats=float(_unigram_entropy(data)))
    return _finish("bytes_text", cfg, train, test, 256, info)


def _unigram_entropy(tokens: torch.Tensor) -> float:
    c = torch.bincount(tokens, minlength=256).double()
    p = c[c > 0] / c.sum()
    return float(-(p * p.log()).sum())
