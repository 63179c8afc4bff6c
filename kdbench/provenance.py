"""Where and with what a run ran: package versions, the device, the command-line overrides."""

from __future__ import annotations

import os
import platform

from kdbench.credentials import redact_override

PACKAGES = ("torchvision", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf", "wandb", "pandas")
#: packages whose distribution metadata says what their ``__version__`` does (a run that does not use them
#: need not pay ~1 s each to import them; torchvision's local ``+cu130`` suffix exists only in the module)
_BY_METADATA = {"wandb": "wandb", "pandas": "pandas"}


def versions() -> dict[str, str]:
    import importlib.metadata
    import sys

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in PACKAGES:
        try:
            if mod in _BY_METADATA and mod not in sys.modules:  # what the module would say, without importing it
                out[mod] = importlib.metadata.version(_BY_METADATA[mod])
            else:
                out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    try:
        from kdbench import __version__

        out["kdbench"] = __version__
    except ImportError:  # pragma: no cover
        pass
    return out


def device_name(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def overrides() -> list[str]:
    """The Hydra command-line overrides of this job (credentials redacted), or [] outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except Exception:
        return []
    return [redact_override(o) for o in task]


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False
