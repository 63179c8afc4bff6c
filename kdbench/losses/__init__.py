"""Distillation losses, pure torch (no Lightning, Hydra or W&B).

* :mod:`~kdbench.losses.core`: what every loss shares: shape checks, ``[..., C]`` -> rows, the
  ``ignore_index`` mask and the means over kept positions, CE, stable log-space helpers, the
  CE / soft-term weighting.
* :mod:`~kdbench.losses.kd`: KD (Hinton et al. 2015) with forward / reverse KL, generalized JSD,
  skew KL, the tau**2 switch, logit standardization and the ablation switches.
* :mod:`~kdbench.losses.dkd_dist`: DKD (Zhao et al. 2022) and DIST (Huang et al. 2022).
* :mod:`~kdbench.losses.topk`: KD from a sparse (top-k) teacher, renormalised or with a tail bucket.

Everything is computed in float32 (float64 inputs stay float64). The losses check shapes and dtypes;
parameter values are checked once, when a method is built (:mod:`kdbench.methods`).
"""

from __future__ import annotations

from kdbench.losses.dkd_dist import dist_loss, dist_terms, dkd_loss, dkd_terms
from kdbench.losses.kd import (
    KL_DIRECTIONS,
    KL_REDUCTIONS,
    kd_loss,
    kd_loss_terms,
    kl_divergence,
    standardize_logits,
)
from kdbench.losses.topk import TOPK_MODES, topk_kd_loss, topk_kd_loss_terms

__all__ = [
    "KL_DIRECTIONS",
    "KL_REDUCTIONS",
    "TOPK_MODES",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "kd_loss_terms",
    "kl_divergence",
    "standardize_logits",
    "topk_kd_loss",
    "topk_kd_loss_terms",
]
