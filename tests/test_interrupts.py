"""Ctrl-C / SIGTERM, one process per run, and grids whose points share a run (issues 14.3-14.4, 16.3)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.records import read_record

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 30


def _cmd(results: Path, *extra: str) -> list[str]:
    return [f"paths.results_dir={results}", f"hydra.run.dir={results}/hydra", "experiment_name=sig",
            "distill=none", f"trainer.max_epochs={EPOCHS}", "dataset.batch_size=8", "trainer.progress=false",
            "trainer.accelerator=cpu", *extra]


def _wait_for_checkpoint(proc: subprocess.Popen, results: Path, timeout: float = 240) -> None:
    """Until the first epoch's last.ckpt exists (the run is mid-training)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list((results / "checkpoints").rglob("last.ckpt")):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the run never reached its first checkpoint (rc {proc.poll()})")


def wandb_records(stream: Path) -> list:
    """The protobuf records of an offline W&B run file (a LevelDB-style log), read independently of wandb's SDK."""
    from wandb.proto import wandb_internal_pb2 as pb2

    data, pos, buf, out = stream.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            rec = pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            out.append(rec)
    return out


def _wandb_exit_code(stream: Path) -> int:
    codes = [r.exit.exit_code for r in wandb_records(stream) if r.WhichOneof("record_type") == "exit"]
    assert len(codes) == 1, codes
    return codes[0]


def _summary_keys(stream: Path) -> set[str]:
    keys = set()
    for r in wandb_records(stream):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                keys.add("/".join(item.nested_key) if item.nested_key else item.key)
    return keys


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_mid_training_exits_128_plus_n_records_interrupted_and_the_next_run_resumes(tmp_path, sig, code):
    results = tmp_path / "r"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "kdbench.train", *_cmd(results, "logger=wandb", "logger.wandb.mode=offline")]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, results)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("kdbench:")]
    assert len(lines) == 1 and f"interrupted by {sig.name}" in lines[0] and "Traceback" not in err
    (path,) = (results / "runs" / "sig").glob("*.json")
    rec = read_record(path)
    assert rec["status"] == "interrupted" and f"interrupted by {sig.name}" in rec["error"]
    assert 1 <= len(rec["history"]) < EPOCHS and "traceback" not in rec
    (stream,) = (results / "wandb").rglob("run-*.wandb")
    assert _wandb_exit_code(stream) == code  # W&B closed the run as failed, not as a success
    if sig == signal.SIGTERM:  # the same command resumes where it stopped, and completes
        again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "kdbench: resuming" in again.stdout and f"of {EPOCHS}" in again.stdout
        rec = read_record(path)
        assert rec["status"] == "complete" and rec["resumed_from"] and len(rec["history"]) == EPOCHS
        # one run, one W&B run: the resumed invocation continued the same W&B run id
        from kdbench.identity import wandb_id

        dirs = sorted((results / "wandb").glob("offline-run-*"))
        wid = wandb_id("sig", rec["run_id"])
        assert len(dirs) == 2 and all(d.name.endswith("-" + wid) for d in dirs), dirs
        keys = _summary_keys(sorted(dirs[-1].glob("run-*.wandb"))[0])
        assert {"last/test/acc", "best/test/acc", "last/epoch", "best/epoch", "best/val/acc"} <= keys, keys


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_job_which_records_interrupted(tmp_path):
    results = tmp_path / "r"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "kdbench.sweep", "experiment=quickstart", f"paths.results_dir={results}",
            "distill=none", "seed=0,1", f"trainer.max_epochs={EPOCHS}", "dataset.batch_size=8", "logger=none",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(proc, results)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "INTERRUPTED" in out
    recs = [read_record(p) for p in (results / "runs" / "quickstart").glob("*.json")]
    assert [r["status"] for r in recs] == ["interrupted"]  # the first job stopped; the second never started


def test_a_second_invocation_of_a_running_run_is_refused_with_one_line(compose, tmp_path):
    from filelock import FileLock

    from kdbench.config import resolve
    from kdbench.errors import BusyError
    from kdbench.identity import run_id_of
    from kdbench.train import run

    cfg = compose("distill=none", "trainer.max_epochs=1")
    rid = run_id_of(resolve(cfg))
    lock = FileLock(str(Path(cfg.paths.checkpoints_dir) / cfg.experiment_name / f"{rid}.lock"), timeout=0)
    Path(lock.lock_file).parent.mkdir(parents=True)
    with lock:  # another process is running it (filelock's locks are per process and thread: a thread holds it)
        import threading

        held, release = threading.Event(), threading.Event()

        def other():
            with FileLock(lock.lock_file, timeout=0):
                held.set()
                release.wait(60)

        lock.release()
        t = threading.Thread(target=other)
        t.start()
        assert held.wait(10)
        try:
            with pytest.raises(BusyError) as e:
                run(cfg)
        finally:
            release.set()
            t.join()
    assert rid in str(e.value) and "already running" in str(e.value) and "\n" not in str(e.value)
    assert run(cfg)["status"] == "complete"  # once it is free, the run goes ahead


def test_grid_points_that_are_one_run_run_once_and_progress_names_what_varies():
    from kdbench.sweep import label, plan, varying

    jobs = plan(["experiment=quickstart", "distill=kd,none", "distill.tau=1,4", "seed=0"])
    assert sorted(j["cfg"].distill.variant for j in jobs) == ["kd", "kd", "scratch"]  # scratch reads no tau
    (scratch,) = [j for j in jobs if j["cfg"].distill.variant == "scratch"]
    assert len(scratch["same_as"]) == 1
    keys = varying(jobs)
    assert sorted(label(j, keys) for j in jobs) == ["kd tau=1 seed 0", "kd tau=4 seed 0", "scratch seed 0"]


def test_a_dense_teacher_run_is_one_run_whatever_top_k_mode_the_grid_names(tmp_path):
    """`teacher_signal=online,captured +distill.topk_mode=renorm,tail`: the online KD run reads no top-k
    mode, so its two grid points are one run; the captured ones stay two; scratch is one per seed."""
    from kdbench.sweep import label, plan, varying

    jobs = plan(["experiment=quickstart", "distill=kd,none", "teacher_signal=online,captured",
                 f"teacher_capture.path={tmp_path}/cap", "+distill.topk_mode=renorm,tail", "seed=0"])
    kinds = sorted((j["cfg"].distill.variant, j["conf"]["teacher_signal"], j["conf"]["distill"].get("topk_mode"))
                   for j in jobs)
    assert kinds == [("kd", "captured", "renorm"), ("kd", "captured", "tail"), ("kd", "online", None),
                     ("scratch", "none", None)]
    keys = varying(jobs)
    assert sorted(label(j, keys) for j in jobs) == [
        "kd teacher_signal=captured topk_mode=renorm seed 0", "kd teacher_signal=captured topk_mode=tail seed 0",
        "kd teacher_signal=online seed 0", "scratch seed 0"]
