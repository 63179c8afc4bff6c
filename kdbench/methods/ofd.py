"""OFD (Heo et al., ICCV 2019, a comprehensive overhaul of feature distillation): match the teacher's
pre-ReLU stage maps, with their negative values raised to a per-channel margin (the expected negative
response, from the BatchNorm before the teacher's ReLU), by a partial L2 from the student's pre-ReLU maps
through a connector (1x1 conv + BatchNorm).

``ce_weight*CE + feat_weight * sum_i ofd_loss(connector_i(s_i), t_i, margin_i) / 2^(L - 1 - i)`` over the
``L`` last stages of ``preact_stages[1:]`` both sides have, mdistiller's defaults (weight 0.001, 1x1
connectors, deeper stages weighted more). The margins come from the teacher's ``bn_before_relu()`` (the
zoo's and SmallCNN's; a teacher without it is refused), read when the parts are built and kept as
buffers. The connectors are training-only. Both references run the teacher in train mode during OFD
(its BatchNorm normalises with batch statistics): ``conf/distill/ofd.yaml`` sets
``teacher_train_mode: true`` for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import ofd_loss, ofd_margin
from kdbench.methods import feature_terms, register_method

PREACT = "preact_stages[1:]"


class OFDHead(nn.Module):
    """The connectors (student stage -> teacher channels) and the teacher's margins (buffers ``margin_i``)."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], margins: list):
        super().__init__()
        self.connectors = nn.ModuleList()
        for s, t in zip(student_channels, teacher_channels, strict=True):
            conv = nn.Conv2d(s, t, 1, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t))  # the references' He init on fan-out
            self.connectors.append(nn.Sequential(conv, nn.BatchNorm2d(t)))
        for i, m in enumerate(margins):
            self.register_buffer(f"margin_{i}", m.detach().float().clone())

    def margin(self, i: int):
        return getattr(self, f"margin_{i}")


@register_method("ofd")
@dataclass(frozen=True)
class OFD:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(0.001, N(0))

    needs_teacher = True
    needs = Needs(student=(PREACT,), teacher=(PREACT,))

    def build(self, student, teacher, n_train: int, teacher_model=None) -> nn.Module:
        s, t = student[PREACT], teacher[PREACT]
        n = min(len(s), len(t))
        if n == 0:
            raise ValueError(f"OFD needs pre-activation stages after the stem, got {len(s)} and {len(t)}")
        s, t = s[-n:], t[-n:]
        if teacher_model is None:
            raise ValueError("OFD reads its margins from the teacher model's BatchNorms: build needs teacher_model")
        accessor = getattr(teacher_model, "bn_before_relu", None)
        if not callable(accessor):
            raise ValueError(f"{type(teacher_model).__name__} gives no bn_before_relu() (the BatchNorm before "
                             "each stage's ReLU, for OFD's margins)")
        bns = list(accessor())[-n:]
        if len(bns) < n or any(bn.num_features != f.shape[1] for bn, f in zip(bns, t)):
            raise ValueError(f"the teacher's bn_before_relu() ({[bn.num_features for bn in bns]} channels) does "
                             f"not match its last {n} pre-activation stages ({[f.shape[1] for f in t]})")
        return OFDHead([f.shape[1] for f in s], [f.shape[1] for f in t],
                       [ofd_margin(bn.weight, bn.bias) for bn in bns])

    def __call__(self, student, teacher, batch, parts) -> dict:
        n = len(parts.connectors)
        s, t = student[PREACT][-n:], teacher[PREACT][-n:]
        term = sum(ofd_loss(connector(si), ti, parts.margin(i)) / 2 ** (n - 1 - i)
                   for i, (connector, si, ti) in enumerate(zip(parts.connectors, s, t)))
        return feature_terms(student.logits, batch, self.ce_weight, ofd=(self.feat_weight, term))
