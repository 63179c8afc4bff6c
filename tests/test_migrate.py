"""`kdbench records migrate` on hostile records: every path it builds stays inside its root, one bad record is
reported in one line and skipped, and the good ones still move (with their checkpoint folders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO

EXP = "mnist_ablation"


def old_record(run_id: str = "kd-s0-0123456789") -> dict:
    """A committed record as the pre-redesign code wrote it (its id hashed ``auto`` unresolved, no
    data_seed / teacher_signal / distill.method): migrate moves it to today's id."""
    src = sorted((REPO / "results" / "runs" / EXP).glob("*.json"))[0]
    rec = json.loads(src.read_text())
    rec.pop("migrated_from", None)
    old = {**rec, "run_id": run_id, "config": {k: v for k, v in rec["config"].items()
                                               if k not in ("data_seed", "teacher_signal")}}
    old["config"]["distill"] = {k: v for k, v in old["config"]["distill"].items() if k != "method"}
    old["config"]["trainer"] = {**old["config"]["trainer"], "accelerator": "auto", "precision": "auto"}
    return old


def plant(folder: Path, name: str, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_hostile_records_are_refused_one_line_each_and_the_good_one_still_moves(tmp_path, capsys):
    """A run_id of ../../../victim (the defect: migrate renamed a folder three levels above the checkpoints),
    an experiment of ../.., a record that is a JSON string / list, no overrides, overrides as a string, a
    config that is not a mapping, a record whose run_id is not its file's name, garbage JSON and a name with a
    newline: each refused in one line; the victim folder is untouched; the good record and its checkpoint move."""
    from kdbench.migrate import main

    runs, ckpts = tmp_path / "r" / "runs", tmp_path / "r" / "a" / "b" / "checkpoints"
    good = old_record()
    plant(runs / EXP, "kd-s0-0123456789.json", good)
    plant(ckpts / EXP / "kd-s0-0123456789", "last.ckpt", "weights")
    victim = ckpts / EXP / ".." / ".." / ".." / "victim"
    plant(victim, "precious.txt", "mine")
    hostile = {
        "victim.json": {**old_record(), "run_id": "../../../victim"},
        "up.json": {**old_record("up"), "experiment": "../.."},
        "string.json": "\"just a string\"", "list.json": [1, 2, 3],
        "no-overrides.json": {k: v for k, v in old_record("no-overrides").items() if k != "overrides"},
        "str-overrides.json": {**old_record("str-overrides"), "overrides": "distill.tau=4"},
        "config-list.json": {**old_record("config-list"), "config": [1]},
        "elsewhere.json": old_record("kd-s0-5555555555"),
        "garbage.json": "{not json",
        "new\nline.json": {**old_record("new\nline")},
        "kd-s0-7777777777.json": {**old_record("kd-s0-7777777777"),
                                  "overrides": [*old_record()["overrides"], "experiment_name=other"]},
    }
    for name, content in hostile.items():
        plant(runs / EXP, name, content)
    rc = main(["--runs-dir", str(runs), "--checkpoints-dir", str(ckpts)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    refused = [line for line in out if line.startswith("left as it is: ")]
    assert len(refused) == len(hostile), out  # one line each: the newline in a name is escaped
    assert json.loads(out[-1]) == {"moved": 1, "current": 0, "refused": len(hostile)}
    said = "\n".join(refused)
    assert "its run_id '../../../victim' is not a plain name" in said
    assert "its experiment '../..' is not a plain name" in said
    assert "not a run record (str)" in said and "not a run record (list)" in said
    assert "its overrides are not a list of strings (got NoneType)" in said
    assert "its overrides are not a list of strings (got str)" in said
    assert "its config is not a mapping (got list)" in said
    assert "its run_id 'kd-s0-5555555555' is not where it lies (elsewhere)" in said
    assert "unreadable (JSONDecodeError" in said
    assert "its overrides compose to experiment_name 'other', not 'mnist_ablation'" in said
    assert (victim / "precious.txt").read_text() == "mine" and sorted(p.name for p in victim.parent.iterdir()) == [
        "b", "victim"]
    for name in hostile:
        assert (runs / EXP / name).exists(), f"{name} was moved or deleted"
    (moved,) = [p for p in (runs / EXP).glob("kd-s0-*.json") if p.name not in hostile]
    assert moved.name != "kd-s0-0123456789.json" and json.loads(moved.read_text())["migrated_from"] == [
        "kd-s0-0123456789"]
    assert (ckpts / EXP / moved.stem / "last.ckpt").read_text() == "weights"
    assert not (ckpts / EXP / "kd-s0-0123456789").exists()


def test_symbolic_links_out_of_the_roots_are_not_followed(tmp_path):
    """An experiment folder of records that is a link to a folder elsewhere (migrate would delete the record
    there and write a new one there), and a checkpoint folder that is a link out of the checkpoints: refused,
    the linked folders untouched."""
    from kdbench.migrate import migrate

    runs, ckpts, outside = tmp_path / "runs", tmp_path / "ckpts", tmp_path / "outside"
    plant(outside / EXP, "kd-s0-0123456789.json", old_record())
    runs.mkdir()
    (runs / EXP).symlink_to(outside / EXP, target_is_directory=True)
    assert migrate(runs, checkpoints_dir=str(ckpts), log=lambda *_: None)["moved"] == []  # rglob: not followed
    res = migrate(runs, EXP, checkpoints_dir=str(ckpts), log=lambda *_: None)  # named: followed, then refused
    assert res["moved"] == [] and "lies outside" in res["refused"][0][1]
    assert [p.name for p in (outside / EXP).iterdir()] == ["kd-s0-0123456789.json"]

    runs2 = tmp_path / "runs2"
    plant(runs2 / EXP, "kd-s0-0123456789.json", old_record())
    plant(outside / "ck", "last.ckpt", "theirs")
    (ckpts / EXP).mkdir(parents=True)
    (ckpts / EXP / "kd-s0-0123456789").symlink_to(outside / "ck", target_is_directory=True)
    res = migrate(runs2, checkpoints_dir=str(ckpts), log=lambda *_: None)
    assert res["moved"] == [] and "leads out of" in res["refused"][0][1]
    assert (runs2 / EXP / "kd-s0-0123456789.json").exists() and (ckpts / EXP / "kd-s0-0123456789").is_symlink()


def test_a_running_run_and_a_taken_checkpoint_folder_are_left_alone_a_dead_lock_is_not(tmp_path):
    """The run's lock held by another process (it would write its record at the old id again): refused. A lock
    file left by a dead process holds nothing: the record moves. A checkpoint folder of the new id already
    there: refused before anything moves (it was a half-done move: record moved, then an OSError)."""
    from filelock import FileLock

    from kdbench.migrate import migrate

    runs, ckpts = tmp_path / "runs", tmp_path / "ckpts"
    plant(runs / EXP, "kd-s0-0123456789.json", old_record())
    plant(ckpts / EXP / "kd-s0-0123456789", "last.ckpt", "weights")
    lock = FileLock(str(ckpts / EXP / "kd-s0-0123456789.lock"))
    with lock:
        res = migrate(runs, checkpoints_dir=str(ckpts), log=lambda *_: None)
    assert res["moved"] == [] and "running in another process" in res["refused"][0][1]
    dry = migrate(runs, checkpoints_dir=str(ckpts), dry_run=True, log=lambda *_: None)
    new_id = Path(dry["moved"][0][1]).stem
    plant(ckpts / EXP / new_id, "last.ckpt", "someone else's")
    res = migrate(runs, checkpoints_dir=str(ckpts), log=lambda *_: None)
    assert res["moved"] == [] and f"{new_id} exists already" in res["refused"][0][1]
    assert (runs / EXP / "kd-s0-0123456789.json").exists()
    assert (ckpts / EXP / new_id / "last.ckpt").read_text() == "someone else's"
    (ckpts / EXP / new_id / "last.ckpt").unlink()
    (ckpts / EXP / new_id).rmdir()
    assert (ckpts / EXP / "kd-s0-0123456789.lock").exists()  # left behind, held by no one
    res = migrate(runs, checkpoints_dir=str(ckpts), log=lambda *_: None)
    assert len(res["moved"]) == 1 and (ckpts / EXP / new_id / "last.ckpt").read_text() == "weights"


@pytest.mark.parametrize("bad", ["file", "experiment"])
def test_a_runs_dir_that_is_a_file_or_a_bad_experiment_is_one_line(tmp_path, capsys, bad):
    from kdbench.migrate import main

    (tmp_path / "runs").write_text("not a folder") if bad == "file" else (tmp_path / "runs").mkdir()
    args = ["--runs-dir", str(tmp_path / "runs")] + (["--experiment", "../etc"] if bad == "experiment" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kdbench: error: --")
    assert ("is not a folder of run records" if bad == "file" else "'../etc' is not an experiment name") in err
