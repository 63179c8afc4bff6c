"""``make sweep``: validate every job of a Hydra grid, run it with a real Hydra launcher, report.

1. Compose each job's config (the experiment's ``hydra.sweeper.params`` x command-line sweeps)
   and validate it, so a bad value or an empty grid stops the sweep before any work.
2. Run ``python -m kdbench.train -m ...`` (basic, joblib or submitit launcher as configured),
   showing one progress line per finished job (read from the run records as they land).
3. Summarise: complete / failed / skipped (already complete), build the table and plots, and
   exit non-zero if any job failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from kdbench.config import CONF_DIR, compose_job  # noqa: F401  (compose_job: re-exported for callers of sweep)
from kdbench.errors import KDBenchError, exit_codes, print_error

DEFAULT_EXPERIMENT = "mnist_ablation"
PROG = "kdbench-sweep"
#: set in the environment of the ``kdbench.train -m`` a sweep launches: the sweep prints its own summary
SUMMARY_OFF = "KDBENCH_SWEEP_SUMMARY_OFF"


def expand_jobs(overrides: list[str]) -> tuple[list[list[str]], object]:
    """The list of per-job override lists that Hydra's basic sweeper would produce, and the base config."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # with the config loader, so that sweeps over a group's options (`pair=glob(*)`) expand
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        parsed_cli = parser.parse_overrides(overrides)
        # compose the base config with the non-sweep overrides to find the sweeper params of the experiment
        fixed = [o.input_line for o in parsed_cli if not o.is_sweep_override()]
        base = compose(config_name="train", overrides=fixed, return_hydra_config=True)
        grid = base.hydra.sweeper.params
        params = OmegaConf.to_container(grid, resolve=False) if grid is not None else {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
        batches = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    jobs = batches[0] if batches else []
    return jobs, base


#: keys that say how a sweep runs, not what a job computes: one value for the whole sweep
SWEEP_WIDE = {"fuse": "how many jobs share one process"}


def plan(overrides: list[str], *, default_experiment: bool = True) -> list[dict]:
    """Compose and validate every job; returns [{overrides, cfg, run_id}] or raises KDBenchError.
    ``default_experiment``: a grid without ``experiment=`` is :data:`DEFAULT_EXPERIMENT`'s (``make sweep``)."""
    from kdbench.config import resolve, validate
    from kdbench.credentials import redact_override
    from kdbench.errors import ConfigError
    from kdbench.identity import run_id_of

    if default_experiment and not any(o.startswith("experiment=") for o in overrides):
        overrides = [f"experiment={DEFAULT_EXPERIMENT}", *overrides]
    jobs, _ = expand_jobs(overrides)
    if not jobs:
        raise ConfigError("hydra.sweeper.params", "the grid expands to no jobs")
    out = []
    for i, job in enumerate(jobs):
        try:
            cfg = compose_job(job)
            validate(cfg)
        except ConfigError as e:
            shown = " ".join(redact_override(o) for o in job)
            raise ConfigError(e.key, f"{e.message} (job {i}: {shown})") from None
        conf = resolve(cfg)
        rid = run_id_of(conf)
        out.append({"overrides": job, "cfg": cfg, "conf": conf, "run_id": rid,
                    "record": _records_dir(cfg) / f"{rid}.json"})
    for key, what in SWEEP_WIDE.items():  # before the runs are matched: these never change a run id
        values = list(dict.fromkeys(str(j["cfg"].get(key)) for j in out))
        if len(values) > 1:
            raise ConfigError(key, f"takes one value for the whole sweep ({what}), got {','.join(values)}: "
                                   "run one sweep per value")
    # jobs that differ only in keys their method does not read (distill=kd,none distill.tau=1,4: the
    # scratch run does not read tau) are one run: it runs once (Hydra still launches the others; they
    # find it complete, or wait on its lock under a parallel launcher, and skip)
    unique: dict[str, dict] = {}
    for j in out:
        first = unique.setdefault(j["run_id"], j)
        if first is not j:
            if sorted(first["overrides"]) == sorted(j["overrides"]):
                raise ConfigError("hydra.sweeper.params", f"two jobs of the grid are the same run ({j['run_id']}): "
                                                          "the grid repeats a point")
            first.setdefault("same_as", []).append(j["overrides"])
    return list(unique.values())


def sweep_warnings(jobs: list[dict]) -> list[str]:
    """The distinct warnings of a grid's jobs (:func:`kdbench.config.unusual_values`: a value far outside
    published recipes, a warm-up not shorter than the run), each once."""
    from kdbench.config import unusual_values

    return list(dict.fromkeys(w for j in jobs for w in unusual_values(j["cfg"])))


def same_run_keys(jobs: list[dict]) -> list[str]:
    """The override keys in which the grid points that are one run (a job's ``same_as``) differ from it."""
    keys: dict[str, None] = {}
    for j in jobs:
        mine = set(j["overrides"])
        for other in j.get("same_as", []):
            for o in mine.symmetric_difference(other):
                keys[o.lstrip("+~").partition("=")[0]] = None
    return list(keys)


def varying(jobs: list[dict]) -> list[str]:
    """The override keys whose value differs between the jobs of a grid (what a progress line shows)."""
    values: dict[str, set] = {}
    for j in jobs:
        for o in j["overrides"]:
            k, _, v = o.lstrip("+~").partition("=")
            values.setdefault(k, set()).add(v)
    return [k for k, vs in values.items() if len(vs) > 1 or any(k not in _keys(j) for j in jobs)]


def _keys(job: dict) -> set[str]:
    return {o.lstrip("+~").partition("=")[0] for o in job["overrides"]}


def label(job: dict, keys: list[str]) -> str:
    """``kd tau=4 seed 0``: the variant, then the values of the grid's varying keys (short names)."""
    from kdbench.identity import computational

    cfg, conf, shown = job["cfg"], job.get("conf") or {}, []
    used = computational(conf) if conf else {}
    for o in job["overrides"]:
        k, _, v = o.lstrip("+~").partition("=")
        unread = k.startswith("distill.") and k.split(".")[1] not in (conf.get("distill") or {k.split(".")[1]: 0})
        # a key the run does not compute with (an online run's teacher_capture.k) is not shown either
        unread = unread or (bool(used) and k.startswith(("teacher_capture.", "teacher_cache.")) and k.split(".")[0] not in used)
        unread = unread or (k == "teacher_signal" and conf.get("teacher_signal") == "none")  # scratch: no signal
        if k in keys and k not in ("distill", "seed", "experiment") and not unread:
            shown.append(f"{k.rsplit('.', 1)[-1]}={v}")
    return " ".join([str(cfg.distill.variant), *shown, f"seed {cfg.seed}"])


def _records_dir(cfg) -> Path:
    return Path(cfg.paths.runs_dir).absolute() / cfg.experiment_name


def _status(path: Path) -> dict | None:
    from kdbench.records import read_record

    try:
        return read_record(path)
    except Exception:
        return None


@exit_codes(PROG)
def run_sweep(overrides: list[str], *, report: bool = True, quiet_jobs: bool = True, hints: bool = False) -> int:
    """``make sweep``: plan, launch, follow and summarize a grid (:func:`summarize`; ``hints``: what to try next)."""
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = [f"experiment={DEFAULT_EXPERIMENT}", *overrides]
    try:
        jobs = plan(overrides)
    except KDBenchError:
        raise  # exit_codes reports it
    except Exception as e:  # Hydra's own composition errors (unknown group option, bad override syntax)
        return print_error(PROG, f"{type(e).__name__}: {str(e).splitlines()[0]}")
    cfg0 = jobs[0]["cfg"]
    # a grid may span experiments (e.g. pair=glob(*) gives one per pair): each job has its own records folder
    experiments = list(dict.fromkeys(j["cfg"].experiment_name for j in jobs))
    exp = experiments[0] if len(experiments) == 1 else f"{experiments[0]} (+{len(experiments) - 1} more)"
    before = {j["run_id"]: (_status(j["record"]) or {}).get("status") for j in jobs}
    force = any(o.startswith("force=true") for o in overrides)
    skipped = [r for r, s in before.items() if s == "complete" and not force]
    shared = sum(len(j.get("same_as", [])) for j in jobs)
    print(f"kdbench sweep '{exp}': {len(jobs)} jobs ({len(skipped)} already complete, skipped)"
          + (f"; {shared} more grid point(s) are one of these runs (they differ only in "
             f"{', '.join(same_run_keys(jobs))}, which those runs do not compute with): each runs once"
             if shared else ""), flush=True)
    for w in sweep_warnings(jobs):  # the jobs' own warnings go to the log: each distinct one here, once
        print(f"kdbench sweep: warning: {w}", flush=True)

    log_dir = Path("multirun") / experiments[0]
    log_dir.mkdir(parents=True, exist_ok=True)
    # one log per sweep (two sweeps of one experiment at once must not write into one file)
    log_path = log_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    extra = ["trainer.progress=false"] if quiet_jobs and not any(o.startswith("trainer.progress") for o in overrides) else []
    cmd = [sys.executable, "-m", "kdbench.train", "-m", *overrides, *extra]
    # (fuse=K with nothing left to train: the unfused launcher finds every job complete)
    fused = _fused_commands(jobs, skipped, extra)
    cmds = fused or [[c for c in cmd if not c.startswith("fuse=")]]
    if fused:
        sizes = [c.count("--") + 1 for c in fused]
        print(f"fused (fuse={int(cfg0.get('fuse', 1))}): the {sum(sizes)} pending jobs train in {len(sizes)} "
              f"group(s) of {', '.join(map(str, sizes))} student(s), one teacher pass per batch per group", flush=True)
    t0 = time.time()
    seen: dict[str, str] = {r: "complete" for r in skipped}
    # records that exist now and will be re-run (failed ones, or all with force=true) are stale until rewritten
    stale = {j["run_id"]: _mtime(j["record"]) for j in jobs if j["run_id"] not in seen}
    keys = varying(jobs)
    stopped: list[int] = []
    with open(log_path, "w") as logf:
        env = {**os.environ, "HYDRA_FULL_ERROR": "0", SUMMARY_OFF: "1"}  # the summary is this process's
        queue, rcs = list(cmds), []
        proc = subprocess.Popen(queue.pop(0), stdout=logf, stderr=subprocess.STDOUT, env=env)

        def forward(signum, frame):  # SIGTERM to the sweep stops its jobs (they record `interrupted`)
            stopped.append(signum)
            proc.send_signal(signum)

        old_term = signal.signal(signal.SIGTERM, forward)
        last_running = time.time()
        try:
            while True:
                try:
                    done = proc.poll() is not None
                    if done and queue and not stopped:  # fuse=K: the next fused group
                        rcs.append(proc.returncode)
                        proc = subprocess.Popen(queue.pop(0), stdout=logf, stderr=subprocess.STDOUT, env=env)
                        done = False
                    _progress(jobs, seen, t0, len(jobs), stale, keys)
                    if done:
                        break
                    if time.time() - last_running >= RUNNING_EVERY_S:
                        last_running = time.time()
                        _running(jobs, seen, keys)
                    time.sleep(1.0)
                except KeyboardInterrupt:  # Ctrl-C reached the job too (same process group): let it stop cleanly
                    if not stopped:
                        stopped.append(signal.SIGINT)
                        proc.send_signal(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, old_term)
    rc = next((r for r in [*rcs, proc.returncode] if r), 0)
    return summarize(jobs, skipped=skipped, t0=t0, rc=rc, log_path=log_path, stopped=stopped, report=report,
                     hints=hints)


def summarize(jobs: list[dict], *, skipped: list[str], t0: float, rc: int = 0, log_path: Path | None = None,
              stopped: list[int] | None = None, report: bool = True, hints: bool = False) -> int:
    """The end of a sweep (``make sweep``, ``python -m kdbench.train -m``): complete / failed counts, the
    failures, the teachers it trained or reused, each experiment's table and report, where things are, and
    (``hints``) what to try next; returns the sweep's exit code (1 if a job failed or has no record)."""
    stopped = stopped or []
    cfg0 = jobs[0]["cfg"]
    experiments = list(dict.fromkeys(j["cfg"].experiment_name for j in jobs))
    exp = experiments[0] if len(experiments) == 1 else f"{experiments[0]} (+{len(experiments) - 1} more)"
    final = {j["run_id"]: (_status(j["record"]) or {}) for j in jobs}
    complete = [r for r, rec in final.items() if rec.get("status") == "complete"]
    failed = [(r, rec) for r, rec in final.items()
              if rec.get("status") in ("failed", "diverged", "running", "interrupted")]
    missing = [r for r, rec in final.items() if not rec]
    mins = (time.time() - t0) / 60
    print(f"\nsweep '{exp}' {'stopped' if stopped else 'finished'} after {mins:.1f} min: {len(complete)} complete, "
          f"{len(failed)} failed or interrupted, {len(missing)} without a record"
          + (f"; log: {log_path}" if log_path else ""))
    for r, rec in failed:
        first = (rec.get("error") or rec.get("status") or "").splitlines()[0][:200] if rec else ""
        st = rec.get("status", "failed")
        tag = "INTERRUPTED" if st == "interrupted" else "FAILED" if st == "failed" else f"FAILED ({st})"
        print(f"  {tag} {r}: {first}")
    if missing and not stopped:
        print("  jobs without a record (rejected before work" + (", see the log):" if log_path else "):"),
              ", ".join(missing))
        if log_path:
            tail = log_path.read_text().strip().splitlines()[-8:]
            print("  " + "\n  ".join(tail))
    if stopped:
        name = signal.Signals(stopped[0]).name
        print(f"kdbench sweep: stopped by {name}; the same command resumes it (complete runs are skipped, "
              "interrupted ones resume from their last checkpoint)")
        return 128 + stopped[0]
    for line in teacher_lines([final[r] for r in complete], t0):
        print(line)
    lg = cfg0.get("logger") or {}
    to_wandb = bool(lg.get("wandb")) and lg.wandb.mode != "disabled"
    pages = []
    for name in experiments if report else []:
        cfg = next(j["cfg"] for j in jobs if j["cfg"].experiment_name == name)
        if not any(j["run_id"] in complete for j in jobs if j["cfg"].experiment_name == name):
            continue
        from kdbench.report import make_report, print_summary

        # a report run in W&B only when this sweep completed runs of the experiment (not on every re-run),
        # in the project / entity / mode of the sweep's own runs
        fresh = any(j["run_id"] in complete and j["run_id"] not in skipped for j in jobs
                    if j["cfg"].experiment_name == name)
        wb = {k: lg.wandb.get(k) for k in ("project", "entity", "mode")} if to_wandb and fresh else False
        out = make_report(Path(cfg.paths.runs_dir).absolute(), name, wandb_log=wb)
        print_summary(out["out_dir"])
        for w in out.get("warnings") or []:
            print(f"warning: {w}")
        print(f"\ntables and plots: {out.get('out_dir')}")
        print(f"run records:      {_records_dir(cfg)}")
        if out.get("out_dir"):
            pages.append(Path(out["out_dir"]) / "index.html")
    if report and complete:
        if to_wandb:
            wdir = Path(cfg0.paths.wandb_dir).absolute() / "wandb"
            mode = lg.wandb.mode
            print(f"W&B ({mode}):     {wdir}" + ("  (upload: wandb sync <dir>/offline-run-*)" if mode == "offline" else ""))
    if hints and pages:
        print(f"\nnext: open {pages[0]}  (the table, the plots, how the variants differ, every record)")
        print(f'      make sweep ARGS="experiment={experiments[0]} seed=0,1,2,3,4"  (more seeds; complete runs are '
              "skipped)")
    ok = rc == 0 and not failed and not missing
    return 0 if ok else 1


def teacher_lines(records: list[dict], t0: float) -> list[str]:
    """One line per registry teacher of these runs: trained by this sweep (registered after ``t0``), and in
    about how long (from the start of the job that trained it to its registration), or reused."""
    from datetime import datetime

    paths = dict.fromkeys(str(p) for p in ((r.get("teacher") or {}).get("path") for r in records) if p)
    out = []
    for path in paths:
        try:
            registered = (Path(path) / "meta.json").stat().st_mtime
        except OSError:
            continue
        if registered < t0:
            out.append(f"teacher {Path(path).name}: reused from the registry ({path})")
            continue
        # the records of the jobs that used it: the earliest one started before the teacher was registered
        starts = []
        for r in records:
            if str((r.get("teacher") or {}).get("path")) == path and r.get("finished_at") and r.get("wall_time_s"):
                try:
                    starts.append(datetime.fromisoformat(r["finished_at"]).timestamp() - float(r["wall_time_s"]))
                except (TypeError, ValueError):
                    pass
        began = [b for b in starts if b <= registered + 1]
        took = f" in about {max(0.0, registered - min(began)):.0f} s" if began else ""
        out.append(f"teacher {Path(path).name}: trained by this sweep{took} ({path})")
    return out


def _fused_commands(jobs: list[dict], skipped: list[str], extra: list[str]) -> list[list[str]]:
    """``fuse=K`` (K > 1): one ``python -m kdbench.fused`` command per fusable group of at most K pending
    jobs (see :mod:`kdbench.fused`); [] when the sweep does not fuse."""
    k = int(jobs[0]["cfg"].get("fuse", 1))  # one value for the whole sweep (plan)
    if k <= 1:
        return []
    from kdbench.fused import group_jobs

    pending = [j for j in jobs if j["run_id"] not in skipped]
    cmds = []
    for group in group_jobs(pending, k):
        args: list[str] = []
        for j in group:
            args += [*([] if not args else ["--"]), *j["overrides"], *extra]
        cmds.append([sys.executable, "-m", "kdbench.fused", *args])
    return cmds


FINAL = ("complete", "failed", "diverged", "interrupted")
#: how often the sweep shows its running jobs' epoch and ETA (from their checkpoint folder's progress.json)
RUNNING_EVERY_S = 30.0


def _running(jobs, seen: dict, keys: list[str]) -> None:
    import json

    for j in jobs:
        if j["run_id"] in seen:
            continue
        prog = Path(j["cfg"].paths.checkpoints_dir).absolute() / j["cfg"].experiment_name / j["run_id"] / "progress.json"
        try:
            p = json.loads(prog.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - float(p.get("updated", 0)) > 3600:
            continue  # an earlier, abandoned attempt
        print(f"      running {label(j, keys)}: epoch {p['epoch']}/{p['epochs']}, {p['s_per_epoch']:.1f} s/epoch, "
              f"about {p['eta_s'] / 60:.1f} min left", flush=True)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _progress(jobs, seen: dict, t0: float, total: int, stale: dict | None = None, keys: list[str] | None = None) -> None:
    """Print one line per job whose record reached a final status since the last call.

    ``stale`` maps run ids to the modification time their record had when the sweep started: a
    record that has not been rewritten since (a re-run failed job, or any job with force=true) is
    the previous attempt's, not news.
    """
    for j in jobs:
        rid, path = j["run_id"], j["record"]
        if stale and rid in stale and stale[rid] is not None and _mtime(path) == stale[rid]:
            continue
        rec = _status(path)
        if not rec:
            continue
        st = rec.get("status")
        if st in FINAL and seen.get(rid) != st:
            seen[rid] = st
            n = sum(1 for s in seen.values() if s in FINAL)
            acc = ((rec.get("metrics") or {}).get("last") or {}).get("test", {}).get("acc")
            extra = f"test acc {100 * acc:.2f}%" if acc is not None else (rec.get("error") or "")[:80]
            what = label(j, keys or []) if "cfg" in j else f"{rec.get('variant')} seed {rec.get('seed')}"
            took = rec.get("wall_time_s")  # the job's own time (a fused group's: the group's)
            print(f"[{n:>3}/{total}] {st:<8} {what}  {extra}" + (f"  ({float(took):.0f} s)" if took else ""), flush=True)


class SweepSummary(Callback):
    """Hydra's ``-m`` (``python -m kdbench.train -m ...``) ends as ``make sweep`` does: with :func:`summarize`
    over the jobs of its grid (planned as the sweep starts, to know which were complete already). Registered
    in ``conf/train.yaml`` (``hydra.callbacks``); off under ``make sweep``, which summarizes itself, and for
    sweepers other than Hydra's basic grid (an optimizer's trials are not a grid)."""

    def __init__(self) -> None:
        self.jobs: list[dict] | None = None
        self.skipped: list[str] = []
        self.t0 = time.time()

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra.initialize import get_gh_backup, restore_gh_from_backup
        from omegaconf import OmegaConf

        if os.environ.get(SUMMARY_OFF) or "BasicSweeper" not in str(config.hydra.sweeper.get("_target_")):
            return
        self.t0, backup = time.time(), get_gh_backup()  # plan() composes with Hydra's global state: keep Hydra's
        try:
            with exit_codes("kdbench", exit=True):  # a bad grid: one line, exit 2, before any job (as make sweep)
                jobs = plan(list(OmegaConf.to_container(config.hydra.overrides.task)), default_experiment=False)
        except Exception as e:  # noqa: BLE001 - e.g. Hydra's own composition errors: the launcher reports them
            print(f"kdbench: no sweep summary at the end ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            return
        finally:
            restore_gh_from_backup(backup)
        if all(j["cfg"].experiment_name == "default" for j in jobs):
            print("kdbench: no experiment= or experiment_name= given: this sweep's records go under 'default', beside "
                  "single runs; experiment_name=NAME files them as a study of their own", flush=True)
        force = bool(jobs[0]["cfg"].get("force"))
        self.jobs = jobs
        self.skipped = [j["run_id"] for j in jobs if not force and (_status(j["record"]) or {}).get("status") == "complete"]

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.jobs:
            summarize(self.jobs, skipped=self.skipped, t0=self.t0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m kdbench.sweep [experiment=NAME] [hydra overrides ...]")
        return 0
    return run_sweep(argv)


if __name__ == "__main__":
    sys.exit(main())
