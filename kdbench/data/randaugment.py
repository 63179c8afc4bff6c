"""A strong view of a batch of images: RandAugment with random magnitudes, then Cutout, batched.

MLKD (Jin et al., CVPR 2023) trains on a weak view (the run's crop/flip) and a strong view of the same
images; its code's strong view is an independent crop/flip, then FixMatch's RandAugment: two operations
drawn with replacement from fourteen, each at a magnitude drawn uniformly from its range, then a Cutout of
a random square of up to half the image side. :func:`rand_augment` is that on a whole batch at once: each
image draws its own operations and magnitudes, and each operation is applied in one tensor call to the
images that drew it (no per-image Python). Values are re-quantised to the 1/255 grid after every
operation, as the PIL images of the reference are (:func:`apply_op` says how close to PIL each is). This
view has no finite set of codes: a teacher signal keyed by ``(index, view)`` (``cached``, ``captured``)
cannot give it.

Operations (magnitude range): AutoContrast, Brightness (0.05..0.95), Color (0.05..0.95), Contrast
(0.05..0.95), Equalize, Identity, Posterize (4..8 bits), Rotate (-30..30 degrees), Sharpness (0.05..0.95),
ShearX / ShearY (-0.3..0.3), Solarize (0..256), TranslateX / TranslateY (-0.3..0.3 of the side). Cutout
fills with (125, 123, 114) / 255 on RGB images (mid-grey otherwise). Geometric operations sample the
nearest pixel and fill with black, as PIL's defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS", "apply_op", "rand_augment"]

#: (name, lowest magnitude, highest magnitude), in the order the operations are numbered
OPS = (("auto_contrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95), ("contrast", 0.05, 0.95),
       ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0), ("posterize", 4.0, 8.0), ("rotate", -30.0, 30.0),
       ("sharpness", 0.05, 0.95), ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("solarize", 0.0, 256.0),
       ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3))
_CUTOUT_RGB = (125 / 255, 123 / 255, 114 / 255)


def _quantise(x: Tensor) -> Tensor:
    return (x * 255.0).round_().clamp_(0.0, 255.0).div_(255.0)


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma (PIL's ``convert("L")``), ``[B, 1, H, W]``; a one-channel image is its own."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(degenerate: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + v * (x - degenerate)``, clipped."""
    return (degenerate + _col(v) * (x - degenerate)).clamp(0.0, 1.0)


def _auto_contrast(x: Tensor, v: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), x)


