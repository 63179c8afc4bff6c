"""What every bench section measures with: a device sync, the median of repeated calls, the device's name."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 7, inner: int = 5) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def device_label(device: torch.device) -> str:
    """The device as the output's header names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """The file name of this device's results (``results/bench/<slug>.md``)."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    return f"cpu_{os.cpu_count()}core"
