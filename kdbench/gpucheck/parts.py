"""The parts of ``make gpu-check``, each run in a process of its own by :mod:`kdbench.gpucheck.main`:
``python -m kdbench.gpucheck.parts NAME WORK DEADLINE``. A part writes ``WORK/parts/NAME.json`` after every
step, so whatever stops it (a failure, its budget), what it finished is kept; every command it starts runs
in a session of its own, listed in ``WORK/children/`` (the orchestrator ends any a stopped part leaves)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdbench.files import atomic_write_text
from kdbench.gpucheck.plan import Plan

#: what makes a failure a dtype / device (or compiler) error, read from its last error line
DTYPE_DEVICE = re.compile(r"dtype|bfloat16|float16|half\b|scalar type|same device|device-side|cuda|cudnn|cublas|"
                          r"on device|memory format|channels.last|out of memory", re.IGNORECASE)
COMPILER = re.compile(r"inductor|dynamo|triton|torch\._|compile", re.IGNORECASE)
ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b.*|^kdbench[\w -]*: error: .*|^E\s+\w+Error.*")
RECORD = re.compile(r"record: (\S+\.json)")
RESUMING = re.compile(r"kdbench: resuming (\S+) from epoch (\d+) of (\d+)")
TEACHER_ACC = re.compile(r"kdbench: teacher (\S+) ready at \S+(?: \(test acc ([\d.]+)%\))?")
GRACE_S = 10.0


def error_of(text: str) -> tuple[str, str]:
    """(the failure's last error line, its kind: ``dtype/device``, ``compiler`` or ``error``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if ERROR_LINE.match(ln)]
    line = (hits or lines or ["(no output)"])[-1][:300]
    kind = "dtype/device" if DTYPE_DEVICE.search(line) else "compiler" if COMPILER.search(line) else "error"
    return line, kind


class Part:
    """One part's result, saved after every change; the commands it runs, each in its own session."""

    def __init__(self, name: str, plan: Plan, deadline: float):
        self.name, self.plan, self.deadline = name, plan, deadline
        self.work = Path(plan.work)
        (self.work / "parts").mkdir(exist_ok=True)
        (self.work / "children").mkdir(exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.result: dict = {"part": name, "status": "running", "started": time.time(), "items": []}
        self.lock = threading.Lock()
        self.children: dict[int, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.py = sys.executable

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        with self.lock:
            self.result["seconds"] = time.time() - self.result["started"]
            atomic_write_text(self.work / "parts" / f"{self.name}.json", json.dumps(self.result, indent=1) + "\n")

    def echo(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        """``cmd`` in a session of its own (so that it, and whatever it starts, can be ended together)."""
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
                                    cwd=Path(__file__).resolve().parents[2])
        with self.lock:
            self.children[proc.pid] = proc
        (self.work / "children" / str(proc.pid)).write_text(" ".join(cmd) + "\n")
        return proc

    def end(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.children.pop(proc.pid, None)
        (self.work / "children" / str(proc.pid)).unlink(missing_ok=True)

    def wait(self, proc: subprocess.Popen, timeout: float) -> int | None:
        """The exit code, or None when ``timeout`` ran out first (then it was stopped: SIGTERM, then SIGKILL)."""
        try:
            return proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            self.end(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                self.end(proc)
                proc.wait()
            return None
        finally:
            self.end(proc)  # what it left running in its session
            self.reap(proc)

    def command(self, label: str, cmd: list[str]) -> dict:
        """Run ``cmd`` to its end (or the part's deadline); its output goes to the log as one block."""
        log = self.work / "logs" / f"{self.name}-{label}.log"
        t = time.time()
        rc = self.wait(self.start(cmd, log), self.left())
        text = log.read_text(errors="replace")
        self.echo(f"\n---- {self.name}: {label}: {' '.join(cmd)}\n{text.rstrip()}\n---- "
                  f"{label}: {'exit ' + str(rc) if rc is not None else 'TIMED OUT'} after {time.time() - t:.1f} s")
        return {"rc": rc, "text": text, "seconds": time.time() - t}

    def stop_children(self, *_args) -> None:
        """SIGTERM from the orchestrator (the budget ran out): end every command, keep the result, exit."""
        for proc in list(self.children.values()):
            self.end(proc)
        self.result["status"] = "TIMED OUT"
        self.save()
        os._exit(143)


def read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def record_of(text: str) -> dict:
    m = RECORD.findall(text)
    return read_json(m[-1]) if m else {}


def settle(item: dict, out: dict) -> None:
    """An item's status from its command's outcome (``ok``, ``FAILED`` with the error and its kind, ``TIMED OUT``)."""
    item["seconds"] = round(item.get("seconds", 0.0) + out["seconds"], 1)
    if out["rc"] is None:
        item.update(status="TIMED OUT", error="its part's budget ran out", kind="budget")
    elif out["rc"] != 0:
        line, kind = error_of(out["text"])
        item.update(status="FAILED", rc=out["rc"], error=line, kind=kind)
    else:
        item["status"] = "ok"


# ---- (a) the CUDA tests and the smoke runs ----------------------------------------------------------

def smoke_items(plan: Plan, py: str) -> list[dict]:
    """One run per method family on a small slice, on the device; ``after``: the item it needs first."""
    s, w = plan.smoke, Path(plan.work)
    base = ["logger=none", "trainer.progress=false", f"paths.results_dir={w / 'results'}",
            f"paths.data_dir={plan.data_dir}", *plan.trainer]
    cifar = ["experiment=cifar10_jpeg_smoke", f"dataset.root={plan.cifar}", f"dataset.train_subset={s['train_subset']}",
             f"dataset.test_subset={s['test_subset']}", "teacher.arch=resnet20", "student.arch=resnet8",
             "teacher.recipe.epochs=1", "trainer.max_epochs=1", *base]
    train = [py, "-m", "kdbench.train"]
    store = w / "captures" / "smoke-k5"
    tests = [py, "-m", "pytest", "-q", "-p", "kdbench.gpucheck.cuda_tests", "-o", "addopts=-p no:cacheprovider",
             f"--junitxml={w / 'tests.xml'}", *plan.test_files]
    return [
        dict(name="teacher", family="teacher", what="resnet20 teacher trained 1 epoch (the smoke runs' teacher)",
             cmds=[train + cifar + ["teacher_only=true", "experiment_name=smoke_teacher"]]),
        dict(name="cuda-tests", family="tests", what="pytest of the tests that need CUDA", cmds=[tests]),
        dict(name="tokens", family="token", what="KD on the toy LM (markov; 2-layer -> 1-layer Transformer), online",
             cmds=[train + ["experiment=tokens_markov", f"dataset.n_train={s['n_tokens']}", "dataset.val_size=100",
                            "teacher.recipe.epochs=1", "trainer.max_epochs=1", *base, "experiment_name=smoke_tokens"]]),
        dict(name="kd", family="logit", what="KD, online teacher, crop+flip", after="teacher",
             cmds=[train + cifar + ["distill=kd", "experiment_name=smoke_kd"]]),
        dict(name="dkd", family="logit", what="DKD, cached teacher (flip: 2 views)", after="teacher",
             cmds=[train + cifar + ["distill=dkd", "teacher_signal=cached", "dataset.augment=flip",
                                    "experiment_name=smoke_dkd"]]),
        dict(name="topk", family="top-k", what="kdbench capture --k 5, then KD from the store (flip)", after="teacher",
             cmds=[[py, "-m", "kdbench.cli", "capture", "--k", "5", "--out", str(store), *cifar,
                    "dataset.augment=flip"],
                   train + cifar + ["distill=kd", "teacher_signal=captured", f"teacher_capture.path={store}",
                                    "dataset.augment=flip", "experiment_name=smoke_topk"]]),
        dict(name="fitnet", family="feature", what="FitNet (hint stage 2, a trainable regressor), online",
             after="teacher", cmds=[train + cifar + ["distill=fitnet", "experiment_name=smoke_fitnet"]]),
        dict(name="crd", family="feature", what="CRD (embeddings, memory banks), online", after="teacher",
             cmds=[train + cifar + ["distill=crd", "experiment_name=smoke_crd"]]),
    ]


def junit(path: Path) -> dict:
    """Counts and the failed tests of a pytest junit report."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out


def checks(part: Part) -> None:
    items = smoke_items(part.plan, part.py)
    part.result["items"] = [{k: v for k, v in it.items() if k != "cmds"} | {"status": "waiting"} for it in items]
    by_name = {it["name"]: rec for it, rec in zip(items, part.result["items"])}
    part.save()

    def one(it: dict) -> None:
        item = by_name[it["name"]]
        need = it.get("after")
        if need and by_name[need]["status"] != "ok":
            item.update(status="not run", error=f"needs {need}, which did not succeed", kind="skipped")
            part.save()
            return
        if part.left() <= 0.5:
            item.update(status="not run", error="its part's budget ran out before it began", kind="budget")
            part.save()
            return
        item["status"] = "running"
        part.save()
        for i, cmd in enumerate(it["cmds"]):
            out = part.command(f"{it['name']}-{i}" if len(it["cmds"]) > 1 else it["name"], cmd)
            settle(item, out)
            if item["status"] != "ok":
                break
        if item["status"] == "ok":
            if it["family"] == "tests":
                item.update(junit(Path(part.plan.work) / "tests.xml"))
                if not item.get("tests"):
                    item.update(status="FAILED", error="no test needing CUDA was collected", kind="error")
            elif it["family"] == "teacher":
                m = TEACHER_ACC.search(out["text"])
                item["acc"] = float(m.group(2)) / 100 if m and m.group(2) else None
            else:
                rec = record_of(out["text"])
                trainer = (rec.get("config") or {}).get("trainer") or {}
                item.update(acc=((rec.get("metrics") or {}).get("last") or {}).get("test", {}).get("acc"),
                            record_status=rec.get("status"), precision=trainer.get("precision"),
                            compiled=trainer.get("compile"))
                want = ("32-true", False) if part.plan.dry_run else ("bf16-mixed", True)
                if rec.get("status") != "complete":
                    item.update(status="FAILED", error=f"record status {rec.get('status')!r}, not 'complete'",
                                kind="error")
                elif (item["precision"], item["compiled"]) != want:  # the record says what ran
                    item.update(status="FAILED", kind="error", error=f"ran {item['precision']}, compile "
                                f"{item['compiled']}: not the path under check ({want[0]}, compile {want[1]})")
        elif it["family"] == "tests" and item["status"] == "FAILED":
            item.update(junit(Path(part.plan.work) / "tests.xml"))
        part.save()

    with ThreadPoolExecutor(max_workers=max(1, part.plan.jobs)) as pool:
        first = [pool.submit(one, it) for it in items if not it.get("after")]
        first[0].result()  # the teacher, before the runs that need it
        rest = [pool.submit(one, it) for it in items if it.get("after")]
        for f in first + rest:
            f.result()
    bad = [i for i in part.result["items"] if i["status"] != "ok"]
    part.result["status"] = "ok" if not bad else ("TIMED OUT" if any(i.get("kind") == "budget" for i in bad)
                                                  else "FAILED")


# ---- (b) the bench sections ------------------------------------------------------------------------

def bench(part: Part) -> None:
    """``make bench``'s own functions (kdbench.bench), one section (and one harness pair) at a time."""
    import torch

    from kdbench.bench import fused, harness, step
    from kdbench.bench.timing import device_label

    plan, b = part.plan, part.plan.bench
    device = torch.device(plan.device)
    pairs = [tuple(p) for p in b["pairs"]]
    part.result["device"] = device_label(device)
    sections = part.result.setdefault("sections", {})

    def section(key: str, title: str, run) -> None:
        sections[key] = {"title": title, "status": "running", "rows": []}
        part.save()
        t = time.time()
        try:
            run(sections[key])
            sections[key]["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - recorded; the next section goes on
            traceback.print_exc()
            line, kind = error_of(f"{type(e).__name__}: {e}")
            sections[key].update(status="FAILED", error=line, kind=kind)
        sections[key]["seconds"] = round(time.time() - t, 1)
        part.save()
        part.echo(f"bench: {key}: {sections[key]['status']} after {sections[key]['seconds']} s")

    def steps(sec: dict) -> None:
        sec["rows"] = step.bench_step(device, pairs, tuple(b["batches"]), steps=b["step_steps"])

    gpu_form = {s["pair"]: s for s in harness.harness_setups(torch.device("cuda"), "quick")}
    done: list[dict] = []
    every: list[dict] = []

    def harness_pair(pair):
        def go(sec: dict) -> None:
            s = dict(gpu_form[pair], n_train=b["n_train"], epochs=b["epochs"], batches=tuple(b["batches"]),
                     augment=b["augment"], signals=tuple(b["signals"]),
                     dataset={**gpu_form[pair]["dataset"], "root": plan.cifar,
                              "cache_dir": str(Path(plan.data_dir) / ".cache")})
            done.append(s)

            def row(r: dict) -> None:  # saved as measured: a part stopped at its budget keeps its rows
                sec["rows"].append(r)
                every.append(r)
                part.result["harness_notes"] = harness.harness_notes(device, done, None)
                part.result["harness_targets"] = harness.harness_targets(device, every)
                part.save()

            harness.bench_harness(device, [s], on_row=row)
        return go

    def fused_k(sec: dict) -> None:
        def row(r: dict) -> None:
            sec["rows"].append(r)
            sec["targets"] = fused.fused_targets(sec["rows"])
            part.save()

        fused.bench_fused(device, quick=True, ks=tuple(b["ks"]), data_root=plan.data, repeats=b["fused_repeats"],
                          on_row=row)

    section("step", "teacher forward + student train step (eager; bf16 autocast on GPU)", steps)
    order = [("harness", pairs[0]), ("fused", None), *[("harness", p) for p in pairs[1:]]]
    for kind, pair in order:
        if kind == "fused":
            section("fused", f"K students per teacher pass, K = {', '.join(map(str, b['ks']))} (MNIST, Hinton MLP "
                             f"pair, online teacher; {b['fused_repeats']} repeat(s))", fused_k)
        else:
            section(f"harness {pair[0]} -> {pair[1]}",
                    f"harness vs reference loop, CIFAR-10 JPEG, {pair[0]} -> {pair[1]}", harness_pair(pair))
    bad = [k for k, v in sections.items() if v["status"] != "ok"]
    part.result["status"] = "ok" if not bad else "FAILED"


# ---- (c) the 10-epoch run, killed and resumed ---------------------------------------------------------

def epochs_saved(ckpt: Path) -> int | None:
    """The epochs ``last.ckpt`` holds (read only: a file being replaced is left alone)."""
    import torch

    try:
        return int(torch.load(str(ckpt), map_location="cpu", weights_only=True).get("epoch", -1)) + 1
    except Exception:  # noqa: BLE001 - not there yet, or being written
        return None


def run_overrides(plan: Plan, experiment: str) -> list[str]:
    r, w = plan.run, Path(plan.work)
    out = ["experiment=cifar10_methods", "pair=resnet56_resnet20", "distill=kd", "teacher_signal=online",
           f"dataset.root={plan.cifar}", f"trainer.max_epochs={r['epochs']}", f"teacher.recipe.epochs={r['teacher_epochs']}",
           f"teacher.recipe.batch_size={r['teacher_batch']}", "teacher.recipe.sched.name=cosine", "logger=none",
           "trainer.progress=false", f"paths.results_dir={w / 'results'}", f"paths.data_dir={plan.data_dir}",
           *plan.trainer, f"experiment_name={experiment}"]
    out += [f"dataset.{k}={r[k]}" for k in ("train_subset", "test_subset") if r.get(k)]
    return out


def run(part: Part) -> None:
    plan, w = part.plan, Path(part.plan.work)
    r = plan.run
    experiment = "gpucheck_cifar10"
    cmd = [part.py, "-m", "kdbench.train", *run_overrides(plan, experiment)]
    res = part.result
    res.update(what=f"CIFAR-10 (JPEG q75 copy) KD resnet56 -> resnet20, {r['epochs']} epochs, "
                    f"{' '.join(plan.trainer)}", epochs=r["epochs"], kill_after=r["kill_after"], command=" ".join(cmd))
    part.save()
    out = part.command("teacher", cmd + ["teacher_only=true"])
    m = TEACHER_ACC.search(out["text"])
    res["teacher"] = {"epochs": r["teacher_epochs"], "batch": r["teacher_batch"], "seconds": round(out["seconds"], 1),
                      "acc": float(m.group(2)) / 100 if m and m.group(2) else None, "rc": out["rc"]}
    part.save()
    if out["rc"] != 0:
        line, kind = error_of(out["text"]) if out["rc"] is not None else ("its part's budget ran out", "budget")
        res.update(status="FAILED" if out["rc"] is not None else "TIMED OUT", error=f"teacher: {line}", kind=kind)
        return

    # first process: killed (SIGKILL, no clean stop) once `kill_after` epochs are in last.ckpt
    log = w / "logs" / "run-first.log"
    t = time.time()
    proc = part.start(cmd, log)
    killed = None
    while proc.poll() is None and part.left() > 0:
        for ckpt in (w / "results" / "checkpoints" / experiment).glob("*/last.ckpt"):
            n = epochs_saved(ckpt)
            if n is not None and n >= r["kill_after"]:
                part.end(proc)
                killed = n
        if killed is not None:
            break
        time.sleep(0.5)
    rc = part.wait(proc, 30.0 if killed is not None else part.left())
    first_s = time.time() - t
    part.echo(f"\n---- run: first process: {' '.join(cmd)}\n{log.read_text(errors='replace').rstrip()}\n---- "
              f"first process: {'killed (SIGKILL) with ' + str(killed) + ' epochs saved' if killed else 'exit ' + str(rc)}"
              f" after {first_s:.1f} s")
    res["first"] = {"seconds": round(first_s, 1), "killed_after_epochs": killed, "rc": rc}
    part.save()
    if killed is None:
        res.update(status="FAILED" if rc is not None else "TIMED OUT", kind="error",
                   error=f"the first process was not killed mid-run (it ended with exit {rc} first)"
                   if rc is not None else "its part's budget ran out before the kill")
        return

    # second process: the same command; it must resume
    out = part.command("second", cmd)
    res["second"] = {"seconds": round(out["seconds"], 1), "rc": out["rc"]}
    m = RESUMING.search(out["text"])
    rec = record_of(out["text"])
    progress = read_json(next(iter((w / "results" / "checkpoints" / experiment).glob("*/progress.json")), "none"))
    metrics = rec.get("metrics") or {}
    res.update(resumed_from_epoch=int(m.group(2)) if m else None, record_status=rec.get("status"),
               resumed_from=rec.get("resumed_from"), history_epochs=len(rec.get("history") or []),
               wall_s=round(first_s + out["seconds"], 1), s_per_epoch=progress.get("s_per_epoch"),
               final_acc=(metrics.get("last") or {}).get("test", {}).get("acc"),
               best_acc=(metrics.get("best") or {}).get("test", {}).get("acc"),
               best_epoch=(metrics.get("best") or {}).get("epoch"), run_id=rec.get("run_id"))
    if out["rc"] != 0:
        line, kind = error_of(out["text"]) if out["rc"] is not None else ("its part's budget ran out", "budget")
        res.update(status="FAILED" if out["rc"] is not None else "TIMED OUT", error=f"resumed run: {line}", kind=kind)
    elif not (m and rec.get("resumed_from") and rec.get("status") == "complete" and res["history_epochs"] == r["epochs"]):
        res.update(status="FAILED", kind="error", error=f"did not resume: resuming line {'found' if m else 'missing'}, "
                   f"record status {rec.get('status')!r}, resumed_from {rec.get('resumed_from')!r}, "
                   f"{res['history_epochs']} of {r['epochs']} epochs in its history")
    else:
        res["status"] = "ok"


PART_FUNCTIONS = {"checks": checks, "bench": bench, "run": run}


def main(argv: list[str]) -> int:
    name, work, deadline = argv[0], argv[1], float(argv[2])
    part = Part(name, Plan.load(work), deadline)
    signal.signal(signal.SIGTERM, part.stop_children)
    try:
        PART_FUNCTIONS[name](part)
    except Exception as e:  # noqa: BLE001 - the part's own failure, recorded
        traceback.print_exc()
        line, kind = error_of(f"{type(e).__name__}: {e}")
        part.result.update(status="FAILED", error=line, kind=kind)
    if part.result["status"] == "running":
        part.result["status"] = "ok"
    part.save()
    return 0 if part.result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
