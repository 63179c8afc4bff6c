"""The orchestrator of ``make gpu-check``: checks its input before any work, sets the machine up (carried
wheels, data), runs each part in a process of its own under its budget, and always writes the summary."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from kdbench.errors import ConfigError, exit_codes
from kdbench.gpucheck import PARTS, RUN_ORDER
from kdbench.gpucheck import plan as plans
from kdbench.gpucheck.parts import read_json

RESERVE_S = 15.0   # kept back from the total for the summary and the archive
GRACE_S = 20.0     # after a part's deadline, before it is stopped (it stops its own commands at the deadline)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdbench-gpucheck", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="the folder to write (new or empty): <device>.md, gpucheck.log, records.tar.gz, "
                                 "summary.json")
    p.add_argument("--dry-run", action="store_true", help="rehearse everything on CPU at tiny sizes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run (default: {','.join(PARTS)})")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                   help=f"a part's time budget (GPU defaults: {plans.GPU_BUDGETS})")
    p.add_argument("--total", type=float, default=None, help=f"seconds for everything (GPU default {plans.GPU_TOTAL:g})")
    p.add_argument("--jobs", type=int, default=None, help="smoke runs at a time (GPU default 6, dry run 1)")
    p.add_argument("--data", default=None, help="folder with cifar10-jpeg.tar.gz and MNIST/raw (default: "
                                                "../shared/data if there, else .gpucarry/data)")
    p.add_argument("--wheels", default=None, help="the carried wheels (default .gpucarry/wheels)")
    p.add_argument("--work", default=None, help="scratch folder, new or empty, kept (default: a temporary one, "
                                                "removed once the archive is written)")
    p.add_argument("--prepare", default=None, metavar="DIR",
                   help="instead of a check: put the wheels and data a bare GPU machine lacks into DIR (make gpu-wheels)")
    return p


@exit_codes("kdbench-gpucheck")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.prepare:
        for line in plans.prepare(Path(args.prepare), Path(args.data) if args.data else plans.REPO.parent / "shared" / "data"):
            print(line)
        return 0
    # every check before any work
    if not args.out:
        raise ConfigError("--out", "is required: the folder the check writes (new or empty)")
    out = Path(args.out)
    plans.check_out(out)
    parts = plans.parse_parts(args.parts)
    budgets = plans.parse_budgets(args.budget)
    if args.total is not None and not args.total > 0:
        raise ConfigError("--total", f"must be > 0 seconds, got {args.total:g}")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", f"must be a positive integer, got {args.jobs}")
    data = Path(args.data) if args.data else plans.default_data()
    plans.check_data(data, parts)
    wheels = Path(args.wheels) if args.wheels else plans.CARRY / "wheels"
    to_install = plans.check_wheels(wheels)
    if args.work and Path(args.work).exists() and (not Path(args.work).is_dir() or any(Path(args.work).iterdir())):
        raise ConfigError("--work", f"{args.work} exists and is not an empty folder (pick another path)")
    plans.check_device(args.dry_run)
    return Check(args, out, parts, budgets, data, wheels, to_install).run()


class Check:
    def __init__(self, args, out: Path, parts, budgets, data: Path, wheels: Path, to_install: list[str]):
        self.out, self.wheels, self.to_install = out, wheels, to_install
        out.mkdir(parents=True, exist_ok=True)
        self.temporary = not args.work
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kdbench-gpucheck-"))
        work.mkdir(parents=True, exist_ok=True)
        self.plan = plans.make_plan(args.dry_run, work.resolve(), data.resolve(), parts, budgets, args.total, args.jobs)
        self.t0 = time.time()
        self.deadline = self.t0 + self.plan.total_s
        self.results: dict[str, dict] = {}
        self.log_path = out / "gpucheck.log"
        self.header = {"device": "?", "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                       "torch": "?", "cuda": "?", "python": platform.python_version(), "setup": "not done",
                       "seconds": 0.0, "host": platform.node()}

    def clean(self) -> str:
        """The temporary work folder, removed once archived (a ``--work`` folder is kept)."""
        if self.temporary:
            shutil.rmtree(self.plan.work, ignore_errors=True)
            return f"(removed the work folder {self.plan.work})"
        return f"(kept the work folder {self.plan.work})"

    def say(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def setup(self) -> dict:
        """The carried wheels (skipped where importable), MNIST unpacked, the device named."""
        import torch

        from kdbench.bench.timing import device_label, device_slug

        site = Path(self.plan.work) / "site"
        self.header["setup"] = plans.install(self.wheels, self.to_install, site)
        if self.to_install:
            self.plan.site = str(site)
        self.plan.data = str(plans.unpack_mnist(Path(self.plan.data), Path(self.plan.work)))
        dev = torch.device(self.plan.device)
        self.header.update(device=device_label(dev), torch=torch.__version__, cuda=torch.version.cuda or "none")
        self.name = device_slug(dev)
        self.plan.save()
        return {"status": "ok"}

    def env(self) -> dict:
        repo = str(plans.REPO)
        path = [p for p in (self.plan.site, repo, os.environ.get("PYTHONPATH")) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1",
               "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        if self.plan.dry_run:
            env.setdefault("OMP_NUM_THREADS", "1")
        return env

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        """SIGTERM (the part ends its commands and saves its result), then SIGKILL after the grace period."""
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def part(self, name: str, budget: float) -> dict:
        """``name`` in its own process until its deadline (+ a grace period: then SIGTERM, then SIGKILL)."""
        deadline = time.time() + budget
        work = Path(self.plan.work)
        self.say(f"\n==== part {name}: budget {budget:.0f} s (until {time.strftime('%H:%M:%S', time.localtime(deadline))})")
        t = time.time()
        with open(self.log_path, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "kdbench.gpucheck.parts", name, str(work), str(deadline)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env(),
                                    cwd=plans.REPO)
            stopped = False
            try:
                proc.wait(timeout=budget + GRACE_S)
            except BaseException as e:  # its budget ran out, or the check itself was stopped (Ctrl-C)
                stopped = True
                self.stop(proc)
                if not isinstance(e, subprocess.TimeoutExpired):
                    raise
            finally:
                for child in (work / "children").glob("*"):  # what a stopped part left running
                    try:
                        os.killpg(int(child.name), signal.SIGKILL)
                    except (ProcessLookupError, ValueError, PermissionError):
                        pass
                    child.unlink(missing_ok=True)
        res = read_json(work / "parts" / f"{name}.json") or {"status": "FAILED", "error": "it wrote no result"}
        if stopped or res.get("status") in ("running", "TIMED OUT"):
            res["status"] = "TIMED OUT"
            res.setdefault("error", f"stopped at its budget ({budget:.0f} s)")
            for step in [*res.get("items", []), *(res.get("sections") or {}).values()]:
                if step.get("status") in ("running", "waiting"):  # what the stop cut short, or never began
                    step.update(status="TIMED OUT" if step["status"] == "running" else "not run",
                                error=f"the part was stopped at its budget ({budget:.0f} s)", kind="budget")
        elif proc.returncode not in (0, 1) and res.get("status") == "ok":
            res.update(status="FAILED", error=f"its process ended with exit {proc.returncode}")
        res.update(seconds=time.time() - t, budget=budget, rc=proc.returncode)
        self.say(f"==== part {name}: {res['status']} after {res['seconds']:.1f} s")
        return res

    def run(self) -> int:
        from kdbench.gpucheck import summary

        self.name = "device"
        try:
            self.say(f"kdbench gpu-check: {'dry run, ' if self.plan.dry_run else ''}parts {','.join(self.plan.parts)}, "
                     f"work folder {self.plan.work}, output {self.out}")
            self.results["setup"] = self.setup()
            self.say(f"setup: {self.header['setup']}; device {self.header['device']}")
            slack = 0.0
            for name in RUN_ORDER:
                if name not in self.plan.parts:
                    self.results[name] = {"status": "not selected"}
                    continue
                left = self.deadline - time.time() - RESERVE_S - GRACE_S
                if left < 5:
                    self.results[name] = {"status": "not run", "error": "no time left of the total budget"}
                    continue
                budget = min(self.plan.budgets[name] + slack, left)
                self.results[name] = self.part(name, budget)
                slack = max(0.0, budget - self.results[name]["seconds"])
        except BaseException as e:  # the summary is written whatever stopped the check
            self.say(f"kdbench gpu-check: stopped: {type(e).__name__}: {e}")
            self.results.setdefault("setup", {"status": "FAILED", "error": f"{type(e).__name__}: {e}"})
            if not isinstance(e, Exception):
                raise
        finally:
            self.header["seconds"] = time.time() - self.t0
            for write in (lambda: summary.write_summary(self.out, self.name, self.header, self.results, self.plan),
                          lambda: summary.write_json(self.out, self.header, self.results),
                          lambda: summary.archive(self.out, Path(self.plan.work)), self.clean):
                try:
                    done = write()
                    self.say(done if isinstance(done, str) else f"wrote {done}")
                except Exception as e:  # noqa: BLE001 - the others are still written
                    self.say(f"kdbench gpu-check: could not write a summary file: {type(e).__name__}: {e}")
            summary.cap_log(self.log_path)
        ok = all(self.results.get(p, {}).get("status") in ("ok", "not selected") for p in PARTS)
        return 0 if ok and self.results.get("setup", {}).get("status") == "ok" else 1
