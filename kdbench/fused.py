"""Fused runs (issue #13): K jobs that share their batch stream and teacher, trained in one process.

``python -m kdbench.sweep ... fuse=K`` groups a sweep's pending jobs into fusable groups of up to K and
runs each group here (``python -m kdbench.fused <job 1 overrides> -- <job 2 overrides> ...``).

A group shares one data set, one loader (same ``data_seed``: same order and augmentation views) and one
teacher signal: per batch the teacher runs once, then each student does its own forward, its own
method's loss, backward and optimizer / scheduler step. Each student is a real :class:`DistillModule`
(its own ``training_step``, validation metrics, temperature fitting and test hooks), held by one
:class:`FusedModule` under one Lightning Trainer with manual optimisation. Each keeps its unfused run
id, record (plus ``fused: K`` and ``fused_with``), checkpoint folder, progress file and W&B run.

Equal to the unfused runs: each student's init is drawn under its own ``seed`` (as in ``kdbench.train``)
and its own torch RNG stream (dropout) is swapped in around its step, so on CPU a fused job's record
has the numbers of the separate run (float tolerance).

An interrupted group resumes from its own ``last.ckpt`` (folder ``fused-<K>-<hash of the run ids>``
beside the students'), when the same group runs again (a sweep re-run groups its pending jobs alike).
Not fused (refused with one line): early stopping, teachers that train or run in train mode, several
devices, fp16 with a loss scaler.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

from kdbench.distill import DistillModule
from kdbench.errors import ConfigError, DivergedError
from kdbench.files import abs_path

log = logging.getLogger("kdbench")

#: what determines the batch stream (every job of a group must agree on these)
STREAM_KEYS = ("dataset", "data_seed", "trainer", "debug", "callbacks")
#: trainer keys each student may set for itself
PER_STUDENT_TRAINER = ("trainer.gradient_clip_val", "trainer.check_finite_every")
#: what determines the teacher signal (every job of a group that uses a teacher must agree)
TEACHER_KEYS = ("teacher", "teacher_signal", "teacher_cache", "teacher_capture", "distill.teacher_train_mode",
                "distill.teacher_grad", "paths.teachers_dir")
_MISSING = object()


# ---- which jobs can share a process --------------------------------------------------------------
def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _pick(conf: Mapping, keys: Sequence[str]) -> dict[str, Any]:
    flat = _leaves(conf)
    return {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in keys)
            and k not in PER_STUDENT_TRAINER}


def _stream_view(conf: Mapping) -> dict[str, Any]:
    from kdbench.identity import computational

    view = _pick(computational(conf), STREAM_KEYS)
    view["dataset.eval_batch_size"] = conf["dataset"].get("eval_batch_size")  # one loader for all
    return view


def _teacher_view(conf: Mapping, teachers_dir: str) -> dict[str, Any]:
    view = _pick({**conf, "paths": {"teachers_dir": teachers_dir}}, TEACHER_KEYS)
    return view


def _uses_teacher(conf: Mapping) -> bool:
    return conf.get("teacher_signal") not in (None, "none")


def _first_difference(a: dict, b: dict) -> str | None:
    for k in list(a) + [k for k in b if k not in a]:
        if a.get(k, _MISSING) != b.get(k, _MISSING):
            return k
    return None


def _declares_needs(d: Mapping) -> bool:
    from kdbench.methods import build_method
    from kdbench.runner import declares_needs

    return declares_needs(build_method(d["method"], d))


def check_fusable(cfgs: Sequence, confs: Sequence[Mapping], run_ids: Sequence[str]) -> None:
    """Refuse, with one line naming the first differing (or unsupported) key, jobs that cannot share a
    process: their batch streams or teachers differ, or a job does something a fused group cannot."""
    for cfg, conf, rid in zip(cfgs, confs, run_ids, strict=True):
        if cfg.get("teacher_only"):
            raise ConfigError("teacher_only", f"job {rid} only trains its teacher: nothing to fuse")
        if (conf.get("callbacks") or {}).get("early_stopping") is not None:
            raise ConfigError("callbacks.early_stopping", f"job {rid} may stop at its own epoch: fused jobs run "
                                                          "the same epochs (use fuse=1)")
        t = conf["trainer"]
        if str(t.get("devices")) not in ("1", "auto") or t.get("strategy") not in ("auto", None):
            raise ConfigError("trainer.devices", f"job {rid}: a fused group trains on one device (use fuse=1)")
        if str(t.get("precision")) == "16-mixed":
            raise ConfigError("trainer.precision", f"job {rid}: 16-mixed shares one loss scaler between the "
                                                   "students of a fused group; use bf16-mixed or fuse=1")
        d = conf.get("distill") or {}
        if d.get("method") not in (None, "none") and _declares_needs(d):
            raise ConfigError("distill.method", f"job {rid}: method {d['method']} reads features or trains modules of "
                                                "its own; fused groups share logits only (use fuse=1)")
        for k in ("teacher_grad", "teacher_train_mode"):
            if _uses_teacher(conf) and d.get(k):
                raise ConfigError(f"distill.{k}", f"job {rid}: each student would change the shared teacher "
                                                  "(its weights or its dropout/BatchNorm draws); use fuse=1")
    ref = _stream_view(confs[0])
    for conf, rid in zip(confs[1:], run_ids[1:], strict=True):
        view = _stream_view(conf)
        key = _first_difference(ref, view)
        if key is not None:
            raise ConfigError(key, f"differs between fused jobs ({ref.get(key)!r} in {run_ids[0]}, "
                                   f"{view.get(key)!r} in {rid}): only jobs with the same batch stream share a process")
    with_t = [(c, conf, r) for c, conf, r in zip(cfgs, confs, run_ids, strict=True) if _uses_teacher(conf)]
    if with_t:
        c0, conf0, r0 = with_t[0]
        ref = _teacher_view(conf0, str(abs_path(c0.paths.teachers_dir)))
        for c, conf, rid in with_t[1:]:
            view = _teacher_view(conf, str(abs_path(c.paths.teachers_dir)))
            key = _first_difference(ref, view)
            if key is not None:
                raise ConfigError(key, f"differs between fused jobs ({ref.get(key)!r} in {r0}, {view.get(key)!r} "
                                       f"in {rid}): only jobs with the same teacher share a process")


def group_jobs(jobs: Sequence[dict], k: int) -> list[list[dict]]:
    """Planned sweep jobs (``{cfg, conf, run_id, ...}``) in fusable groups of at most ``k``, in order."""
    groups: list[list[dict]] = []
    for j in jobs:
        for g in groups:
            if len(g) < k:
                try:
                    members = [*g, j]
                    check_fusable([m["cfg"] for m in members], [m["conf"] for m in members],
                                  [m["run_id"] for m in members])
                except ConfigError:
                    continue
                g.append(j)
                break
        else:
            groups.append([j])
    return groups


# ---- the module --------------------------------------------------------------------------------------
class SharedSignal:
    """A teacher signal that runs once per batch however many students ask for it (the last batch's
    output is kept, keyed by the batch object and the split)."""

    def __init__(self, inner):
        self.inner = inner
        self.kind = inner.kind
        self._key: tuple | None = None
        self._out = None
        self.calls = 0

    def __call__(self, batch, split: str):
        if self._key is not None and self._key[0] is batch and self._key[1] == split:
            return self._out
        self.calls += 1
        out = self.inner(batch, split)
        self._key, self._out = (batch, split), out
        return out

    def forget(self) -> None:
        self._key = self._out = None

    def to(self, device):
        self.inner.to(device)
        return self

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class Member(DistillModule):
    """One student of a fused group: a DistillModule whose logged values are collected for its own
    loggers, and whose step counter is its own optimizer's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged: dict[str, float] = {}
        self.steps = 0
        #: the best validation accuracy so far (what the unfused run's ModelCheckpoint keeps best.ckpt for)
        self.best_acc = -math.inf

    @property
    def global_step(self) -> int:
        return self.steps

    def log(self, name: str, value, *args, **kwargs) -> None:
        self.logged[name] = float(value)

    def log_dict(self, dictionary: Mapping, *args, **kwargs) -> None:
        for k, v in dictionary.items():
            self.log(k, v)


