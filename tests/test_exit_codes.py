"""The one exception -> exit code mapping every entry point goes through (docs/errors.md)."""

from __future__ import annotations

import errno
import signal

import pytest

from kdbench.errors import ConfigError, DivergedError, exit_codes
from kdbench.interrupts import RunInterrupted


@pytest.mark.parametrize("exc, code, line", [
    (ConfigError("distill.tau", "must be > 0, got 0"), 2, "kdbench: error: distill.tau: must be > 0, got 0"),
    (DivergedError(4, "the loss or the student logits"), 3,
     "kdbench: error: training diverged at step 4: the loss or the student logits is not finite; "
     "record status 'diverged'"),
    (OSError(errno.ENOSPC, "No space left on device", "/r/runs/x.json"), 4,
     "kdbench: error: could not write /r/runs/x.json: No space left on device; the run record says 'failed' "
     "(free space or fix the folder, then run it again: it resumes)"),
    (RunInterrupted(signal.SIGINT), 130,
     "kdbench: interrupted by SIGINT; record status 'interrupted' (run it again to resume)"),
    (RunInterrupted(signal.SIGTERM), 143,
     "kdbench: interrupted by SIGTERM; record status 'interrupted' (run it again to resume)"),
])
def test_each_exception_is_one_line_and_its_exit_code(exc, code, line, capsys):
    @exit_codes(run=True)
    def main() -> int:
        raise exc

    assert main() == code
    assert capsys.readouterr().err == line + "\n"


def test_what_the_table_does_not_map_is_a_traceback():
    @exit_codes()  # not a run: a failed write is not "the run record says 'failed'"
    def main() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/x")

    with pytest.raises(OSError):
        main()
    with pytest.raises(ValueError), exit_codes(run=True):
        raise ValueError("a bug")
    with pytest.raises(OSError), exit_codes(run=True):
        raise OSError(errno.ENOENT, "No such file or directory", "/x")  # not a write error


def test_a_command_returns_its_code_or_exits_with_it_and_names_itself(capsys):
    assert exit_codes()(lambda: 0)() == 0
    with pytest.raises(SystemExit) as e, exit_codes(exit=True):  # a Hydra task function
        raise ConfigError("seed", "must be an integer, got 'abc'")
    assert e.value.code == 2

    @exit_codes("kdbench-report", key=False)  # the report prints the message alone
    def report() -> int:
        raise ConfigError("--all", "no records")

    assert report() == 2
    assert capsys.readouterr().err.splitlines() == ["kdbench: error: seed: must be an integer, got 'abc'",
                                                    "kdbench-report: error: no records"]


def test_under_multirun_errors_propagate_but_a_signal_still_stops(capsys):
    with pytest.raises(ConfigError), exit_codes(run=True, reraise=True):
        raise ConfigError("distill.tau", "must be > 0, got 0")
    with pytest.raises(DivergedError), exit_codes(run=True, reraise=True):
        raise DivergedError(1, "the loss")
    with pytest.raises(SystemExit) as e, exit_codes(run=True, reraise=True, exit=True):
        raise RunInterrupted(signal.SIGTERM)
    assert e.value.code == 143 and capsys.readouterr().err.startswith("kdbench: interrupted by SIGTERM")
