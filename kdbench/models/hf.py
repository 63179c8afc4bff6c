"""Hugging Face causal LMs as kdbench models (``arch: hf_causal_lm``), from local folders only.

``kwargs.path``: a local folder (``config.json`` + ``*.safetensors``), loaded with
``AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True)``; or
``kwargs.config``: a small config (a mapping with ``model_type``, or a ``config.json`` file) to build a
fresh model. Input token ids ``[B, T]``, output next-token logits ``[B, T, V]`` where ``V`` is the run's
vocabulary (the tokenizer's length): ids past it (a model's vocab padded to a multiple of 64, say) are
cut from the logits, which is the same as masking them out of the softmax. Padding is on the right, so a
causal model needs no attention mask (a real position never attends to a later pad).

Nothing downloads: the process runs with ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and a path
that is not a complete local folder is refused in one line by :func:`preflight` (called by
:func:`kdbench.config.validate`), before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from kdbench.errors import ConfigError
from kdbench.models import register_model
from kdbench.tokenizers_check import offline

ARCH = "hf_causal_lm"
#: files a tokenizer folder may hold (any one makes a model folder carry its own tokenizer)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = ("float32", "bfloat16", "float16")


offline()


class HFCausalLM(nn.Module):
    """A transformers causal LM whose ``forward(x)`` returns its logits cut to the run's ``vocab`` ids."""

    def __init__(self, model: nn.Module, vocab: int):
        super().__init__()
        self.model, self.vocab = model, int(vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=x, use_cache=False).logits
        return logits[..., : self.vocab] if logits.shape[-1] > self.vocab else logits


def check_folder(path, key: str) -> Path:
    """``path`` as a complete local model folder, or a one-line refusal naming ``key`` (nothing downloads)."""
    p = Path(str(path)).expanduser()
    hub_like = not p.is_absolute() and str(path).count("/") == 1 and not p.exists()
    if not p.exists():
        hint = (f"; {path!r} looks like a Hub model id: download it yourself (`hf download {path} --local-dir DIR`) "
                "and give DIR") if hub_like else ""
        raise ConfigError(key, f"{p} does not exist; {ARCH} loads local folders only, nothing is downloaded{hint}")
    if not p.is_dir():
        raise ConfigError(key, f"{p} is not a folder; give a model folder holding config.json and *.safetensors")
    if not (p / "config.json").is_file():
        raise ConfigError(key, f"{p} holds no config.json; give a folder written by save_pretrained")
    if not any(p.glob("*.safetensors")):
        bins = sorted(f.name for f in p.glob("*.bin"))
        raise ConfigError(key, f"{p} holds no *.safetensors weights{' (only ' + ', '.join(bins) + ')' if bins else ''}; "
                               "safetensors only (pickled weights are never loaded): convert them with save_pretrained"
                               "(..., safe_serialization=True)")
    return p


def read_config(config, key: str):
    """A transformers ``PretrainedConfig`` from a mapping (with ``model_type``) or a ``config.json`` file."""
    from transformers import AutoConfig

    if isinstance(config, (str, os.PathLike)):
        f = Path(str(config)).expanduser()
        if f.is_dir():
            f = f / "config.json"
        try:
            config = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(key, f"cannot read the model config {f}: {e}") from None
    if not isinstance(config, Mapping):
        raise ConfigError(key, f"must be a mapping with model_type (gpt2, llama, ...) or a config.json file, got {config!r}")
    d = dict(config)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{key}.model_type", "is required (gpt2, llama, qwen2, ...): it picks the architecture")
    try:
        return AutoConfig.for_model(str(model_type), **d)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{key}.model_type", str(e).splitlines()[0][:200]) from None


def model_vocab(kwargs: Mapping, key: str) -> int:
    """The vocabulary size of the model ``kwargs`` describe (its config's ``vocab_size``), without loading weights."""
    if kwargs.get("path"):
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(check_folder(kwargs["path"], f"{key}.path")), local_files_only=True)
    else:
        cfg = read_config(kwargs.get("config"), f"{key}.config")
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(getattr(text, "vocab_size", 0) or 0)


