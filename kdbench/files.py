"""Files: atomic writes (readers see the old file or the new one, never a partial one), and paths.

Every file kdbench writes (records, tables, plots, checkpoints, registry entries, data caches)
goes through :func:`atomic_write`: the bytes go to a temporary file created exclusively
(``mkstemp``: ``O_EXCL``, a random name, so a symlink planted beside the target is never
followed) in the target's own folder, are flushed to disk, and the temporary file is renamed
over the target (a rename within one folder is atomic). Two writers of the same file never
touch each other's temporary files; the last rename wins.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["abs_path", "atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` to produce the file's content at a fresh temporary path, then move it to ``path``.

    ``write`` may open the path itself (``torch.save``, ``savefig``, safetensors' ``save_file``).
    ``mode`` sets the permission bits; by default a replaced file keeps its mode and a new one gets what
    ``open()`` would give it (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else _default_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _default_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=mode)


def abs_path(path: str | os.PathLike) -> Path:
    """``path`` relative to where the command was started (Hydra changes the working folder of its jobs)."""
    import hydra

    return Path(hydra.utils.to_absolute_path(str(path)))
