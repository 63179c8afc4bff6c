"""Batched augmentation addressed by integer view codes.

Every augmentation family has a finite set of *views* of an image, numbered ``0 .. num_views(name) - 1``.
A batch is augmented in two steps: :func:`draw_views` draws one code per example (the only randomness),
and :func:`apply_views` builds the augmented batch from the codes alone (a pure function). So the exact
augmented input of an example is reproducible from ``(dataset index, view code)``: the key an exact
teacher-output cache is built on.

Families and their codes (``dy``, ``dx`` are the crop's top-left corner in the zero-padded image, each
in ``[0, 2 * pad]``; ``flip`` is 1 for a left-right mirror applied after the crop):

============  =====  ====  ==========  =========================================
name          pad    flip  num_views   code
============  =====  ====  ==========  =========================================
``none``      0      no    1           ``0`` (the image itself)
``flip``      0      yes   2           ``flip``
``jitter``    2      no    25          ``dy * 5 + dx``
``crop_flip`` 4      yes   162         ``(dy * 9 + dx) * 2 + flip``
============  =====  ====  ==========  =========================================

In general ``code = (dy * (2 * pad + 1) + dx) * F + flip`` with ``F = 2`` for families that flip and
``F = 1`` (and ``flip = 0``) otherwise. The unshifted crop is ``dy = dx = pad`` (jitter: code 12,
crop_flip: codes 80 and 81). Feature vectors ``[B, D]`` are never augmented: their code is always 0.

:func:`draw_views` draws ``dy``, ``dx`` uniformly and ``flip`` with probability 1/2, in the same order
and from the same generator calls as the former ``random_crop``/``random_flip`` pair, so a given
generator state yields the same augmented batch as before the codes existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``dataset.augment=default``: each dataset's own family (``TensorData.default_augment``)
DEFAULT = "default"


#: the registry: name -> (zero padding of the random crop, whether a left-right flip follows)
_SPEC: dict[str, tuple[int, bool]] = {}


def register_augment(name: str, *, pad: int, flip: bool) -> None:
    """A family of views: a random crop of the image zero-padded by ``pad``, then (``flip``) a random
    left-right mirror; ``dataset.augment=<name>``."""
    if name == DEFAULT:
        raise ValueError("'default' is not a family: dataset.augment=default names each dataset's own")
    if name in _SPEC and _SPEC[name] != (pad, flip):
        raise ValueError(f"an augmentation named {name!r} is already registered ({_SPEC[name]})")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    _SPEC[name] = (pad, bool(flip))


for _name, _pad, _flip in (("none", 0, False), ("crop_flip", 4, True), ("jitter", 2, False), ("flip", 0, True)):
    register_augment(_name, pad=_pad, flip=_flip)
del _name, _pad, _flip

#: the built-in families
AUGMENTS = tuple(_SPEC)


def family_of(name: str | None, data) -> str:
    """The family a run of ``data`` augments with: ``default`` (or unset) is the dataset's own."""
    return data.default_augment if name in (DEFAULT, None) else name


def augment_names() -> list[str]:
    """Every registered family, built-in ones first (what ``dataset.augment`` accepts, besides ``default``)."""
    return list(_SPEC)


def _spec(name: str) -> tuple[int, bool]:
    try:
        return _SPEC[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(_SPEC)}") from None


def num_views(name: str) -> int:
    """How many distinct views the family ``name`` has: none 1, flip 2, jitter 25, crop_flip 162."""
    pad, flip = _spec(name)
    return (2 * pad + 1) ** 2 * (2 if flip else 1)


def draw_views(name: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Draw ``n`` view codes (int64, on ``gen``'s device), uniform over ``range(num_views(name))``.

    Crop offsets ``dy`` then ``dx`` are drawn uniformly in ``[0, 2 * pad]``, then ``flip`` with
    probability 1/2; ``none`` draws nothing and returns zeros.
    """
    pad, flip = _spec(name)
    device = gen.device
    code = torch.zeros(n, dtype=torch.long, device=device)
    if pad:
        side = 2 * pad + 1
        dy = torch.randint(0, side, (n,), generator=gen, device=device)
        dx = torch.randint(0, side, (n,), generator=gen, device=device)
        code = dy * side + dx
    if flip:
        f = torch.rand(n, generator=gen, device=device) < 0.5
        code = code * 2 + f.long()
    return code


def decode_views(name: str, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split codes into ``(dy, dx, flip)`` int64 tensors (no range check; see :func:`check_views`)."""
    pad, flip = _spec(name)
    views = views.long()
    if flip:
        f, views = views % 2, views // 2
    else:
        f = torch.zeros_like(views)
    side = 2 * pad + 1
    return views // side, views % side, f


def decode_view(name: str, code: int) -> dict[str, int]:
    """One code as ``{"dy", "dx", "flip"}`` (crop corner in the padded image, and the mirror flag)."""
    code = int(code)
    if not 0 <= code < num_views(name):
        raise ValueError(f"view {code} out of range for augmentation {name!r} (0..{num_views(name) - 1})")
    dy, dx, f = decode_views(name, torch.tensor([code]))
    return {"dy": int(dy), "dx": int(dx), "flip": int(f)}


def check_views(name: str, views: torch.Tensor, n: int | None = None) -> None:
    """Raise ``ValueError`` unless ``views`` is a 1-D integer tensor of codes in range (syncs on a GPU)."""
    k = num_views(name)
    if views.dim() != 1 or views.dtype.is_floating_point or views.dtype == torch.bool:
        raise ValueError(f"view codes must be a 1-D integer tensor, got {tuple(views.shape)} {views.dtype}")
    if n is not None and views.shape[0] != n:
        raise ValueError(f"{views.shape[0]} view codes for {n} examples")
    if views.numel() and (int(views.min()) < 0 or int(views.max()) >= k):
        raise ValueError(f"view codes must be in [0, {k}) for augmentation {name!r}, "
                         f"got [{int(views.min())}, {int(views.max())}]")


def apply_views(name: str, x: torch.Tensor, views: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """The batch ``x`` ``[B, C, H, W]`` (float) with example ``i`` shown as view ``views[i]``.

    No randomness: the output is a function of ``(x, views)``, row by row (a row does not depend on
    the rest of the batch). Crop and flip are one gather over the flattened zero-padded batch: no
    per-image Python, the same kernel on CPU and GPU, and values are copied exactly (bit-identical to
    padding, slicing and flipping by hand). Feature vectors ``[B, D]`` and ``none`` pass through
    unchanged. ``check=False`` skips the range check (which syncs with a GPU) for codes known to be
    valid, e.g. from :func:`draw_views`.
    """
    pad, flip = _spec(name)
    if x.dim() != 4:
        if check and views.numel() and bool((views != 0).any()):
            raise ValueError("feature vectors have only view 0")
        return x
    b, c, h, w = x.shape
    if check:
        check_views(name, views, b)
    if name == "none":
        return x
    dy, dx, f = decode_views(name, views.to(x.device))
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    width = w + 2 * pad
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy.view(b, 1, 1)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    if flip:  # output column j of a mirrored crop is column w - 1 - j of the crop
        j = torch.where(f.view(b, 1, 1).bool(), w - 1 - j, j)
    cols = j + dx.view(b, 1, 1)
    idx = (rows * width + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, idx).view(b, c, h, w)


def apply(name: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply the named augmentation with freshly drawn views (``apply_views(draw_views(...))``)."""
    _spec(name)
    if name == "none" or x.dim() != 4:
        return x
    return apply_views(name, x, draw_views(name, x.shape[0], gen), check=False)
