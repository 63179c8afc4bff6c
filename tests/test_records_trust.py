"""What a run reads back of its own record: a record that says 'complete' is trusted only when it is this
run's result; an unreadable one never stops the run; the busy line survives a hostile record."""

from __future__ import annotations

import json

import pytest

from kdbench.records import complete_record, run_lock, write_record

OK = {"run_id": "kd-s0-abc", "status": "complete",
      "metrics": {"last": {"test": {"acc": 0.9}}, "best": {"epoch": 1, "test": {"acc": 0.91}}}}


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"{\"run_id\": ", b"[1, 2]", b"\"complete\""])
def test_an_unreadable_or_non_mapping_record_is_not_complete_and_raises_nothing(tmp_path, content):
    """Bytes that are not UTF-8 raised UnicodeDecodeError out of every later run of that id."""
    path = tmp_path / "kd-s0-abc.json"
    path.write_bytes(content)
    assert complete_record(path) is None


@pytest.mark.parametrize("bad, says", [
    ({"metrics": {}}, "it has no test metrics of its last epoch"),
    ({"metrics": "high"}, "it has no test metrics of its last epoch"),
    ({"metrics": {"last": {"test": {"acc": 0.9}}, "best": {"test": {}}}}, "it has no test metrics of its best epoch"),
    ({"run_id": "kd-s1-def"}, "it is run kd-s1-def's record, not kd-s0-abc's"),
])
def test_a_record_saying_complete_without_being_this_runs_result_is_not_complete(tmp_path, capsys, bad, says):
    path = write_record(tmp_path / "kd-s0-abc.json", {**OK, **bad})
    assert complete_record(path) is None
    err = capsys.readouterr().err
    assert err.strip() == f"kdbench: warning: {path} says 'complete' but {says}: training it again"
    write_record(path, OK)
    assert complete_record(path)["metrics"] == OK["metrics"]


@pytest.mark.slow
def test_a_complete_record_without_metrics_is_trained_again_not_skipped_forever(compose, capsys):
    """The run skipped it ("already complete") on every invocation, and a sweep reported nothing for it."""
    from kdbench.train import run

    cfg = ("distill=none", "trainer.max_epochs=1")
    first = run(compose(*cfg))
    write_record(first["record_path"], {"run_id": first["run_id"], "experiment": "default", "status": "complete"})
    capsys.readouterr()
    again = run(compose(*cfg))
    assert "already complete" not in capsys.readouterr().out
    assert again["status"] == "complete" and again["metrics"]["last"]["test"] == first["metrics"]["last"]["test"]
    assert json.loads(open(first["record_path"]).read())["metrics"]["best"]["test"]


@pytest.mark.parametrize("record", [[1, 2], {"started_at": "noon\nkdbench: ok", "host": "h"}, {"host": "h"}])
def test_the_busy_line_is_one_line_whatever_the_running_record_holds(tmp_path, record):
    """A record that is a JSON list raised AttributeError instead of the busy line; a newline in a field split
    it in two."""
    from filelock import FileLock

    from kdbench.errors import BusyError

    lock, path = tmp_path / "r.lock", tmp_path / "r.json"
    path.write_text(json.dumps(record))
    with FileLock(str(lock)):
        with pytest.raises(BusyError) as e:
            with run_lock(lock, path, "r"):
                pass
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("run: r is already running in another process (")
    assert (f"lock {lock}" in msg) if not isinstance(record, dict) or "started_at" not in record else \
        "started noon\\nkdbench: ok on h" in msg
