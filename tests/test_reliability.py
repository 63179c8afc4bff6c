"""Reliability: kill and resume, parallel writers, numerical faults, determinism, several devices,
secrets, and a table of bad inputs (docs/errors.md lists every case and its message).

Fast tests keep to digits-sized runs; the kill/resume and DDP tests are ``slow`` (``make test-slow``).
Worker functions for the multi-process tests live at module level (child processes import them).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from kdbench.errors import ConfigError, DataError, DivergedError, KDBenchError, TeacherError
from kdbench.records import read_record
from tests.conftest import REPO, train_main

#: planted credentials: no file a run writes may contain them
FAKE_ENV_KEY = "fake-key-0123456789abcdef0123456789abcdef01234567"
FAKE_CFG_KEY = "fake-cfg-key-fedcba9876543210fedcba9876543210fedcba98"

#: a tiny distillation: 1-epoch teacher, small student with dropout (so the RNG matters)
TINY = ("trainer.max_epochs=2", "teacher.recipe.epochs=1", "teacher.kwargs.hidden=[64]",
        "+student.kwargs.dropout=0.3")


def _records(results: Path) -> list[Path]:
    return sorted((results / "runs").rglob("*.json")) if (results / "runs").exists() else []


def _cli(args: list[str], *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "kdbench.train", *args], cwd=REPO, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def _files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for p in Path(root).rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(str(p))
    return hits


# =============================================================================================
# 1. kill and resume; re-runs skip complete records and redo failed ones
# =============================================================================================

KILL_EPOCHS = 6


def _kill_cmd(results: Path, teachers: Path, out: Path) -> list[str]:
    return [f"paths.results_dir={results}", f"paths.teachers_dir={teachers}", f"hydra.run.dir={out}",
            "logger=none", "trainer.progress=false", "experiment_name=killres", f"trainer.max_epochs={KILL_EPOCHS}",
            "dataset.batch_size=16", "teacher.recipe.epochs=1", "teacher.kwargs.hidden=[64]",
            "+student.kwargs.dropout=0.3", "trainer.accelerator=cpu"]


@pytest.mark.slow
def test_sigkill_mid_training_then_same_command_resumes_to_identical_results(tmp_path):
    import torch

    teachers = tmp_path / "teachers"
    ref = _cli(_kill_cmd(tmp_path / "ref", teachers, tmp_path / "out_ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    (ref_path,) = _records(tmp_path / "ref")
    want = read_record(ref_path)

    results = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kdbench.train", *_kill_cmd(results, teachers, tmp_path / "out_k")]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[tuple[int, int]] = set()
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline:
            lasts = list((results / "checkpoints").rglob("last.ckpt"))
            if lasts:
                try:
                    st = lasts[0].stat()
                    seen.add((st.st_ino, st.st_mtime_ns))
                except FileNotFoundError:
                    pass
                if len(seen) >= 2:  # the checkpoints of epochs 0 and 1 have been written
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and len(seen) < 2:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    (last,) = list((results / "checkpoints").rglob("last.ckpt"))
    at_kill = torch.load(last, map_location="cpu", weights_only=True)
    assert 1 <= at_kill["epoch"] < KILL_EPOCHS - 1, at_kill["epoch"]
    (rec_path,) = _records(results)
    assert read_record(rec_path)["status"] == "running"  # SIGKILL: nothing could write the final record

    again = _cli(_kill_cmd(results, teachers, tmp_path / "out_k2"))
    assert again.returncode == 0, again.stderr[-3000:]
    got = read_record(rec_path)
    assert got["status"] == "complete" and got["resumed_from"] == str(last)
    assert want["resumed_from"] is None and got["run_id"] == want["run_id"]
    assert got["history"] == want["history"] and len(got["history"]) == KILL_EPOCHS
    assert got["metrics"] == want["metrics"]
    assert got["reliability"] == want["reliability"]


def test_rerun_skips_a_complete_record_and_redoes_failed_ones(compose, tmp_path):
    from kdbench.config import resolve
    from kdbench.identity import run_id_of
    from kdbench.records import write_record
    from kdbench.train import run

    cfg = compose("distill=none", "trainer.max_epochs=1", "trainer.deterministic=false")
    rid = run_id_of(resolve(cfg))
    path = Path(cfg.paths.runs_dir) / cfg.experiment_name / f"{rid}.json"

    planted = {"last": {"test": {"acc": 0.5}}, "best": {"test": {"acc": 0.5}}, "planted": True}
    write_record(path, {"run_id": rid, "status": "complete", "metrics": planted})
    before = path.read_bytes()
    assert run(cfg)["metrics"] == planted  # returned as it was: no work done
    assert path.read_bytes() == before and not (tmp_path / "results" / "checkpoints").exists()

    write_record(path, {"run_id": rid, "status": "failed", "error": "boom"})
    rec = run(cfg)
    assert rec["status"] == "complete" and rec["error"] is None and "planted" not in rec["metrics"]
    assert read_record(path)["status"] == "complete" and rec["resumed_from"] is None
    assert rec["deterministic"] is False  # recorded as it was set
    first = rec["metrics"]

    # killed (left "running") or a record cut short: not complete, so run again; the finished
    # checkpoint is there, so the re-run resumes at the end and only re-tests
    for planted in ('{"run_id": "x", "status": "running"}', '{"run_id'):
        path.write_text(planted)
        rec = run(cfg)
        assert rec["status"] == "complete" and rec["resumed_from"] and rec["metrics"] == first


def test_last_checkpoint_is_written_every_epoch_and_an_unreadable_one_is_set_aside(compose, tmp_path, caplog):
    """last.ckpt must be the latest epoch even when validation accuracy does not improve (lr=0)."""
    import torch

    from kdbench.config import resolve
    from kdbench.identity import run_id_of
    from kdbench.train import run

    cfg = compose("distill=none", "trainer.max_epochs=2", "optim.lr=0.0", "experiment_name=lastckpt")
    rec = run(cfg)
    ckdir = tmp_path / "results" / "checkpoints" / "lastckpt" / run_id_of(resolve(cfg))
    last = torch.load(ckdir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and len(last["kdbench_history"]) == 2 == len(rec["history"])
    assert "kdbench_rng" in last
    assert not list(ckdir.glob(".*.tmp"))  # atomic writes leave no temporaries

    # force=true trains again from the start: it does not "resume" from the finished run's last.ckpt
    forced = run(compose("distill=none", "trainer.max_epochs=2", "optim.lr=0.0", "experiment_name=lastckpt",
                         "force=true"))
    assert forced["status"] == "complete" and forced["resumed_from"] is None
    assert forced["metrics"] == rec["metrics"]  # deterministic on CPU: the retrained run matches

    # a truncated last.ckpt (e.g. a copy cut short) does not wedge the run id: set aside, start over
    from kdbench.records import read_record, write_record

    rec_path = tmp_path / "results" / "runs" / "lastckpt" / f"{run_id_of(resolve(cfg))}.json"
    write_record(rec_path, {**read_record(rec_path), "status": "running"})  # as a killed run leaves it
    data = (ckdir / "last.ckpt").read_bytes()
    (ckdir / "last.ckpt").write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING", logger="kdbench"):
        again = run(compose("distill=none", "trainer.max_epochs=2", "optim.lr=0.0", "experiment_name=lastckpt"))
    assert again["status"] == "complete" and again["resumed_from"] is None
    assert (ckdir / "last.ckpt.unreadable").exists() and "cannot resume" in caplog.text
    assert again["metrics"] == rec["metrics"]

    # a truncated best.ckpt likewise: the resumed run could not test the best epoch, so it starts over
    # (before, every re-run of the run id failed reading it)
    write_record(rec_path, {**read_record(rec_path), "status": "running"})
    data = (ckdir / "best.ckpt").read_bytes()
    (ckdir / "best.ckpt").write_bytes(data[: len(data) // 3])
    best_again = run(compose("distill=none", "trainer.max_epochs=2", "optim.lr=0.0", "experiment_name=lastckpt"))
    assert best_again["status"] == "complete" and best_again["resumed_from"] is None
    assert (ckdir / "best.ckpt.unreadable").exists()
    assert best_again["metrics"] == rec["metrics"]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: code run by a checkpoint file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_planted_as_best_ckpt_does_not_run(compose, tmp_path):
    """Every checkpoint kdbench reads, its own included, is read with weights_only=True."""
    import torch

    from kdbench.config import resolve
    from kdbench.identity import run_id_of
    from kdbench.records import read_record, write_record
    from kdbench.train import run

    args = ("distill=none", "trainer.max_epochs=2", "experiment_name=planted")
    cfg = compose(*args)
    rec = run(cfg)
    rid = run_id_of(resolve(cfg))
    ckdir = tmp_path / "results" / "checkpoints" / "planted" / rid
    marker = tmp_path / "payload-ran"
    torch.save({"state_dict": _Payload(marker)}, ckdir / "best.ckpt")
    rec_path = tmp_path / "results" / "runs" / "planted" / f"{rid}.json"
    write_record(rec_path, {**read_record(rec_path), "status": "running"})
    again = run(compose(*args))
    assert not marker.exists()
    assert again["status"] == "complete" and again["metrics"] == rec["metrics"]
    forced = run(compose(*args, "force=true"))  # the path that tests the best checkpoint after a fresh fit
    assert not marker.exists() and forced["status"] == "complete"


# =============================================================================================
# 2. parallel writers
# =============================================================================================

N_PROCS = 8


@pytest.fixture(scope="module")
def pool():
    """8 worker processes (forkserver: one torch import, then forks that share no state with pytest)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "safetensors.torch", "filelock"])
    with ProcessPoolExecutor(max_workers=N_PROCS, mp_context=ctx) as ex:
        yield ex


