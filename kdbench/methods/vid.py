"""VID (Ahn et al., CVPR 2019, variational information distillation): for each stage after the stem, a
regressor predicts the mean of a Gaussian over the teacher's map from the student's, with a learned
per-channel variance; the loss is the teacher map's negative log-likelihood under it.

``ce_weight*CE + feat_weight * sum_i vid_loss(stages[1:][i])``, mdistiller's defaults (weight 1, eps 1e-5,
initial variance 5). Each regressor is three 1x1 convs without bias (student channels -> teacher's, then
teacher's -> teacher's twice, ReLU between), the larger map of a pair pooled to the smaller first. The
log-scales are trained with the regressors, as in the paper and RepDistiller (mdistiller keeps them in a
plain list, so its variances stay at 5). Regressors and log-scales are training-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from kdbench.features import Needs
from kdbench.kinds import N, param
from kdbench.losses import pool_to_smaller, vid_log_scale_init, vid_loss
from kdbench.methods import feature_terms, register_method

STAGES = "stages[1:]"


class VIDHead(nn.Module):
    """One stage's regressor (the predicted mean) and per-channel log-scale (the variance)."""

    def __init__(self, student_channels: int, teacher_channels: int, log_scale: float):
        super().__init__()
        t = teacher_channels
        self.regressor = nn.Sequential(nn.Conv2d(student_channels, t, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(t, t, 1, bias=False), nn.ReLU(), nn.Conv2d(t, t, 1, bias=False))
        self.log_scale = nn.Parameter(torch.full((t,), log_scale))


@register_method("vid")
@dataclass(frozen=True)
class VID:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(1.0, N(0))
    init_pred_var: float = param(5.0, N(0, lo_open=True))
    vid_eps: float = param(1e-5, N(0, lo_open=True))

    needs_teacher = True
    needs = Needs(student=(STAGES,), teacher=(STAGES,))

    def build(self, student, teacher, n_train: int) -> nn.Module:
        s, t = student[STAGES], teacher[STAGES]
        if not s or len(s) != len(t):
            raise ValueError(f"VID pairs the stages after the stem: the student gives {len(s)}, the teacher {len(t)}")
        if any(f.dim() != 4 for f in (*s, *t)):
            raise ValueError("VID needs [N, C, H, W] stage maps")
        init = vid_log_scale_init(self.init_pred_var, self.vid_eps)
        return nn.ModuleList(VIDHead(a.shape[1], b.shape[1], init) for a, b in zip(s, t))

    def __call__(self, student, teacher, batch, parts) -> dict:
        terms = []
        for head, s, t in zip(parts, student[STAGES], teacher[STAGES], strict=True):
            pooled, _ = pool_to_smaller(s, t)  # the student's map at the pair's smaller size
            terms.append(vid_loss(pooled, t, head.regressor(pooled), head.log_scale, self.vid_eps))
        return feature_terms(student.logits, batch, self.ce_weight, vid=(self.feat_weight, torch.stack(terms).sum()))