class FusedModule(pl.LightningModule):
    """K :class:`Member` students trained in lock-step on the same batches (manual optimisation: one
    optimizer and scheduler each, stepped in turn); every hook is the member's own."""

    def __init__(self, members: Sequence[Member], *, clip: Sequence[float | None], rng: Sequence[dict],
                 ckpt_dirs: Sequence[Path | None] = (), run_ids: Sequence[str] = (), loggers: Sequence[list] = ()):
        super().__init__()
        self.automatic_optimization = False
        self.members = nn.ModuleList(members)
        self.clip = list(clip)
        #: each student's own torch RNG state (dropout), swapped in around its training step
        self.rng = list(rng)
        self.ckpt_dirs = list(ckpt_dirs) or [None] * len(members)
        self.run_ids = list(run_ids)
        #: each student's own loggers (what it logged goes to them after every epoch and every test)
        self.member_loggers = list(loggers) or [[] for _ in members]
        self.scheds: list = []
        self.dead: dict[int, DivergedError] = {}
        self._sched_states: list | None = None  # from a resumed checkpoint, for configure_optimizers

    def live(self):
        return [(i, m) for i, m in enumerate(self.members) if i not in self.dead]

    def _each(self, hook: str, *args) -> None:
        for i, m in self.live():
            try:
                getattr(m, hook)(*args)
            except DivergedError as e:
                self._died(i, e)

    def _died(self, i: int, e: DivergedError) -> None:
        log.warning("fused student %d diverged: %s (the others go on)", i, e)
        self.dead[i] = e
        if len(self.dead) == len(self.members):
            raise e

    def setup(self, stage: str) -> None:
        for m in self.members:
            m.trainer = self.trainer
            m.setup(stage)

    def configure_optimizers(self):
        opts, self.scheds = [], []
        for m in self.members:
            out = m.configure_optimizers()
            if isinstance(out, dict):
                opts.append(out["optimizer"])
                self.scheds.append(out["lr_scheduler"]["scheduler"])
            else:
                opts.append(out)
                self.scheds.append(None)
        if self._sched_states is not None:  # resuming: Lightning restores the optimizers, we our schedulers
            for sched, state in zip(self.scheds, self._sched_states, strict=True):
                if sched is not None and state is not None:
                    sched.load_state_dict(state)
            self._sched_states = None
        return opts  # the schedulers stay ours: stepped per student step, as the unfused loop does

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    # ---- training ------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._each("on_train_epoch_start")

    def training_step(self, batch, batch_idx):
        opts = self._optimizers()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        for i, m in self.live():
            torch.set_rng_state(self.rng[i]["torch"])
            if cuda and "cuda" in self.rng[i]:
                torch.cuda.set_rng_state(self.rng[i]["cuda"])
            try:
                loss = m.training_step(batch, batch_idx)
            except DivergedError as e:
                self._died(i, e)
                continue
            finally:
                self.rng[i]["torch"] = torch.get_rng_state()
                if cuda:
                    self.rng[i]["cuda"] = torch.cuda.get_rng_state()
            opt = opts[i]
            opt.zero_grad()
            self.manual_backward(loss)
            if self.clip[i]:
                self.clip_gradients(opt, gradient_clip_val=self.clip[i], gradient_clip_algorithm="norm")
            opt.step()
            if self.scheds[i] is not None:
                self.scheds[i].step()
            m.steps += 1
            m.on_train_batch_end(None, batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self._each("on_train_epoch_end")
        opts = self._optimizers()
        for i, m in self.live():
            if self.member_loggers[i]:  # the learning rate, as Lightning's LearningRateMonitor logs it
                m.logged[f"lr-{type(opts[i].optimizer).__name__}"] = float(opts[i].param_groups[0]["lr"])
        self._flush_logs()

    def _flush_logs(self) -> None:
        for i, m in self.live():
            if m.logged:
                for lg in self.member_loggers[i]:
                    lg.log_metrics({**m.logged, "epoch": m.current_epoch}, step=m.steps)
            m.logged = {}

    # ---- evaluation ----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._each("on_validation_epoch_start")

    def validation_step(self, batch, batch_idx):
        for _, m in self.live():
            m.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        opts = self._optimizers()
        for i, m in self.live():
            m.on_validation_epoch_end()
            if m.history:  # the student's own learning rate (the unfused module reads the trainer's first)
                m.history[-1]["lr"] = float(opts[i].param_groups[0]["lr"])
        self._save_best()

    def _save_best(self) -> None:
        """Each student's ``best.ckpt`` in its own folder when its validation accuracy improved (strictly,
        as ModelCheckpoint): before the group's ``last.ckpt`` of this epoch is written."""
        from kdbench.files import atomic_write

        opts = self._optimizers()
        for i, m in self.live():
            acc = m.history[-1].get("val_acc") if m.history else None
            if self.ckpt_dirs[i] is None or acc is None or not float(acc) > m.best_acc:
                continue
            ck = {"epoch": self.current_epoch, "global_step": m.steps, "pytorch-lightning_version": pl.__version__,
                  "state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                  "optimizer_states": [opts[i].optimizer.state_dict()],
                  "lr_schedulers": [self.scheds[i].state_dict()] if self.scheds[i] is not None else [],
                  "kdbench_fused": {"run_ids": self.run_ids, "member": i}}
            try:
                m.on_save_checkpoint(ck)
            except DivergedError as e:
                self._died(i, e)
                continue
            ck["kdbench_rng"]["torch"] = self.rng[i]["torch"].clone()
            m.best_acc = float(acc)
            atomic_write(self.ckpt_dirs[i] / "best.ckpt", lambda tmp, ck=ck: torch.save(ck, tmp))

    # ---- the group's own checkpoint (last.ckpt in its folder): what a resumed group needs --------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kdbench_fused"] = {
            "run_ids": self.run_ids,
            "members": [{"history": list(m.history), "steps": m.steps, "best_acc": m.best_acc,
                         "temperature": {"student": m.val_temperature, "teacher": m.teacher_temperature},
                         "sched": self.scheds[i].state_dict() if self.scheds and self.scheds[i] is not None else None,
                         "rng": {k: v.clone() for k, v in self.rng[i].items()}}
                        for i, m in enumerate(self.members)],
            "dead": {str(i): e.step for i, e in self.dead.items()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("kdbench_fused") or {}
        if list(state.get("run_ids") or []) != self.run_ids:
            raise ValueError("this checkpoint is another fused group's")
        for i, (m, st) in enumerate(zip(self.members, state["members"], strict=True)):
            m.history, m.steps, m.best_acc = list(st["history"]), int(st["steps"]), float(st["best_acc"])
            m.val_temperature, m.teacher_temperature = st["temperature"]["student"], st["temperature"]["teacher"]
            self.rng[i] = dict(st["rng"])
        self._sched_states = [st["sched"] for st in state["members"]]
        self.dead = {int(i): DivergedError(int(step), "the loss or the student logits")
                     for i, step in (state.get("dead") or {}).items()}

    def on_test_epoch_start(self) -> None:
        for m in self.members:
            m.on_test_epoch_start()

    def test_step(self, batch, batch_idx):
        for m in self.members:
            m.test_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        for m in self.members:
            m.on_test_epoch_end()

    def on_test_end(self) -> None:
        self._flush_logs()


# ---- one group, end to end -------------------------------------------------------------------------
def run_group(cfgs: Sequence, overrides: Sequence[Sequence[str]] | None = None) -> list[dict]:
    """Train the jobs ``cfgs`` (composed train configs) as one fused group; returns their records (those
    already complete as they are). Raises KDBenchError before any work when the group cannot be fused."""
    from kdbench.interrupts import trapped

    with trapped() as trap:
        try:
            return _run_group(list(cfgs), [list(o) for o in (overrides or [[] for _ in cfgs])], trap)
        except BaseException as e:
            trap.raise_if_caught(e)
            raise


def _run_group(cfgs: list, overrides: list[list[str]], trap) -> list[dict]:
    from kdbench.config import check_class_counts, is_scratch
    from kdbench.lifecycle import Job, claimed
    from kdbench.runner import build_student_module, load_data, new_record, preflight_needs, student_data
    from kdbench.signals import build_signal, needs_teacher, preflight_signal
    from kdbench.teachers import train as teacher_training

    t0 = time.time()
    if not cfgs:
        raise ConfigError("fuse", "a fused group needs at least one job")
    every = [Job.of(c, o) for c, o in zip(cfgs, overrides, strict=True)]
    ids = [j.run_id for j in every]
    if len(set(ids)) < len(ids):
        dup = next(r for r in ids if ids.count(r) > 1)
        raise ConfigError("fuse", f"two jobs of the group are the same run ({dup})")
    check_fusable(cfgs, [j.conf for j in every], ids)
    # in run-id order: the group's checkpoint is the same whatever order the jobs were given in
    every.sort(key=lambda j: j.run_id)
    done = {j.run_id: rec for j in every if (rec := j.complete()) is not None}
    jobs = [j for j in every if j.run_id not in done]
    if not jobs:
        return [done[r] for r in ids]

    # data -> one teacher signal
    c0 = jobs[0].conf
    full = load_data(c0["dataset"])
    for j in jobs:
        check_class_counts(full.num_classes, j.cfg)
    data = student_data(full, c0)
    tjob = next((j for j in jobs if not is_scratch(j.cfg)), None)
    teacher, tmeta, shared = None, None, None
    if tjob is not None:
        tc = tjob.conf
        for j in jobs:
            if not is_scratch(j.cfg):
                preflight_needs(j.conf)
        preflight_signal(tc["teacher_signal"], tc, data)
        if needs_teacher(tc["teacher_signal"]):
            teacher, tmeta = teacher_training.for_run(tc["teacher"], tc["dataset"], tc["trainer"], full,
                                              teachers_dir=abs_path(tjob.cfg.paths.teachers_dir),
                                              checkpoints_dir=abs_path(tjob.cfg.paths.checkpoints_dir),
                                              eval_batch_size=tc["dataset"]["eval_batch_size"], log=log.info)
        shared = SharedSignal(build_signal(tc["teacher_signal"], teacher=teacher, conf=tc, data=data,
                                           teacher_meta=tmeta))

    # one student per job, each drawn under its own seed; its RNG stream starts where an unfused run's does
    rng = {}
    for j in jobs:
        scratch = is_scratch(j.cfg)
        signal = build_signal("none") if scratch else shared
        j.module, j.spec = build_student_module(j.cfg, j.conf, data, signal, module_cls=Member)
        rng[j.run_id] = ({"torch": torch.get_rng_state()}
                         | ({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}))
        j.record = new_record(j.cfg, j.conf, j.run_id, data, signal, None if scratch else tmeta, j.overrides,
                              j.module)

    with claimed(jobs, wait=True) as (pending, finished):  # a job done meanwhile by another process is left out
        done.update(finished)
        if pending:
            for j in pending:
                j.record.update(fused=len(pending), fused_with=[o.run_id for o in pending if o is not j])
            out = _fit_group(pending, data, shared, [rng[j.run_id] for j in pending], t0=t0, trap=trap)
            done.update(out)
    return [done[r] for r in ids]


def _fit_group(jobs: list, data, shared, rng, *, t0: float, trap) -> dict[str, dict]:
    """Drive the group's members through one life each (:mod:`kdbench.lifecycle`): one Trainer, one
    teacher pass per batch, K students; returns their records by run id."""
    from kdbench import lifecycle
    from kdbench.engine import (
        EpochSync,
        Eta,
        build_trainer,
        last_checkpoint,
        make_loaders,
        prepare,
        resume_point,
        test_last_and_best,
    )

    spec0 = jobs[0].spec
    fused = None
    note = f"the same group (fused, {len(jobs)} students) resumes from its last checkpoint"
    try:
        with lifecycle.living(jobs, trap, t0, fused=len(jobs), resumes=note):
            for j in jobs:
                for lg in j.loggers:  # what Lightning does for the loggers it is given (the members log themselves)
                    lg.log_hyperparams(dict(j.module.hparams))
                j.ckpt_dir.mkdir(parents=True, exist_ok=True)
            channels_last = prepare([j.module for j in jobs], shared, spec0, data)
            train, val, test = make_loaders(data, spec0, channels_last)
            fused = FusedModule([j.module for j in jobs], clip=[j.spec.gradient_clip_val for j in jobs], rng=rng,
                                ckpt_dirs=[j.ckpt_dir for j in jobs], run_ids=[j.run_id for j in jobs],
                                loggers=[j.loggers for j in jobs])
            etas = [Eta(f"kdbench {j.cfg.experiment_name}/{j.run_id}", j.ckpt_dir, echo=not spec0.progress)
                    for j in jobs]
            # the group's last.ckpt (every student's weights, optimizer, scheduler, history, RNG) in a folder
            # of its own beside the students' (named by their run ids): a re-run of the same group resumes it
            gdir = group_dir(jobs)
            gdir.mkdir(parents=True, exist_ok=True)
            trainer = build_trainer(replace(spec0, gradient_clip_val=None, callbacks={}), gdir, None,
                                    [EpochSync([train, val, test], train), *etas, last_checkpoint(gdir)])
            resume = all(bool(j.cfg.resume) and not j.cfg.force for j in jobs)
            resumed_from = resume_point(gdir / "last.ckpt", [j.ckpt_dir / "best.ckpt" for j in jobs], resume,
                                        f"fused group {gdir.name}", spec0.max_epochs)
            try:
                trainer.fit(fused, train_dataloaders=train, val_dataloaders=val, ckpt_path=resumed_from)
            finally:
                for i, e in fused.dead.items():
                    lifecycle.diverged(jobs[i], e)
            live = [i for i in range(len(jobs)) if i not in fused.dead]
            results = test_last_and_best(trainer, fused, [jobs[i].module for i in live],
                                         [jobs[i].ckpt_dir / "best.ckpt" for i in live], test,
                                         resumed_from=resumed_from)
            for i, res in zip(live, results, strict=True):
                lifecycle.finish(jobs[i], res, int(len(data.test_y)))
    finally:
        out = {j.run_id: lifecycle.announce(j) for j in jobs}
    if fused.dead:
        raise fused.dead[min(fused.dead)]
    return out


def group_dir(jobs: Sequence) -> Path:
    """The fused group's own checkpoint folder, beside its first student's (named by the sorted run ids)."""
    import hashlib

    digest = hashlib.sha256(" ".join(sorted(j.run_id for j in jobs)).encode()).hexdigest()[:10]
    return jobs[0].ckpt_dir.parent / f"fused-{len(jobs)}-{digest}"


# ---- command line -------------------------------------------------------------------------------------
def split_jobs(argv: Sequence[str]) -> list[list[str]]:
    """``a=1 b=2 -- a=3 b=4`` -> ``[[a=1, b=2], [a=3, b=4]]``."""
    jobs, cur = [], []
    for a in argv:
        if a == "--":
            jobs.append(cur)
            cur = []
        else:
            cur.append(a)
    jobs.append(cur)
    return [j for j in jobs if j]


def main(argv: list[str] | None = None) -> int:
    from kdbench.config import compose_job
    from kdbench.errors import exit_codes
    from kdbench.runner import quiet_libraries

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python -m kdbench.fused <job 1 overrides> -- <job 2 overrides> [-- ...]")
        return 0 if argv else 2
    quiet_libraries()
    jobs = split_jobs(argv)
    with exit_codes(run=True, interrupted="records say 'interrupted' (run the group again to resume)") as ec:
        run_group([compose_job(j) for j in jobs], jobs)
    return ec.code or 0


if __name__ == "__main__":
    sys.exit(main())