def _wait_until(t: float) -> None:
    while time.time() < t:
        time.sleep(0.002)


def _tiny_build():
    from kdbench.models import build_model

    return build_model("mlp", 10, (1, 8, 8), hidden=[16])


def _tiny_train(model, marker: str):
    """A real (if short) training function: it writes weights; it also logs that it ran."""
    import torch

    t0 = time.time()
    time.sleep(0.4)  # long enough that every other process arrives while it trains
    with open(marker, "a") as f:
        f.write(f"trained by {os.getpid()} from {t0!r} to {time.time()!r}\n")
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return {"acc": 0.5}


def _register_teacher(entry: str, marker: str, barrier):
    from functools import partial

    from kdbench.teachers import get_or_train

    barrier.wait(timeout=120)  # every worker is up: they ask for the entry together
    asked_at = time.time()
    model, meta, trained = get_or_train(Path(entry), _tiny_build, "mlp", 10, partial(_tiny_train, marker=marker),
                                        {"seed": 0}, log=lambda m: None)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.numpy().tobytes())
    return trained, h.hexdigest(), meta["test"], asked_at


def test_parallel_registration_trains_the_teacher_once(pool, tmp_path):
    entry, marker = tmp_path / "teachers" / "digits-mlp-s0-abc", tmp_path / "trainings.log"
    with mp.get_context("forkserver").Manager() as manager:
        barrier = manager.Barrier(N_PROCS)
        outs = list(pool.map(_register_teacher, [str(entry)] * N_PROCS, [str(marker)] * N_PROCS,
                             [barrier] * N_PROCS))
    (line,) = marker.read_text().splitlines()  # trained once
    trained_until = float(line.split(" to ")[1])
    # the workers overlapped: each asked while the one training held the lock (not one after another)
    assert max(asked_at for *_, asked_at in outs) < trained_until
    assert sum(trained for trained, *_ in outs) == 1
    assert len({digest for _, digest, *_ in outs}) == 1 and all(m == {"acc": 0.5} for _, _, m, _ in outs)
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "model.safetensors"]


