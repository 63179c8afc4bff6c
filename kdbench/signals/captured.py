"""``captured``: top-k teacher log-probabilities read from a capture store (``kdbench capture``).

No teacher in memory: training reads ``(indices, log_probs)`` for each ``(idx, view)`` of the batch
from the store named by ``teacher_capture.path`` (its format, writer and validator:
:mod:`kdbench.stores`). The store is validated before any work (its header and layout always, its
values unless its checksums say they passed), and one that does not match the run (another dataset
or split, another number of classes, another k than ``teacher_capture.k``, missing examples, or no
per-view entries for an augmenting run) is refused with one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdbench.errors import ConfigError
from kdbench.signals import TopK, register_signal, table_for
from kdbench.stores import read_split, splits_of, validate_store


def _store(conf: dict) -> Path:
    path = (conf.get("teacher_capture") or {}).get("path")
    if not path:
        raise ConfigError("teacher_capture.path", "teacher_signal=captured needs the capture store to read "
                                                  "(write one with `kdbench capture`)")
    return Path(path)


def preflight(conf: dict, data) -> None:
    from kdbench.data import augment as aug
    from kdbench.teachers import dataset_identity

    store = _store(conf)
    h = validate_store(store, values=False)
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
    if set(n) != set(h["n"]):
        raise ConfigError("teacher_capture.path", f"the capture holds the splits {', '.join(splits_of(h))}, the run reads "
                                                  f"{', '.join(n)} (capture with the run's dataset.val_size)")
    for split, count in n.items():
        if h["n"][split] != int(count):
            raise ConfigError("teacher_capture.path", f"the capture has {h['n'][split]} {split} examples, the run "
                                                      f"{count}")
    if data.is_tokens:
        from kdbench.tokenizers_check import check_run_tokenizer

        check_run_tokenizer(h.get("tokenizer"), conf, data)  # the capture's vocabulary is the run's, id by id
        check_alignment(store, h, data)
    family = aug.family_of(conf["dataset"].get("augment"), data) if data.is_image else "none"
    views = aug.num_views(family)
    if int(h["views"]["train"]) != views or (views > 1 and h.get("family") != family):
        raise ConfigError("teacher_capture.path", f"the run augments with {family!r} ({views} views per image); the "
                                                  f"capture holds {h['views']['train']} view(s) of {h.get('family')!r}")
    validate_store(store)  # the values: once per content (the header's checksums), the store's fault if bad


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
        self.header = validate_store(path)  # also for `kdbench eval`; after a run's preflight, a stat per file
        self.tau = float(self.header["capture_tau"])
        self.tables = {s: read_split(path, s) for s in splits_of(self.header)}
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> CapturedSignal:
        self.device = torch.device(device)
        return self

    def __call__(self, batch, split: str) -> TopK:
        idx_t, logp_t = table_for(self.tables, split)
        idx = batch.idx.cpu()
        view = batch.view.cpu() if split == "train" else torch.zeros_like(idx)
        return TopK(idx_t[idx, view].to(self.device), logp_t[idx, view].to(self.device), self.tau)


@register_signal("captured", preflight=preflight, needs_teacher=False, gives=("topk",))
def _captured(*, conf: dict, **_) -> CapturedSignal:
    return CapturedSignal(_store(conf))
