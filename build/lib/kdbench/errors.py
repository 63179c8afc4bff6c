"""The one exception type a user sees: a bad input, named by its config key, in one line."""

from __future__ import annotations


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