def _dtype(dtype: str, key: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(key, f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


@register_model(ARCH, family="lm", description="a Hugging Face causal LM: kwargs.path (local folder) or kwargs.config")
def hf_causal_lm(num_classes: int, in_shape: tuple[int, ...], path: str | None = None, config=None,
                 tokenizer: str | None = None, gradient_checkpointing: bool = False,
                 dtype: str = "float32") -> nn.Module:
    """A local pretrained model (``path``) or a fresh one (``config``; its ``vocab_size`` defaults to the
    run's ``num_classes``). ``tokenizer``: the model's own tokenizer folder where ``path`` holds none (only
    compared with the run's by :func:`preflight`). ``dtype`` of the weights (float32 on CPU; on a GPU
    prefer ``trainer.precision=bf16-mixed``, which keeps float32 master weights)."""
    del tokenizer  # checked before the run, not needed to build
    from transformers import AutoModelForCausalLM

    if (path is None) == (config is None):
        raise ConfigError("kwargs", f"{ARCH} needs exactly one of kwargs.path (a local folder) or kwargs.config")
    torch_dtype = _dtype(dtype, "kwargs.dtype")
    if path is not None:
        folder = check_folder(path, "kwargs.path")
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                     dtype=torch_dtype)
    else:
        cfg = read_config(config, "kwargs.config")
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        if not getattr(text, "vocab_size", None) or (isinstance(config, Mapping) and "vocab_size" not in config):
            text.vocab_size = int(num_classes)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    if vocab < num_classes:
        raise ConfigError("kwargs", f"the model's vocabulary has {vocab} ids, the run's tokenizer {num_classes}: "
                                    "token ids past the model's would index nothing")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return HFCausalLM(model, num_classes)


def folder_identity(folder: Path) -> dict:
    """A pretrained folder's identity: its name, and a hash of its config and its weight files' names and sizes."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return {"name": folder.name, "key": f"hf-{h.hexdigest()[:10]}", "path": str(folder.resolve())}


def load_pretrained(teacher_cfg: Mapping, data) -> tuple[nn.Module, dict]:
    """``teacher.kwargs.path``: the local model as it is (never trained, never registered; the caller freezes it)
    and its identity."""
    kwargs = dict(teacher_cfg.get("kwargs") or {})
    folder = check_folder(kwargs["path"], "teacher.kwargs.path")
    model = hf_causal_lm(data.num_classes, data.input_shape, **kwargs)
    return model, {**folder_identity(folder), "arch": ARCH, "test": {}}


# ---- before any work ------------------------------------------------------------------------------
def _side_tokenizer(kwargs: Mapping) -> str | None:
    """The tokenizer a model side names: ``kwargs.tokenizer``, else its folder's own tokenizer files."""
    if kwargs.get("tokenizer"):
        return str(kwargs["tokenizer"])
    if kwargs.get("path"):
        p = Path(str(kwargs["path"])).expanduser()
        if any((p / f).is_file() for f in TOKENIZER_FILES):
            return str(p)
    return None


def note(msg: str) -> None:
    print(f"kdbench: note: {msg}", file=sys.stderr, flush=True)


def preflight(conf: Mapping, scratch: bool) -> None:
    """Refuse, before any work, what an ``hf_causal_lm`` run cannot do offline: a model folder that is not a
    complete local one, a dtype not offered, and teacher, student and data tokenizers that differ (one line
    naming both and the first differing token id). A model vocabulary padded past the tokenizer's is a note.
    ``scratch``: the run trains on labels alone (no teacher is loaded)."""
    from omegaconf import DictConfig, OmegaConf

    from kdbench.tokenizers_check import compare_vocabularies, load_tokenizer

    if isinstance(conf, DictConfig):
        conf = OmegaConf.to_container(conf, resolve=True)
    sides = {}
    for who in ("teacher", "student"):
        node = conf.get(who) or {}
        if node.get("arch") != ARCH:
            continue
        if who == "teacher" and ((scratch or conf.get("teacher_signal") == "captured")
                                 and not conf.get("teacher_only")):
            continue  # no teacher is loaded (a capture names its tokenizer: checked against the run's)
        kwargs = node.get("kwargs") or {}
        if kwargs.get("path") is not None and kwargs.get("config") is not None:
            raise ConfigError(f"{who}.kwargs.path", f"{ARCH} takes one of {who}.kwargs.path (a local model folder) or "
                                                    f"{who}.kwargs.config (a fresh model), both are set: add "
                                                    f"{who}.kwargs.config=null to load the folder")
        if kwargs.get("path") is None and kwargs.get("config") is None:
            raise ConfigError(f"{who}.kwargs.path", f"{ARCH} needs {who}.kwargs.path (a local model folder) or "
                                                    f"{who}.kwargs.config (a config to build a fresh model)")
        if kwargs.get("path") is not None:
            check_folder(kwargs["path"], f"{who}.kwargs.path")
        else:
            read_config(kwargs.get("config"), f"{who}.kwargs.config")
        _dtype(kwargs.get("dtype", "float32"), f"{who}.kwargs.dtype")
        sides[who] = kwargs
    if not sides:
        return
    ds = conf.get("dataset") or {}
    named: list[tuple[str, str]] = []  # (who, tokenizer path)
    if ds.get("name") == "hf_text" and ds.get("tokenizer"):
        named.append(("dataset.tokenizer", str(ds["tokenizer"])))
    for who, kwargs in sides.items():
        tok = _side_tokenizer(kwargs)
        if tok is not None:
            named.append((f"{who}.kwargs.{'tokenizer' if kwargs.get('tokenizer') else 'path'}", tok))
    sized = {who: kw for who, kw in sides.items() if kw.get("path") is not None or isinstance(kw.get("config"), str)
             or (isinstance(kw.get("config"), Mapping) and "vocab_size" in kw["config"])}
    if len(named) < 2 and not sized:
        return  # one tokenizer and fresh models sized to it: nothing to compare (the data loader reads it)
    loaded = [(key, path, load_tokenizer(path, key)) for key, path in named]
    for (k1, p1, t1), (k2, p2, t2) in zip(loaded, loaded[1:]):
        compare_vocabularies(t1, t2, f"{k1} ({p1})", f"{k2} ({p2})", key=k2)
    if loaded:
        n = len(loaded[0][2])
        for who, kwargs in sized.items():  # a fresh model without a vocab_size is sized to the tokenizer
            v = model_vocab(kwargs, f"{who}.kwargs")
            if v < n:
                raise ConfigError(f"{who}.kwargs", f"the {who}'s vocabulary has {v} ids, the tokenizer {n}: token ids "
                                                   "past the model's would index nothing")
            if v > n:
                note(f"the {who}'s vocabulary is padded to {v} ids, the tokenizer has {n}: the {v - n} padded logits "
                     "are cut (masked out of the softmax); the ids are identical")

