"""TensorData (a dataset held in memory), TensorLoader (shuffled, augmented batches) and Batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from kdbench.data import augment as aug


@dataclass
class TensorData:
    """A whole dataset as tensors.

    ``*_x`` are uint8 images ``[N, C, H, W]`` (scaled by 1/255 then normalised with ``mean``/``std``
    per channel when batched) or float32 features ``[N, D]`` (normalised the same way, per feature
    or with scalars). Labels are int64 in ``[0, num_classes)``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    #: which batch augmentation suits this data: "none", "crop_flip" or "jitter"
    default_augment: str = "none"
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    class_names: list[str] | None = None
    #: provenance for records and teacher keys (root, files, sizes...)
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train_x.dtype == torch.uint8

    @property
    def is_tokens(self) -> bool:
        """Sequences of token ids ``[N, T]`` with shifted labels ``[N, T]`` (-100: not counted)."""
        return self.train_x.dtype == torch.int64


def split_train_val(data: TensorData, val_size: int | float, seed: int = 0) -> TensorData:
    """Hold out ``val_size`` training examples (an int, or a fraction) as the validation set.

    The split depends only on ``seed`` and the data, so every run with the same split seed sees the
    same validation set. ``val_size=0`` leaves ``val_x`` unset (callers then validate on test).
    """
    n = data.train_x.shape[0]
    k = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if k <= 0:
        return data
    if k >= n:
        raise ValueError(f"val_size {val_size} leaves no training data (train has {n} examples)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values
    return TensorData(
        name=data.name, train_x=data.train_x[train_idx], train_y=data.train_y[train_idx],
        test_x=data.test_x, test_y=data.test_y, num_classes=data.num_classes, mean=data.mean, std=data.std,
        default_augment=data.default_augment, val_x=data.train_x[val_idx], val_y=data.train_y[val_idx],
        class_names=data.class_names, info={**data.info, "val_size": k, "val_seed": seed},
    )


class Batch(NamedTuple):
    """One batch of a :class:`TensorLoader`: inputs, labels, dataset indices and view codes.

    ``x`` is the normalised float input; ``y`` the labels; ``idx`` (int64) the dataset indices of the
    rows; ``view`` (int64, on ``x``'s device) the augmentation view of each row (see
    :mod:`kdbench.data.augment`; all zeros without augmentation and for feature vectors).
    ``(idx[i], view[i])`` determines ``x[i]`` exactly: :meth:`TensorLoader.view_batch` rebuilds it.
    """

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    view: torch.Tensor


class ViewsBatch(NamedTuple):
    """A :class:`Batch` with other views of the same images: ``x_views`` by name (``{"strong": ...}``), what a
    loader asked for ``views`` yields (a method that declares them); ``x`` and the rest are the plain batch's."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    view: torch.Tensor
    x_views: dict[str, torch.Tensor]


#: the views a method may ask of a training batch: ``weak`` is the run's own augmentation (``batch.x``),
#: ``strong`` an independent draw of it followed by RandAugment and Cutout (:mod:`kdbench.data.randaugment`)
VIEWS = ("weak", "strong")


def check_view_names(views, images: bool) -> tuple[str, ...]:
    """``views`` as a tuple, or ValueError: ``weak`` first, then names of :data:`VIEWS` once each; a
    ``strong`` view needs images."""
    views = tuple(views)
    if not views or views[0] != "weak" or len(set(views)) != len(views) or any(v not in VIEWS for v in views):
        raise ValueError(f"views must be 'weak' then any of {', '.join(VIEWS[1:])} (once each), got {list(views)}")
    if "strong" in views and not images:
        raise ValueError("a strong view needs image inputs [N, C, H, W] (uint8); these are feature vectors or tokens")
    return views


class TensorLoader:
    """Iterate :class:`Batch` ``(x, y, idx, view)`` from in-memory tensors: shuffled, augmented, normalised.

    The tensors stay where they are (move them to the GPU once with :meth:`to`); each epoch draws a
    permutation from a generator seeded by ``seed + epoch``, so an epoch's batches are a pure function
    of (seed, epoch) and a resumed run sees the same order as an uninterrupted one. ``idx`` are the
    dataset indices of the batch (used to align cached teacher outputs).

    Augmentation goes through view codes: per batch the loader draws one code per example from the
    epoch's augmentation generator (:func:`~kdbench.data.augment.draw_views`) and builds the inputs
    from the codes alone (:func:`~kdbench.data.augment.apply_views`), so ``view_batch(idx, view)``
    reproduces any batch's ``x`` bit for bit, whatever other examples it is batched with.

    :meth:`set_shard` splits every epoch's order across ``world_size`` processes the way
    ``DistributedSampler`` does: the permutation is padded (with its first indices) to a multiple
    of ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...``, so every rank has the
    same number of batches and step ``b`` of all ranks together covers the same examples as step ``b``
    of one process with ``world_size`` times the batch size. Ranks draw different view codes (rank
    0, and a single process, keep the unsharded stream).

    ``views=("weak", "strong")`` yields :class:`ViewsBatch`: a strong view of the same images in ``x_views``,
    an independent draw of the augmentation family, then :func:`~kdbench.data.randaugment.rand_augment`,
    from a generator of its own keyed to ``(seed, epoch, rank)``: the weak batches (``x``, ``idx``,
    ``view``) are the ones a loader without it yields, and a resumed epoch draws the same strong views.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: str = "none", mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,),
                 drop_last: bool = False, seed: int = 0, channels_last: bool = False,
                 views: tuple[str, ...] = ("weak",)):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        aug.num_views(augment)  # ValueError for an unknown name
        self.views = check_view_names(views, x.dim() == 4 and x.dtype == torch.uint8)
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.augment = augment
        self.channels_last = channels_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        self._set_norm(mean, std)

    def _set_norm(self, mean, std) -> None:
        shape = (1, -1, 1, 1) if self.x.dim() == 4 else (1, -1)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.x.device).reshape(shape)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.x.device).reshape(shape)

    def to(self, device: torch.device | str) -> TensorLoader:
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_shard(self, rank: int, world_size: int) -> None:
        """Iterate only shard ``rank`` of ``world_size`` (``0, 1`` = everything)."""
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"bad shard: rank {rank} of world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def augmenting(self) -> bool:
        """Whether batches are augmented (an augmentation other than ``none``, on images)."""
        return self.augment != "none" and self.x.dim() == 4

    @property
    def num_views(self) -> int:
        """How many view codes an example can have here (1 without augmentation or for features)."""
        return aug.num_views(self.augment) if self.augmenting else 1

    def _shard_size(self) -> int:
        n = self.x.shape[0]
        return n if self.world_size == 1 else -(-n // self.world_size)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def plan(self, epoch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(idx, view)`` of every batch of ``epoch`` (default: the current one), without inputs.

        Exactly the ``idx`` and ``view`` that iterating the loader at that epoch yields (same shard);
        it neither builds the inputs nor advances the epoch.
        """
        for idx, view, _ in self._plan(epoch):
            yield idx, view

    def _plan(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Generator | None]]:
        """:meth:`plan`, with the generator of the strong views (None without them), drawn after the rest."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = self.x.shape[0]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            total = self._shard_size() * self.world_size
            if total > n:
                order = torch.cat([order, order.repeat(-(-(total - n) // max(n, 1)))[:total - n]])
            order = order[self.rank:total:self.world_size]
        order = order.to(self.x.device)
        # ranks draw different augmentations (rank 0, and a single process, keep the unsharded stream)
        aug_seed = int(torch.randint(0, 2**62, (1,), generator=gen)) + self.rank
        aug_gen = torch.Generator(device=self.x.device).manual_seed(aug_seed)
        strong_gen = None
        if "strong" in self.views:
            strong_gen = torch.Generator(device=self.x.device).manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=gen)) + self.rank)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.augmenting:
                view = aug.draw_views(self.augment, idx.shape[0], aug_gen)
            else:
                view = torch.zeros(idx.shape[0], dtype=torch.long, device=self.x.device)
            yield idx, view, strong_gen

    def _build(self, idx: torch.Tensor, view: torch.Tensor, *, check: bool,
               strong: torch.Generator | None = None) -> torch.Tensor:
        xb = self.x[idx]
        if xb.dtype == torch.int64:  # token ids (sequence data): no scaling, no augmentation
            return xb
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
        if self.augmenting:
            xb = aug.apply_views(self.augment, xb, view, check=check)
        if strong is not None:
            from kdbench.data.randaugment import rand_augment

            xb = rand_augment(xb, strong)
        xb = (xb - self.mean) / self.std
        if self.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def view_batch(self, idx, view=None) -> torch.Tensor:
        """The exact input tensor the loader builds for dataset indices ``idx`` seen as views ``view``.

        ``idx`` and ``view`` (default: all 0) are 1-D integer sequences of the same length, on any
        device; the result is on the data's device, normalised (and channels-last) like a batch's
        ``x``, and ``torch.equal`` to the rows of any batch that had these ``(idx, view)`` pairs.
        """
        idx = torch.as_tensor(idx, device=self.x.device).long()
        if idx.dim() != 1:
            raise ValueError(f"idx must be 1-D, got shape {tuple(idx.shape)}")
        if view is None:
            view = torch.zeros_like(idx)
        view = torch.as_tensor(view, device=self.x.device)
        aug.check_views(self.augment if self.augmenting else "none", view, idx.shape[0])
        return self._build(idx, view.long(), check=False)

    def __iter__(self) -> Iterator[Batch]:
        for idx, view, strong in self._plan(None):
            x = self._build(idx, view, check=False)
            if strong is None:
                yield Batch(x, self.y[idx], idx, view)
            else:  # an independent draw of the family, then RandAugment + Cutout
                codes = aug.draw_views(self.augment, idx.shape[0], strong) if self.augmenting else view
                yield ViewsBatch(x, self.y[idx], idx, view, {"strong": self._build(idx, codes, check=False,
                                                                                   strong=strong)})
        if self.shuffle:
            self.epoch += 1
