"""Credentials never reach disk: refuse them in the config, redact anything that looks like one.

Hydra saves the config and the command line to ``.hydra/`` before a job starts, W&B records the
config, and run records hold it too: a credential passed there would be written in several
places. A key counts as a credential when its last component is one of :data:`SECRET_NAMES`
(the names trackers and clients use: ``wandb.login(key=...)``, ``api_key``, ``token``, ...) or
contains one of :data:`SECRET_WORDS`; a value counts when it is shaped like a W&B API key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdbench.errors import ConfigError

#: key names that are credentials wherever they appear (exact match of the key's last component)
SECRET_NAMES = ("key", "api_key", "apikey", "token", "password", "passwd", "secret", "auth", "credentials")
#: words that make any key containing them a credential
SECRET_WORDS = ("api_key", "apikey", "secret", "password", "credential")
#: endings that do (``access_token``, ``hf_token``; not ``max_tokens``)
SECRET_SUFFIXES = ("_token", "-token")
#: W&B API keys: 40 hex characters (classic) or a prefixed 'local-'/'v1-' form with a 40+ character tail
_WANDB_KEY = re.compile(r"^(?:[a-z0-9]+-)?[0-9a-f]{40,}$")
REDACTED = "<redacted>"


def is_secret_key(key: Any) -> bool:
    name = str(key).lower().rsplit(".", 1)[-1]
    return name in SECRET_NAMES or any(w in name for w in SECRET_WORDS) or name.endswith(SECRET_SUFFIXES)


def looks_like_secret(value: Any) -> bool:
    return isinstance(value, str) and bool(_WANDB_KEY.match(value.strip().lower()))


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with every credential-like key's value, and every key-shaped value, blanked."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return REDACTED if looks_like_secret(obj) else obj


def redact_override(o: str) -> str:
    key, eq, value = str(o).partition("=")
    return f"{key}={REDACTED}" if eq and (is_secret_key(key.lstrip("+~")) or looks_like_secret(value)) else str(o)


def secret_entries(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every non-empty credential-like config value."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    out: list[tuple[str, Any]] = []
    items = cfg.items() if isinstance(cfg, Mapping) else enumerate(cfg) if isinstance(cfg, list) else []
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (Mapping, list)):
            out += secret_entries(v, key + ".")
        elif (is_secret_key(k) and v not in (None, "")) or looks_like_secret(v):
            out.append((key, v))
    return out


def reject_secrets(cfg: Any) -> None:
    found = secret_entries(cfg)
    if found:
        raise ConfigError(found[0][0], "looks like a credential: secrets must not be passed in the config or on "
                                       "the command line (they would be saved with it); set them in the "
                                       "environment instead (e.g. WANDB_API_KEY, or `wandb login`)")


def scrub_hydra_files(cfg: Any) -> None:
    """Blank credential-like values in the files Hydra saved when the job started.

    Hydra writes ``.hydra/{config,hydra,overrides}.yaml`` (and a sweep's ``multirun.yaml``) before the
    task runs, so a secret passed as an override is on disk before the run can reject it.
    """
    from kdbench.files import atomic_write_text

    secrets = sorted({str(v) for _, v in secret_entries(cfg) if str(v)}, key=len, reverse=True)
    if not secrets:
        return
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:
        return
    files: list[Path] = []
    if hc.output_subdir:
        files += sorted((Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"))
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        clean = text
        for secret in secrets:
            clean = clean.replace(secret, REDACTED)
        if clean != text:
            atomic_write_text(f, clean)
