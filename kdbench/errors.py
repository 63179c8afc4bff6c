"""The exceptions a user sees (a bad input, named by its config key, in one line) and their exit codes."""

from __future__ import annotations

import copy
import errno
import functools
import sys
from collections.abc import Callable


class KDBenchError(Exception):
    """A user-facing error: printed as one line (``key: message``), exit status 2, no traceback."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class ConfigError(KDBenchError):
    """A config value that is out of range or unknown."""


class DataError(KDBenchError):
    """Dataset files that are missing, truncated or inconsistent."""


class TeacherError(KDBenchError):
    """A teacher checkpoint that is missing, corrupted, unsafe or for another architecture."""


class BusyError(KDBenchError):
    """The same run is already running in another process."""


class DivergedError(Exception):
    """A NaN/Inf appeared in the loss or the logits during training."""

    def __init__(self, step: int, what: str):
        self.step = step
        self.what = what
        super().__init__(f"training diverged at step {step}: {what} is not finite")


#: errors of writing files (disk full, quota, read-only, permissions, a file where a folder should be)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST,
                          errno.ENOTDIR, errno.EISDIR, errno.EFBIG})

INTERRUPTED = "record status 'interrupted' (run it again to resume)"


def print_error(prog: str, message: str) -> int:
    """``<prog>: error: <message>`` on stderr; returns 2, the exit code of a bad input."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


class ExitCodes:
    """The exceptions of docs/errors.md as one line on stderr and their exit code (see :func:`exit_codes`)."""

    def __init__(self, prog: str = "kdbench", *, key: bool = True, run: bool = False,
                 interrupted: str = INTERRUPTED, reraise: bool = False, exit: bool = False):
        self.prog, self.key, self.run, self.interrupted = prog, key, run, interrupted
        self.reraise, self.exit = reraise, exit
        self.code: int | None = None

    def exit_code(self, e: BaseException) -> tuple[int, str] | None:
        """(exit code, the line to print) for an exception the table maps; None for any other (a traceback)."""
        from kdbench.interrupts import RunInterrupted

        if isinstance(e, RunInterrupted):  # also under -m: a stopped sweep stops, rather than going on
            return e.exit_code, f"{self.prog}: {e}; {self.interrupted}"
        if self.reraise:
            return None
        if isinstance(e, KDBenchError):
            return 2, f"{self.prog}: error: {e if self.key else e.message}"
        if isinstance(e, DivergedError):
            return 3, f"{self.prog}: error: {e}; record status 'diverged'"
        if self.run and isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            # a full disk, a read-only or foreign folder: one line naming the file, not a traceback
            where = f" {e.filename}" if e.filename else ""
            return 4, (f"{self.prog}: error: could not write{where}: {e.strerror or e}; the run record says "
                       "'failed' (free space or fix the folder, then run it again: it resumes)")
        return None

    def __enter__(self) -> ExitCodes:
        self.code = None
        return self

    def __exit__(self, typ, e, tb) -> bool:
        mapped = None if e is None else self.exit_code(e)
        if mapped is None:
            return False
        self.code, line = mapped
        print(line, file=sys.stderr)
        if self.exit:
            raise SystemExit(self.code) from None
        return True

    def __call__(self, fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(*args, **kwargs) -> int:
            with copy.copy(self) as ex:
                return fn(*args, **kwargs)
            return ex.code

        return main


def exit_codes(prog: str = "kdbench", *, key: bool = True, run: bool = False, interrupted: str = INTERRUPTED,
               reraise: bool = False, exit: bool = False) -> ExitCodes:
    """One command's exception -> exit code mapping (docs/errors.md), as a decorator of ``main`` or a ``with``.

    ``KDBenchError`` -> 2 (``<prog>: error: <key>: <message>``; the message alone with ``key=False``),
    ``DivergedError`` -> 3, ``RunInterrupted`` -> 128 + the signal (``<prog>: interrupted by SIGINT;
    <interrupted>``), and with ``run=True`` a file that could not be written -> 4. ``reraise`` (under
    Hydra's -m) lets all but the signal propagate, so the launcher marks the job failed. A decorated
    ``main`` returns the code; ``exit=True`` raises ``SystemExit(code)`` instead (a Hydra task function).
    """
    return ExitCodes(prog, key=key, run=run, interrupted=interrupted, reraise=reraise, exit=exit)