def _write_one_record(runs: str, i: int, start_at: float) -> None:
    from kdbench.records import write_record

    _wait_until(start_at)
    rec = {"run_id": f"run-{i}", "experiment": "par", "status": "complete",
           "history": [{"epoch": e, "val_acc": i + e / 100} for e in range(2000)]}
    write_record(Path(runs) / "par" / f"run-{i}.json", rec)


def test_parallel_record_writes_all_land_intact(pool, tmp_path):
    from kdbench.records import iter_records

    runs = tmp_path / "runs"
    start = time.time() + 0.5
    list(pool.map(_write_one_record, [str(runs)] * N_PROCS, range(N_PROCS), [start] * N_PROCS))
    recs = dict((r["run_id"], r) for _, r in iter_records(runs))
    assert sorted(recs) == sorted(f"run-{i}" for i in range(N_PROCS))
    for i in range(N_PROCS):
        assert len(recs[f"run-{i}"]["history"]) == 2000 and recs[f"run-{i}"]["history"][-1]["val_acc"] == i + 19.99
    assert sorted(p.name for p in (runs / "par").iterdir()) == sorted(f"run-{i}.json" for i in range(N_PROCS))


def _hammer(path: str, i: int, start_at: float, n: int) -> None:
    from kdbench.records import atomic_write_text

    _wait_until(start_at)
    for k in range(n):
        body = "x" * (50_000 + 9973 * ((i * n + k) % 17))  # sizes differ: a torn write would show
        atomic_write_text(path, json.dumps({"writer": i, "k": k, "len": len(body), "body": body}))


def test_concurrent_atomic_writes_to_one_path_are_never_partial(pool, tmp_path):
    path = tmp_path / "shared.json"
    start = time.time() + 0.5
    futs = [pool.submit(_hammer, str(path), i, start, 40) for i in range(N_PROCS)]
    reads = 0
    while not all(f.done() for f in futs):
        if path.exists():
            doc = json.loads(path.read_text())  # never a partial file
            assert len(doc["body"]) == doc["len"]
            reads += 1
    for f in futs:
        f.result()
    doc = json.loads(path.read_text())
    assert len(doc["body"]) == doc["len"] and reads > 0
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temporaries left behind


