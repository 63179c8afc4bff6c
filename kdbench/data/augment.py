"""Batched augmentation: every op transforms a whole ``[B, C, H, W]`` float batch at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "crop_flip", "jitter", "flip")


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random ``H x W`` crop of each image after zero-padding by ``pad`` pixels (per-image offsets).

    One gather over the flattened padded batch: no per-image Python, the same kernel on CPU and GPU.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    width = w + 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=gen, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    idx = (rows * width + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, idx).view(b, c, h, w)


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
