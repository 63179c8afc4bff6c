"""Distillation losses, pure torch (no Lightning, Hydra or W&B).

* :mod:`~kdbench.losses.core`: what every loss shares: shape checks, ``[..., C]`` -> rows, the
  ``ignore_index`` mask and the means over kept positions, CE, stable log-space helpers, the
  CE / soft-term weighting.
* :mod:`~kdbench.losses.kd`: KD (Hinton et al. 2015) with forward / reverse KL, generalized JSD,
  skew KL, the tau**2 switch, logit standardization and the ablation switches.
* :mod:`~kdbench.losses.dkd_dist`: DKD (Zhao et al. 2022) and DIST (Huang et al. 2022).
* :mod:`~kdbench.losses.logit_2024`: TTM, WTTM (Zheng & Yang 2024), NormKD (2023) and CTKD's learned
  temperature pieces (the KD term at a tensor temperature, gradient reversal, the cosine curriculum), and
  MLKD's (Jin et al. 2023) instance, batch and class levels with its confidence masks.
* :mod:`~kdbench.losses.topk`: KD from a sparse (top-k) teacher, renormalised or with a tail bucket.
* :mod:`~kdbench.losses.features`: feature distillation (AT, NST, SP, HCL, RKD, PKT, FitNet, VID, OFD,
  CRD's NCE), equal to mdistiller's / RepDistiller's functions.

Everything is computed in float32 (float64 inputs stay float64). The losses check shapes and dtypes;
parameter values are checked once, when a method is built (:mod:`kdbench.methods`).
"""

from __future__ import annotations

from kdbench.losses.dkd_dist import dist_loss, dist_terms, dkd_loss, dkd_terms
from kdbench.losses.features import (
    at_loss,
    crd_momentum_update,
    crd_nce_loss,
    crd_normalizer,
    crd_scores,
    fitnet_loss,
    hcl_loss,
    nst_loss,
    ofd_loss,
    ofd_margin,
    pkt_loss,
    pool_to_smaller,
    rkd_loss,
    sp_loss,
    vid_log_scale_init,
    vid_loss,
)
from kdbench.losses.kd import (
    KL_DIRECTIONS,
    KL_REDUCTIONS,
    kd_loss,
    kd_loss_terms,
    kl_divergence,
    standardize_logits,
)
from kdbench.losses.logit_2024 import (
    GradientReversal,
    ctkd_kd_loss,
    ctkd_lambda,
    mlkd_batch_loss,
    mlkd_class_loss,
    mlkd_confidence_masks,
    mlkd_instance_loss,
    mlkd_loss,
    normkd_loss,
    reverse_gradient,
    ttm_loss,
    wttm_loss,
)
from kdbench.losses.topk import TOPK_MODES, topk_kd_loss, topk_kd_loss_terms

__all__ = [
    "GradientReversal",
    "KL_DIRECTIONS",
    "KL_REDUCTIONS",
    "TOPK_MODES",
    "at_loss",
    "crd_momentum_update",
    "crd_nce_loss",
    "crd_normalizer",
    "crd_scores",
    "ctkd_kd_loss",
    "ctkd_lambda",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "fitnet_loss",
    "hcl_loss",
    "kd_loss",
    "kd_loss_terms",
    "kl_divergence",
    "mlkd_batch_loss",
    "mlkd_class_loss",
    "mlkd_confidence_masks",
    "mlkd_instance_loss",
    "mlkd_loss",
    "normkd_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margin",
    "pkt_loss",
    "pool_to_smaller",
    "reverse_gradient",
    "rkd_loss",
    "sp_loss",
    "standardize_logits",
    "topk_kd_loss",
    "topk_kd_loss_terms",
    "ttm_loss",
    "vid_log_scale_init",
    "vid_loss",
    "wttm_loss",
]
