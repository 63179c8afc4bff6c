"""A pytest plugin (``pytest -p kdbench.gpucheck.cuda_tests``) that keeps only the tests that need CUDA: those
skipped without it (a ``skipif`` whose reason names CUDA or a GPU) and those named after it."""

from __future__ import annotations

import re

NEEDS_CUDA = re.compile(r"\bcuda\b|\bgpu\b", re.IGNORECASE)


def needs_cuda(item) -> bool:
    if "cuda" in item.name.lower():
        return True
    return any(NEEDS_CUDA.search(str(m.kwargs.get("reason", ""))) for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    keep = [i for i in items if needs_cuda(i)]
    dropped = [i for i in items if not needs_cuda(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