def _equalize(x: Tensor, v: Tensor) -> Tensor:
    """PIL's ``ImageOps.equalize`` per channel: a look-up table from the histogram's running sum."""
    b, c, h, w = x.shape
    q = (x * 255.0).round().long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    last = (torch.arange(256, device=x.device) * (hist > 0)).amax(dim=1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    lut = ((step // 2 + hist.cumsum(1) - hist) // step.clamp_min(1)).clamp_max(255)
    out = lut.gather(1, q).to(x.dtype) / 255.0
    return torch.where(step > 0, out, q.to(x.dtype) / 255.0).view(b, c, h, w)


def _posterize(x: Tensor, v: Tensor) -> Tensor:
    drop = 2.0 ** (8 - v.floor().clamp(1, 8))
    return torch.floor((x * 255.0).round() / _col(drop)) * _col(drop) / 255.0


def _sharpness(x: Tensor, v: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH filter (``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``; border pixels kept)."""
    c = x.shape[1]
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    smooth = F.conv2d(x, (k / 13.0).expand(c, 1, 3, 3), groups=c)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, v)


def _solarize(x: Tensor, v: Tensor) -> Tensor:
    return torch.where((x * 255.0).round() >= _col(v), 1.0 - x, x)


def _warp(x: Tensor, m: Tensor) -> Tensor:
    """Nearest-pixel inverse warp: output pixel ``(u, w)`` (centres at +0.5, PIL's convention) reads the input
    at ``m @ (u, w, 1)``; outside the image it is black. ``m``: ``[B, 2, 3]`` in pixel coordinates."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, dtype=x.dtype, device=x.device)])
    src = m.to(x.dtype) @ pts  # [B, 2, H*W]
    ix, iy = src[:, 0].floor().long(), src[:, 1].floor().long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).unsqueeze(1).expand(b, c, h * w)
    out = x.flatten(2).gather(2, flat) * inside.unsqueeze(1).to(x.dtype)
    return out.view(b, c, h, w)


_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _matrix(name: str, v: Tensor, h: int, w: int) -> Tensor:
    """The inverse map (output pixel -> input point, PIL's ``AFFINE`` data) of a geometric operation, ``[B, 2, 3]``."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "rotate":  # PIL's rotate(v): counter-clockwise by v degrees about the centre
        r = -v * (math.pi / 180.0)  # PIL negates the angle of its inverse map
        cos, sin = r.cos(), r.sin()
        cx, cy = w / 2.0, h / 2.0
        rows = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    elif name == "shear_x":
        rows = (one, v, zero, zero, one, zero)
    elif name == "shear_y":
        rows = (one, zero, zero, v, one, zero)
    elif name == "translate_x":
        rows = (one, zero, v * w, zero, one, zero)
    else:  # translate_y
        rows = (one, zero, zero, zero, one, v * h)
    return torch.stack([torch.stack(rows[:3], -1), torch.stack(rows[3:], -1)], -2)


def apply_op(name: str, x: Tensor, v: Tensor) -> Tensor:
    """Operation ``name`` of :data:`OPS` on float images ``x`` ``[B, C, H, W]`` at magnitudes ``v`` ``[B]``
    (unquantised). Geometric operations, Equalize, Posterize and Solarize give PIL's pixels exactly; the
    blends (Brightness, Color, Contrast, Sharpness, AutoContrast) within one level (PIL truncates)."""
    if name == "identity":
        return x
    if name == "auto_contrast":
        return _auto_contrast(x, v)
    if name == "brightness":
        return _blend(torch.zeros_like(x), x, v)
    if name == "color":
        return _blend(_gray(x).expand_as(x), x, v)
    if name == "contrast":
        return _blend(_gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, v)
    if name == "equalize":
        return _equalize(x, v)
    if name == "posterize":
        return _posterize(x, v)
    if name == "sharpness":
        return _sharpness(x, v)
    if name == "solarize":
        return _solarize(x, v)
    return _warp(x, _matrix(name, v, *x.shape[-2:]))


def _cutout(x: Tensor, size: Tensor, x0: Tensor, y0: Tensor) -> Tensor:
    """Fill the square ``[x0, x0 + size] x [y0, y0 + size]`` (corners clipped to the image; PIL's
    ``rectangle`` includes both ends) whose centre was drawn at ``(x0, y0) + size / 2``."""
    b, c, h, w = x.shape
    left, top = (x0 - size / 2).clamp_min(0).floor(), (y0 - size / 2).clamp_min(0).floor()
    right, bottom = (left + size).clamp_max(w), (top + size).clamp_max(h)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    inside = ((cols >= left.view(b, 1, 1)) & (cols <= right.view(b, 1, 1)) & (rows >= top.view(b, 1, 1))
              & (rows <= bottom.view(b, 1, 1)) & (size.view(b, 1, 1) > 0)).unsqueeze(1)
    fill = torch.tensor(_CUTOUT_RGB if c == 3 else (0.5,) * c, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    return torch.where(inside, _quantise(fill.expand(b, c, 1, 1)), x)


def rand_augment(x: Tensor, gen: torch.Generator, *, n_ops: int = 2, cutout: float = 0.5) -> Tensor:
    """``x`` (float images ``[B, C, H, W]`` in ``[0, 1]``) with ``n_ops`` random operations of :data:`OPS`
    per image, then a Cutout of side up to ``cutout`` times the width. The only randomness is drawn from
    ``gen`` (on ``x``'s device), a fixed number of draws per batch: the same generator state gives the same
    batch, and a row does not depend on the other rows' images."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"rand_augment needs float images [B, C, H, W], got {tuple(x.shape)} {x.dtype}")
    b, _, h, w = x.shape
    dev = gen.device
    ops = torch.randint(0, len(OPS), (b, n_ops), generator=gen, device=dev).to(x.device)
    mags = torch.rand(b, n_ops, generator=gen, device=dev, dtype=torch.float64).to(x.device)
    cut = torch.rand(b, 3, generator=gen, device=dev, dtype=torch.float64).to(x.device)
    out = _quantise(x.clone())
    for k in range(n_ops):
        m = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)  # the geometric ones: one warp per step
        warped = torch.zeros(b, dtype=torch.bool, device=x.device)
        for i, (name, lo, hi) in enumerate(OPS):
            sel = (ops[:, k] == i).nonzero().squeeze(1)
            if sel.numel():
                v = (lo + (hi - lo) * mags[sel, k]).to(x.dtype)
                if name in _GEOMETRIC:
                    m[sel], warped[sel] = _matrix(name, v, h, w), True
                else:
                    out[sel] = _quantise(apply_op(name, out[sel], v))
        sel = warped.nonzero().squeeze(1)
        if sel.numel():
            out[sel] = _quantise(_warp(out[sel], m[sel]))
    size = (cut[:, 0] * cutout * w).to(x.dtype)
    return _cutout(out, size, (cut[:, 1] * w).to(x.dtype), (cut[:, 2] * h).to(x.dtype))
