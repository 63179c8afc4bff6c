"""Ctrl-C and SIGTERM: a run stops cleanly, says so, and exits 130 / 143.

Lightning turns Ctrl-C into ``SystemExit(1)`` and SIGTERM into a bare ``SystemExit`` (exit 0): a
scheduler, ``timeout`` or a shell then sees success, and the run record says ``failed:
SystemExit``. :func:`trapped` installs handlers for the length of a run that remember which signal
arrived and unwind the run at once (as Ctrl-C does); :class:`RunInterrupted` then carries the
signal out, so the record says ``interrupted``, W&B closes the run as failed, the process exits
128 + the signal number, and a sweep launched by ``kdbench.sweep`` stops instead of going on to
the next job. The next invocation of the same run resumes from its last checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """The run was stopped by a signal (a BaseException, like KeyboardInterrupt: nothing catches it by accident)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {self.name}")


@dataclass
class Trap:
    signum: int | None = None

    def raise_if_caught(self, exc: BaseException | None = None) -> None:
        """Re-raise as :class:`RunInterrupted` if a signal arrived (whatever it became on the way out)."""
        if self.signum is not None and not isinstance(exc, RunInterrupted):
            raise RunInterrupted(self.signum) from None


@contextmanager
def trapped() -> Iterator[Trap]:
    """Within the block, SIGINT and SIGTERM are remembered and raise KeyboardInterrupt where the run is.

    Outside the main thread (signals cannot be handled there) the block runs unchanged.
    """
    trap = Trap()
    if threading.current_thread() is not threading.main_thread():
        yield trap
        return

    def handler(signum, frame):
        if trap.signum is None:
            trap.signum = signum
            raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield trap
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