# =============================================================================================
# 3. numerical faults
# =============================================================================================


def _inject_nonfinite(monkeypatch, at_step: int, value: float):
    """Make the student's logits non-finite at training step ``at_step`` (0-based, counting every step)."""
    from kdbench.models.mlp import MLP

    orig = MLP.forward
    calls = {"n": 0}

    def forward(self, x, return_features=False):
        out = orig(self, x, return_features)
        if self.training:
            if calls["n"] == at_step:
                out = out.clone()
                out[0, 0] = value
            calls["n"] += 1
        return out

    monkeypatch.setattr(MLP, "forward", forward)


@pytest.mark.parametrize("value, check_every", [(float("nan"), "auto"), (float("inf"), 1000)])
def test_nonfinite_logits_stop_the_run_naming_the_step(compose, tmp_path, monkeypatch, value, check_every):
    from kdbench.train import run

    # digits: 1145 training examples, 18 steps per epoch at batch size 64; step 21 is in epoch 1
    _inject_nonfinite(monkeypatch, 21, value)
    cfg = compose("distill=none", "trainer.max_epochs=3", f"trainer.check_finite_every={check_every}")
    with pytest.raises(DivergedError) as e:
        run(cfg)
    assert e.value.step == 21 and "diverged at step 21" in str(e.value)
    (path,) = _records(tmp_path / "results")
    rec = read_record(path)
    assert rec["status"] == "diverged" and rec["diverged_step"] == 21 and "step 21" in rec["error"]
    # epoch 0 finished; epoch 1 is not in the history, also when the host check is deferred
    # (check_finite_every=1000): the flag is checked before validation and before any checkpoint
    assert [h["epoch"] for h in rec["history"]] == [0]
    import torch

    (last,) = (tmp_path / "results" / "checkpoints").rglob("last.ckpt")
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["state_dict"].values())


def test_cli_divergence_is_one_line_and_exit_3(tmp_path):
    p = _cli([f"paths.results_dir={tmp_path / 'r'}", f"hydra.run.dir={tmp_path / 'out'}", "logger=none",
              "distill=none", "optim.lr=1e6", "trainer.max_epochs=1", "trainer.progress=false"])
    assert p.returncode == 3, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("kdbench: error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr
    m = re.match(r"kdbench: error: training diverged at step (\d+): .* not finite; record status 'diverged'$",
                 lines[0])
    assert m, lines[0]
    (path,) = _records(tmp_path / "r")
    rec = read_record(path)
    assert rec["status"] == "diverged" and rec["diverged_step"] == int(m.group(1))


# =============================================================================================
# 4. determinism
# =============================================================================================


def test_same_config_and_seed_give_bit_identical_results(compose, tmp_path):
    """Two full runs (teacher training included) into two results dirs, with W&B offline on."""
    from kdbench.train import run

    recs = [run(compose(*TINY, "logger=wandb", "force=true", results=tmp_path / name)) for name in ("a", "b")]
    a, b = recs
    assert a["run_id"] == b["run_id"] and a["status"] == b["status"] == "complete"
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["reliability"] == b["reliability"] and a["teacher"]["test"] == b["teacher"]["test"]
    assert a["deterministic"] is True and b["deterministic"] is True
    ta = (Path(a["teacher"]["path"]) / "model.safetensors").read_bytes()
    assert ta == (Path(b["teacher"]["path"]) / "model.safetensors").read_bytes()
    # each run has its own W&B run (the first must have been finished, not reused)
    assert a["wandb_dir"] and b["wandb_dir"] and a["wandb_dir"] != b["wandb_dir"]
    assert str(tmp_path / "a") in a["wandb_dir"] and str(tmp_path / "b") in b["wandb_dir"]


# =============================================================================================
# 5. several devices
# =============================================================================================


def test_train_loader_shards_like_distributed_sampler():
    import math

    import torch

    from kdbench.data import TensorLoader

    n, bs, world = 103, 8, 2
    x, y = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)
    single = TensorLoader(x, y, bs * world, shuffle=True, seed=3)
    single.set_epoch(4)
    shards = []
    for r in range(world):
        ld = TensorLoader(x, y, bs, shuffle=True, seed=3)
        ld.set_shard(r, world)
        ld.set_epoch(4)
        assert len(ld) == math.ceil(math.ceil(n / world) / bs)
        shards.append([b.idx for b in ld])
    assert len(shards[0]) == len(shards[1]) == len(single)
    everything = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert len(everything) == world * math.ceil(n / world) and set(everything) == set(range(n))  # one pad
    # step b of all ranks together covers step b of one process with world x the batch size
    for b, idx in enumerate(bt.idx for bt in single):
        union = torch.cat([shards[r][b] for r in range(world)]).tolist()
        if b < len(single) - 1:
            assert sorted(union) == sorted(idx.tolist())
        else:  # the last step also holds the padding
            assert set(idx.tolist()) <= set(union) and len(union) - len(idx) == world * math.ceil(n / world) - n
    with pytest.raises(ValueError):
        TensorLoader(x, y, bs).set_shard(2, 2)


