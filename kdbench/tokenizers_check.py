"""Two tokenizers are one vocabulary, or the run is refused: compared id by id, not by size.

Distillation compares two distributions position by position and id by id: a teacher and a student (or a
capture and a student) whose tokenizers map one id to different tokens silently train on nonsense (the most
frequent late-found bug in TRL and DistillKit issues). :func:`compare_vocabularies` refuses that with one
line naming both tokenizers and the first differing id; :func:`identity` is what a capture store keeps.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from kdbench.errors import ConfigError

_CACHE: dict[str, object] = {}


def offline() -> None:
    """This process never reaches the Hub (set before transformers is imported, which reads them once)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_tokenizer(path, key: str):
    """A local tokenizer (a folder written by ``save_pretrained``, or a ``tokenizer.json``), offline; one line naming
    ``key`` when there is none."""
    offline()
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(key, f"{p} does not exist; give a local tokenizer folder (save_pretrained) or tokenizer.json "
                               "(nothing is downloaded)")
    real = str(p.resolve())
    if real in _CACHE:
        return _CACHE[real]
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if p.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        else:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(key, f"{p}: not a readable tokenizer ({str(e).splitlines()[0][:160]})") from None
    _CACHE[real] = tok
    return tok


def id_to_token(tok) -> dict[int, str]:
    """Every id of the tokenizer (its added tokens included) -> its token string."""
    return {int(i): t for t, i in tok.get_vocab().items()}


def first_difference(a: dict[int, str], b: dict[int, str]) -> int | None:
    """The smallest id that the two maps give different tokens (or that only one has); None when identical."""
    ids = sorted(set(a) | set(b))
    return next((i for i in ids if a.get(i) != b.get(i)), None)


def compare_vocabularies(tok_a, tok_b, name_a: str, name_b: str, key: str) -> None:
    """Refuse (one line on ``key``, naming both and the first differing id) two tokenizers that differ."""
    a, b = id_to_token(tok_a), id_to_token(tok_b)
    i = first_difference(a, b)
    if i is None:
        return
    raise ConfigError(key, f"the tokenizers of {name_a} and {name_b} differ: first at token id {i} "
                           f"({a.get(i, '<absent>')!r} vs {b.get(i, '<absent>')!r}; {len(a)} vs {len(b)} ids); "
                           "distillation compares distributions id by id, so both sides need one vocabulary")


def vocab_digest(tok) -> str:
    """A SHA-256 of the id -> token map (what makes two tokenizers one vocabulary)."""
    pairs = sorted(id_to_token(tok).items())
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


def identity(tok, path) -> dict:
    """What a record or a capture store keeps of a tokenizer: where it was, its size and its vocabulary's digest."""
    return {"path": str(Path(str(path)).expanduser().resolve()), "size": len(tok), "sha256": vocab_digest(tok)}


def check_against(stored: dict | None, tok, path, key: str, what: str = "the capture") -> None:
    """``stored`` (a tokenizer :func:`identity`) is the run's tokenizer ``tok``; refused otherwise, naming the first
    differing id where the stored tokenizer can still be read, else its digest."""
    if not stored:
        return
    if stored.get("sha256") == vocab_digest(tok):
        return
    where = stored.get("path")
    if where and Path(where).exists():
        compare_vocabularies(load_tokenizer(where, key), tok, f"{what} ({where})", f"the run ({path})", key=key)
    raise ConfigError(key, f"{what} was made with another tokenizer ({stored.get('size')} ids, vocabulary sha256 "
                           f"{str(stored.get('sha256'))[:12]}..., at {where}) than the run's ({len(tok)} ids, "
                           f"{vocab_digest(tok)[:12]}..., {path})")


def check_run_tokenizer(stored: dict | None, conf: dict, data, key: str = "teacher_capture.path") -> None:
    """A capture store's tokenizer (its header's ``tokenizer``) against the run's ``dataset.tokenizer``."""
    ours = (getattr(data, "info", None) or {}).get("tokenizer")
    if not stored or not ours:
        return
    if stored.get("sha256") == ours.get("sha256"):
        return
    path = (conf.get("dataset") or {}).get("tokenizer")
    check_against(stored, load_tokenizer(path, "dataset.tokenizer"), path, key)
