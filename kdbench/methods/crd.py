"""CRD (Tian et al., ICLR 2020, contrastive representation distillation): embed both sides' penultimate
vectors (a linear map to ``feat_dim`` then L2 normalisation), and score each sample's embedding against
a memory of the other side's embeddings: its own row is the positive, ``nce_k`` rows of other classes'
examples the negatives; NCE on both directions, then the sample's rows of both memories move towards
the new embeddings (momentum ``nce_m``).

``ce_weight*CE + feat_weight * (nce(student vs teacher memory) + nce(teacher vs student memory))``,
mdistiller's and RepDistiller's defaults (dim 128, K 16384, T 0.07, momentum 0.5, weight 0.8); the
normalising constants are set from the first batch's scores and kept, as the references. Negatives are
drawn, as theirs ("exact" mode), uniformly from the training examples of the other classes, without
replacement when a class has at least K of them and with replacement otherwise; they come from
torch's global RNG, which the harness checkpoints. On a training set of at most K examples, K is
capped at ``n_train - 1``. Without the training labels (``train_y``) every example counts as its own
class. The two embeddings are trained with the student; the memories (``n_train x feat_dim`` each) and
constants are buffers, saved in and restored from checkpoints, and the head runs in float32 whatever
the run's precision (the scores are exponentials of inner products over T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.features import Needs
from kdbench.kinds import I, N, param
from kdbench.losses import crd_momentum_update, crd_nce_loss, crd_normalizer, crd_scores
from kdbench.methods import TAU, feature_terms, register_method


class CRDHead(nn.Module):
    """The two embeddings (parameters) and the two memories with their normalising constants (buffers)."""

    def __init__(self, student_dim: int, teacher_dim: int, dim: int, labels: torch.Tensor, k: int):
        super().__init__()
        n = labels.shape[0]
        self.embed_s = nn.Linear(student_dim, dim)
        self.embed_t = nn.Linear(teacher_dim, dim)
        bound = 1.0 / math.sqrt(dim / 3)  # the references' uniform start
        self.register_buffer("memory_s", torch.rand(n, dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(n, dim).mul_(2 * bound).sub_(bound))
        #: the normalising constants of the student's and the teacher's scores (-1: not yet set)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.register_buffer("labels", labels.clone(), persistent=False)
        self.k = k
        counts = torch.bincount(labels)
        #: some class has fewer other-class examples than K: its negatives are drawn with replacement
        self.short = bool((n - counts[counts > 0]).min() < k)

    def negatives(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` dataset indices of other classes' examples for the samples ``idx``."""
        y = self.labels[idx]
        same = self.labels.unsqueeze(0) == y.unsqueeze(1)
        keys = torch.rand(same.shape, device=same.device).masked_fill_(same, -1.0)
        drawn = keys.topk(self.k, dim=1, sorted=False).indices  # a uniform K-subset of the other classes
        if not self.short:
            return drawn
        others = (~same).sum(1, keepdim=True)
        with_replacement = torch.multinomial((~same).float(), self.k, replacement=True)
        return torch.where(others < self.k, with_replacement, drawn)


@register_method("crd")
@dataclass(frozen=True)
class CRD:
    ce_weight: float = param(1.0, N(0))
    feat_weight: float = param(0.8, N(0))
    feat_dim: int = param(128, I(1))
    nce_k: int = param(16384, I(1))
    nce_t: float = param(0.07, TAU)
    nce_m: float = param(0.5, N(0, 1))

    needs_teacher = True
    needs = Needs(student=("pooled",), teacher=("pooled",))

    def build(self, student, teacher, n_train: int, train_y=None) -> nn.Module:
        if n_train < 2:
            raise ValueError(f"CRD needs at least two training examples, got {n_train}")
        labels = torch.arange(n_train) if train_y is None else torch.as_tensor(train_y).long().cpu()
        if labels.shape != (n_train,):
            raise ValueError(f"CRD: {tuple(labels.shape)} labels for {n_train} training examples")
        if int(torch.bincount(labels).max()) == n_train:
            raise ValueError("CRD draws negatives from other classes: every training example has the same label")
        dims = [int(math.prod(side.pooled.shape[1:])) for side in (student, teacher)]
        return CRDHead(dims[0], dims[1], self.feat_dim, labels, min(self.nce_k, n_train - 1))

    def __call__(self, student, teacher, batch, parts) -> dict:
        n = parts.memory_s.shape[0]
        with torch.autocast(student.pooled.device.type, enabled=False):
            v_s = F.normalize(parts.embed_s(student.pooled.flatten(1).float()), dim=1)
            v_t = F.normalize(parts.embed_t(teacher.pooled.flatten(1).float()), dim=1)
            idx = batch.idx
            rows = torch.cat([idx.unsqueeze(1), parts.negatives(idx)], dim=1)  # column 0: the positive
            scores_s = crd_scores(v_s, parts.memory_t[rows], self.nce_t)  # the student's against the teacher's memory
            scores_t = crd_scores(v_t, parts.memory_s[rows], self.nce_t)
            for z, scores in ((parts.z_s, scores_s), (parts.z_t, scores_t)):  # set once, from the first batch
                z.copy_(torch.where(z < 0, crd_normalizer(scores, n), z))
            term = crd_nce_loss(scores_s / parts.z_s, n) + crd_nce_loss(scores_t / parts.z_t, n)
            with torch.no_grad():
                parts.memory_s.index_copy_(0, idx, crd_momentum_update(parts.memory_s[idx], v_s, self.nce_m))
                parts.memory_t.index_copy_(0, idx, crd_momentum_update(parts.memory_t[idx], v_t, self.nce_m))
        return feature_terms(student.logits, batch, self.ce_weight, crd=(self.feat_weight, term))
