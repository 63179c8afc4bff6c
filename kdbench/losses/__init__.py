"""Distillation losses, pure torch (no Lightning, Hydra or W&B)."""

from __future__ import annotations

from kdbench.losses.kd import (
    KL_DIRECTIONS,
    KL_REDUCTIONS,
    TOPK_MODES,
    dist_loss,
    dist_terms,
    dkd_loss,
    dkd_terms,
    kd_loss,
    kd_loss_terms,
    kl_divergence,
    standardize_logits,
    topk_kd_loss,
    topk_kd_loss_terms,
)

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
