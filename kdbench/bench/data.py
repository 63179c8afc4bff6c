"""Bench section ``data``: :class:`kdbench.data.TensorLoader` (the whole dataset as a uint8 tensor,
batched crop+flip) vs a torchvision DataLoader with per-image PIL transforms."""

from __future__ import annotations

import torch

from kdbench.bench.table import Section
from kdbench.bench.timing import median_time, sync


def bench_data(device: torch.device, n_images: int) -> list[dict]:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from kdbench.data import TensorLoader

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_images,), generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    class PILSet(Dataset):
        def __len__(self):
            return n_images

        def __getitem__(self, i):
            return tf(pil[i]), int(y[i])

    rows = []
    for bs in (64, 256):
        ours = TensorLoader(x.to(device), y.to(device), bs, shuffle=True, augment="crop_flip", mean=mean, std=std)
        ref = DataLoader(PILSet(), batch_size=bs, shuffle=True, num_workers=0)

        def run_ours(ours=ours):
            for _batch in ours:
                pass
            sync(device)

        def run_ref(ref=ref):
            for xb, _yb in ref:
                xb.to(device)
            sync(device)

        a = median_time(run_ours, device, repeats=3, inner=1)
        b = median_time(run_ref, device, repeats=3, inner=1)
        rows.append({"batch": bs, "TensorLoader (img/s)": n_images / a, "DataLoader+PIL (img/s)": n_images / b,
                     "speed-up": b / a})
    return rows


def section(device: torch.device) -> Section:
    return Section("CIFAR-style batches with random crop (pad 4) + flip, one epoch of 2,048 images",
                   bench_data(device, 2048))
