"""Batched augmentation: every op transforms a whole ``[B, C, H, W]`` float batch at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "crop_flip", "jitter", "flip")


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random ``H x W`` crop of each image after zero-padding by ``pad`` pixels (per-image offsets)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # [B, H]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def apply(name: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply the named augmentation to a float batch; feature vectors ``[B, D]`` pass through."""
    if name == "none" or x.dim() != 4:
        return x
    if name == "crop_flip":
        return random_flip(random_crop(x, 4, gen), gen)
    if name == "flip":
        return random_flip(x, gen)
    if name == "jitter":
        return random_crop(x, 2, gen)
    raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTS)}")