@pytest.mark.slow
def test_two_process_ddp_spawn_matches_single_process(compose, tmp_path):
    """trainer.devices=2 trainer.strategy=ddp_spawn on CPU (gloo), through the CLI; per-device batch 32 x 2
    processes against one process with batch 64: the same examples per step, so near-identical results."""
    from kdbench.train import run

    common = ["trainer.max_epochs=4", "teacher.recipe.epochs=2", "teacher.kwargs.hidden=[64]", "trainer.accelerator=cpu",
              f"paths.teachers_dir={tmp_path / 'teachers'}", "logger=none", "trainer.progress=false"]
    one = run(compose(*common, results=tmp_path / "one"))
    p = _cli([*common, f"paths.results_dir={tmp_path / 'two'}", f"hydra.run.dir={tmp_path / 'out'}",
              "trainer.devices=2", "trainer.strategy=ddp_spawn", "dataset.batch_size=32"], timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    (path,) = _records(tmp_path / "two")
    two = read_record(path)
    assert two["status"] == "complete" and two["config"]["trainer"]["devices"] == 2
    assert two["teacher"]["key"] == one["teacher"]["key"]  # reused, not retrained
    assert [h["epoch"] for h in two["history"]] == [0, 1, 2, 3] and two["metrics"]["last"]["epoch"] == 3
    for which in ("last", "best"):
        assert abs(two["metrics"][which]["test"]["acc"] - one["metrics"][which]["test"]["acc"]) <= 0.02
    for h1, h2 in zip(one["history"], two["history"]):
        assert abs(h1["val_acc"] - h2["val_acc"]) <= 0.02 and h1["lr"] == pytest.approx(h2["lr"])
        assert abs(h1["train_loss"] - h2["train_loss"]) <= 0.05 * abs(h1["train_loss"]) + 1e-3
    assert sum(two["reliability"]["last"]["count"]) == sum(one["reliability"]["last"]["count"])  # whole test set
    # each rank iterated half of every epoch: 2 x 32 per step gives as many steps as 1 x 64
    import torch

    steps = [torch.load(next((tmp_path / d / "checkpoints" / "default").rglob("last.ckpt")), map_location="cpu",
                        weights_only=True)["global_step"] for d in ("one", "two")]
    assert steps[0] == steps[1] == 4 * 18  # digits: 1145 training examples, 18 batches of 64 per epoch


@pytest.mark.slow
def test_divergence_in_a_ddp_child_is_reported_as_diverged(compose, tmp_path):
    from kdbench.train import run

    cfg = compose("distill=none", "optim.lr=1e6", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                  "trainer.devices=2", "trainer.strategy=ddp_spawn", "dataset.batch_size=32")
    with pytest.raises(DivergedError) as e:
        run(cfg)
    (path,) = _records(tmp_path / "results")
    rec = read_record(path)
    assert rec["status"] == "diverged" and rec["diverged_step"] == e.value.step >= 0


# =============================================================================================
# 6. secrets
# =============================================================================================


WANDB_SHAPED = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters: a classic W&B API key


@pytest.mark.parametrize("key, value", [
    ("logger.wandb.api_key", FAKE_CFG_KEY),
    ("logger.wandb.key", FAKE_CFG_KEY),  # the name wandb.login() uses
    ("logger.wandb.password", FAKE_CFG_KEY),
    ("logger.wandb.notes", WANDB_SHAPED),  # any key: the value is shaped like a W&B key
])
def test_secret_in_the_config_is_rejected_and_not_left_in_hydra_files(tmp_path, key, value, monkeypatch, capsys):
    """In-process (the entry point's main, Hydra and its files included); exit 2 through a subprocess is
    tests/test_train.py's."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_ENV_KEY)
    out = tmp_path / "out"
    rc = train_main([f"paths.results_dir={tmp_path / 'r'}", f"hydra.run.dir={out}", "logger=wandb",
                     f"+{key}={value}"])
    stdout, stderr = capsys.readouterr()
    assert rc == 2, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("kdbench: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith(f"kdbench: error: {key}: looks like a credential")
    assert "environment" in lines[0]
    assert (out / ".hydra" / "overrides.yaml").exists()  # Hydra saved it, the job scrubbed it
    for secret in (value, FAKE_ENV_KEY):
        assert secret not in stdout + stderr
        assert _files_containing(tmp_path, secret) == []
    assert not (tmp_path / "r" / "runs").exists()


def test_env_key_never_lands_in_records_logs_or_wandb_files(compose, tmp_path, monkeypatch):
    from kdbench.credentials import redact
    from kdbench.train import run

    monkeypatch.setenv("WANDB_API_KEY", FAKE_ENV_KEY)
    rec = run(compose("distill=none", "trainer.max_epochs=1", "logger=wandb", "logger.wandb.mode=offline"))
    assert rec["status"] == "complete" and rec["wandb_dir"]
    wandb_run = Path(rec["wandb_dir"]).parent
    # offline, W&B keeps the config, the metadata (command line, host...) and the history in run-*.wandb
    # wandb.finish() hands the last records to the W&B service, which writes the offline stream
    # asynchronously (a busy machine showed a header-only file right after finish()); tearing the
    # service down, as the process exit does, flushes it.
    import wandb

    wandb.teardown()
    (stream,) = wandb_run.glob("run-*.wandb")
    data = stream.read_bytes()
    assert b"val/acc" in data, (len(data), data[-300:])
    assert b'"project":"kdbench"' in data, (len(data), data[:600])
    assert list((wandb_run / "logs").glob("*.log"))
    assert _files_containing(tmp_path, FAKE_ENV_KEY) == []
    # redaction of credential-like keys in what records and W&B configs carry
    assert redact({"a": {"api_key": "x", "my_token": 1, "ok": [{"password": "y"}]}}) == \
           {"a": {"api_key": "<redacted>", "my_token": "<redacted>", "ok": [{"password": "<redacted>"}]}}


# =============================================================================================
# 7. bad input table (see docs/errors.md); cases already in test_train.py are not repeated here
# =============================================================================================


def _idx(path: Path, dims: list[int], payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nd = len(dims)
    header = bytes([0, 0, 0x08, nd]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + payload)


def _tiny_mnist(root: Path, labels: list[int], truncate: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    n = len(labels)
    for split in ("train", "t10k"):
        images = bytes(range(256)) * ((n * 784) // 256 + 1)
        _idx(raw / f"{split}-images-idx3-ubyte", [n, 28, 28], images[: n * 784])
        _idx(raw / f"{split}-labels-idx1-ubyte", [n], bytes(labels))
    if truncate:
        f = raw / "train-images-idx3-ubyte"
        f.write_bytes(f.read_bytes()[:-100])
    return root


def _entry(tmp_path: Path, arch: str = "mlp", num_classes: int = 10, kwargs: dict | None = None,
           corrupt: str | None = None) -> Path:
    from kdbench.models import build_model
    from kdbench.teachers import save_entry

    kwargs = {"hidden": [256, 256], "dropout": 0.2} if kwargs is None else kwargs
    entry = tmp_path / "imported" / f"teacher-{arch}-{num_classes}-{corrupt}"
    model = build_model(arch, num_classes, (1, 8, 8), **kwargs)
    save_entry(entry, model, {"arch": arch, "num_classes": num_classes, "test": {}})
    if corrupt == "weights":
        w = entry / "model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
    elif corrupt == "meta":
        (entry / "meta.json").write_text("{not json")
    return entry


def _imagefolder(tmp_path: Path, empty: bool) -> Path:
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
    if not empty:
        (root / "train" / "dog").mkdir()  # a class folder with no images
        from PIL import Image

        for split in ("train", "test"):
            Image.new("RGB", (8, 8)).save(root / split / "cat" / "a.png")
    return root


#: id -> (overrides given tmp_path, expected exception type, expected key, fragment of the message)
BAD = {
    # config
    "alpha-not-a-number": (lambda t: ["distill.alpha=abc"], ConfigError, "distill.alpha", "must be a number"),
    "tau-negative": (lambda t: ["distill.tau=-4"], ConfigError, "distill.tau", "must be > 0"),
    "kl-reduction-unknown": (lambda t: ["distill.kl_reduction=median"], ConfigError, "distill.kl_reduction",
                             "unknown value 'median'"),
    "dataset-unknown": (lambda t: ["dataset.name=imagenet"], ConfigError, "dataset.name", "unknown dataset"),
    "teacher-arch-unknown": (lambda t: ["teacher.arch=resnet9000"], ConfigError, "teacher.arch", "unknown model"),
    "teacher-classes-mismatch": (lambda t: ["teacher.num_classes=3"], ConfigError, "teacher.num_classes",
                                 "has 10 classes"),
    "oracle-teacher-not-synthetic": (lambda t: ["teacher=oracle"], ConfigError, "teacher.arch", "synthetic"),
    "eval-batch-negative": (lambda t: ["dataset.eval_batch_size=-5"], ConfigError, "dataset.eval_batch_size",
                            "positive integer"),
    "teacher-epochs-zero": (lambda t: ["teacher.recipe.epochs=0"], ConfigError, "teacher.recipe.epochs",
                            "positive integer"),
    "val-size-negative": (lambda t: ["dataset.val_size=-1"], ConfigError, "dataset.val_size", ">= 0"),
    "val-size-too-large": (lambda t: ["dataset.val_size=5000"], ConfigError, "dataset.val_size",
                           "leaves no training data"),
    "train-subset-zero": (lambda t: ["dataset.train_subset=0"], ConfigError, "dataset.train_subset",
                          "positive integer"),
    "optimizer-unknown": (lambda t: ["optim.name=adam"], ConfigError, "optim.name", "allowed: sgd, adamw"),
    "lr-negative": (lambda t: ["optim.lr=-0.1"], ConfigError, "optim.lr", ">= 0"),
    "milestones-negative": (lambda t: ["sched=multistep", "sched.milestones=[-1]"], ConfigError,
                            "sched.milestones", "non-negative epochs"),
    "seed-not-int": (lambda t: ["seed=abc"], ConfigError, "seed", "must be an integer"),
    # issue 16: values that passed validation and then crashed (or recorded what did not happen)
    "seed-negative": (lambda t: ["seed=-1"], ConfigError, "seed", "[0, 2**32 - 1]"),
    "seed-huge": (lambda t: ["seed=10000000000000"], ConfigError, "seed", "[0, 2**32 - 1]"),
    "tau-inf": (lambda t: ["distill.tau=inf"], ConfigError, "distill.tau", "finite"),
    "momentum-not-a-number": (lambda t: ["optim.momentum=abc"], ConfigError, "optim.momentum", "must be a number"),
    "weight-decay-negative": (lambda t: ["optim.weight_decay=-1"], ConfigError, "optim.weight_decay", ">= 0"),
    "accelerator-unknown": (lambda t: ["trainer.accelerator=tpu"], ConfigError, "trainer.accelerator",
                            "allowed: auto, cpu, gpu, cuda"),
    "check-finite-not-int": (lambda t: ["trainer.check_finite_every=abc"], ConfigError,
                             "trainer.check_finite_every", "positive integer"),
    "val-size-fraction-over-one": (lambda t: ["dataset.val_size=1.5"], ConfigError, "dataset.val_size",
                                   "fraction in (0, 1)"),
    "limit-train-batches-zero": (lambda t: ["trainer.limit_train_batches=0"], ConfigError,
                                 "trainer.limit_train_batches", "never trained"),
    "experiment-name-escapes": (lambda t: ["experiment_name=../../escaped"], ConfigError, "experiment_name",
                                "plain name"),
    "variant-escapes": (lambda t: ["distill.variant=../x"], ConfigError, "distill.variant", "plain name"),
    "precision-unknown": (lambda t: ["trainer.precision=8-bit"], ConfigError, "trainer.precision", "unknown value"),
    "wandb-mode-unknown": (lambda t: ["logger=wandb", "logger.wandb.mode=sometimes"], ConfigError,
                           "logger.wandb.mode", "offline, online, disabled"),
    "devices-zero": (lambda t: ["trainer.devices=0"], ConfigError, "trainer.devices", "positive integer"),
    "multi-device-plain-ddp": (lambda t: ["trainer.devices=2", "trainer.strategy=ddp"], ConfigError,
                               "trainer.strategy", "ddp_spawn only"),
    "secret-in-config": (lambda t: [f"+logger.wandb.api_key={FAKE_CFG_KEY}"], ConfigError, "logger.wandb.api_key",
                         "set them in the environment"),
    # data
    "mnist-truncated": (lambda t: ["dataset=mnist", f"dataset.root={_tiny_mnist(t / 'm', [1] * 20, True)}"],
                        DataError, "dataset.root", "truncated"),
    "labels-out-of-range": (lambda t: ["dataset=mnist", f"dataset.root={_tiny_mnist(t / 'm', [3] * 19 + [12])}",
                                       "dataset.val_size=0"], DataError, "dataset", "out of range [0, 10)"),
    "imagefolder-empty": (lambda t: ["dataset=imagefolder", f"dataset.root={_imagefolder(t, empty=True)}"],
                          DataError, "dataset.root", "no images found"),
    "imagefolder-empty-class": (lambda t: ["dataset=imagefolder", f"dataset.root={_imagefolder(t, empty=False)}"],
                                DataError, "dataset.root", "without images"),
    "imagefolder-missing": (lambda t: ["dataset=imagefolder", f"dataset.root={t / 'nowhere'}"], DataError,
                            "dataset.root", "does not exist"),
    # teachers
    "teacher-entry-missing": (lambda t: [f"teacher.checkpoint={t / 'no_such_entry'}"], TeacherError,
                              "teacher.checkpoint", "no registry entry"),
    "teacher-entry-other-arch": (lambda t: [f"teacher.checkpoint={_entry(t, 'linear', kwargs={})}"], TeacherError,
                                 "teacher.arch", "is a 'linear'"),
    "teacher-entry-other-shape": (lambda t: [f"teacher.checkpoint={_entry(t, kwargs={'hidden': [8]})}"],
                                  TeacherError, "teacher.arch", "does not fit architecture"),
    "teacher-entry-other-classes": (lambda t: [f"teacher.checkpoint={_entry(t, num_classes=5)}"], TeacherError,
                                    "teacher", "has 5 classes"),
    "teacher-weights-truncated": (lambda t: [f"teacher.checkpoint={_entry(t, corrupt='weights')}"], TeacherError,
                                  "teacher.checkpoint", "corrupted teacher weights"),
    "teacher-meta-corrupted": (lambda t: [f"teacher.checkpoint={_entry(t, corrupt='meta')}"], TeacherError,
                               "teacher.checkpoint", "unreadable teacher metadata"),
    # environment
    "results-under-a-file": (lambda t: [f"paths.results_dir={_file(t)}/results"], ConfigError, "paths.results_dir",
                             "is not writable"),
}


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_table(compose, tmp_path, case):
    from kdbench.train import run

    make, exc, key, fragment = BAD[case]
    overrides = make(tmp_path)
    results = tmp_path / "results"
    if any(o.startswith("paths.results_dir=") for o in overrides):
        results = Path(next(o for o in overrides if o.startswith("paths.results_dir=")).split("=", 1)[1])
    with pytest.raises(KDBenchError) as e:
        run(compose("trainer.max_epochs=1", "teacher.recipe.epochs=1", *overrides, results=results))
    assert type(e.value) is exc, repr(e.value)
    assert e.value.key == key and fragment in e.value.message, str(e.value)
    assert "\n" not in str(e.value) and FAKE_CFG_KEY not in str(e.value)
    assert _records(results) == [] and not (results / "runs").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_results_dir_is_rejected(compose, tmp_path):
    from kdbench.train import run

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError) as e:
            run(compose("trainer.max_epochs=1", results=ro / "results"))
        assert e.value.key == "paths.results_dir"
    finally:
        ro.chmod(0o755)


def test_sweep_plan_rejects_empty_and_bad_grids():
    from kdbench.sweep import plan

    with pytest.raises(ConfigError) as e:
        plan(["experiment=quickstart", "seed=range(0,0)"])
    assert e.value.key == "hydra.sweeper.params" and "no jobs" in e.value.message
    with pytest.raises(ConfigError) as e:
        plan(["experiment=quickstart", "distill.tau=4,0"])
    assert e.value.key == "distill.tau" and "(job 1:" in e.value.message
    with pytest.raises(ConfigError) as e:
        plan(["experiment=quickstart", "seed=1,1"])
    assert e.value.key == "hydra.sweeper.params" and "repeats a point" in e.value.message


def test_teacher_import_refuses_payload_and_truncation(tmp_path):
    import torch

    from kdbench.teachers import import_published

    marker = tmp_path / "payload_ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": Exploit()}, evil)
    good = tmp_path / "good.pth"
    from kdbench.models import build_model

    torch.save({"model": build_model("mlp", 10, (1, 8, 8), hidden=[8]).state_dict()}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:300])
    for path, fragment in ((evil, "could run arbitrary code"), (trunc, "truncated or corrupted")):
        with pytest.raises(TeacherError) as e:
            import_published(path, "mlp", {"name": "digits"}, tmp_path / "teachers", evaluate=False,
                             log=lambda m: None)
        assert e.value.key == "PATH" and fragment in e.value.message and "\n" not in str(e.value)
    assert not marker.exists() and not (tmp_path / "teachers").exists()


def test_wandb_online_without_credentials_falls_back_to_offline(compose, tmp_path, monkeypatch):
    from kdbench.train import run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = run(compose("distill=none", "trainer.max_epochs=1", "logger=wandb", "logger.wandb.mode=online"))
    assert any("logging offline instead" in str(w.message) for w in caught)
    assert rec["status"] == "complete" and "offline-run-" in rec["wandb_dir"]
