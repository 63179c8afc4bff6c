"""A job's life, written once: claim -> record ``running`` -> loggers -> (the driver fits and tests) ->
record ``complete`` | ``debug`` | ``diverged`` | ``interrupted`` | ``failed`` -> loggers closed.

:func:`kdbench.runner.run` drives one job through it; :mod:`kdbench.fused` drives the K members of a group
through it. The drivers differ only in how the training steps are run (one student per Trainer, or K
students per teacher pass); everything a record says, and how it is said, is decided here.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone

from kdbench.errors import ConfigError, DivergedError, KDBenchError

log = logging.getLogger("kdbench")

#: a job's statuses once its fit and test are done (the others say why it ended early)
FINISHED = ("complete", "debug")


class Job:
    """One run: its configs, id, paths, record, module, loggers and exit code."""

    def __init__(self, cfg, conf: dict, run_id: str, overrides: Sequence[str]):
        from kdbench.files import abs_path

        self.cfg, self.conf, self.run_id, self.overrides = cfg, conf, run_id, list(overrides)
        self.record_path = abs_path(cfg.paths.runs_dir) / cfg.experiment_name / f"{run_id}.json"
        self.ckpt_dir = abs_path(cfg.paths.checkpoints_dir) / cfg.experiment_name / run_id
        self.lock_path = self.ckpt_dir.parent / f"{run_id}.lock"
        self.record: dict = {}
        self.module = None
        self.spec = None
        self.loggers: list = []
        self.wandb_dir: str | None = None
        self.exit_code = 0

    @classmethod
    def of(cls, cfg, overrides: Sequence[str]) -> Job:
        """Validate ``cfg`` (before any work: bad input raises ConfigError), warn about unusual values and
        keys the method does not read, and resolve every ``auto``: what is hashed into the run id."""
        from kdbench.config import is_scratch, resolve, unusual_values, validate
        from kdbench.identity import run_id_of

        validate(cfg)
        for w in unusual_values(cfg):
            log.debug(w)  # the terminal gets it once, below
            print(f"kdbench: warning: {w}", file=sys.stderr)
        conf = resolve(cfg)  # credentials redacted: what is hashed and recorded
        ignored = sorted(set(cfg.distill) - set(conf["distill"]))
        if ignored and not is_scratch(cfg):  # scratch reads no distill key at all: nothing to announce
            log.warning("distill.%s: not read by method %s (ignored)", ", distill.".join(ignored),
                        conf["distill"]["method"])
        return cls(cfg, conf, run_id_of(conf), overrides)

    def complete(self) -> dict | None:
        """The job's complete record when it has one and ``force`` is off (then it is not trained again)."""
        from kdbench.records import complete_record

        if self.cfg.force:
            return None
        rec = complete_record(self.record_path)
        if rec is not None:
            self._same_store(rec)
            log.debug("run %s is already complete (%s); skipping", self.run_id, self.record_path)
            print(f"kdbench: {self.run_id} already complete, record {self.record_path} (force=true re-runs it)")
        return rec


    def _same_store(self, rec: dict) -> None:
        """A captured run's record names the store it read (k, capture tau, checksums): a different store now
        at that path is not the run's (refused: the record stays; ``force=true`` trains on the new store)."""
        was = (rec.get("teacher") or {}).get("store") if isinstance(rec.get("teacher"), dict) else None
        if self.conf.get("teacher_signal") != "captured" or not isinstance(was, dict):
            return
        from kdbench.files import abs_path
        from kdbench.stores import read_header, store_identity

        path = abs_path(self.conf["teacher_capture"]["path"])
        try:
            now = store_identity(read_header(path))
        except (KDBenchError, KeyError):
            return  # no readable store: the run is complete as recorded; nothing here to compare with
        if now != was:
            raise ConfigError("teacher_capture.path", f"{path} is not the store run {self.run_id} was trained on "
                                                      f"(recorded k={was.get('k')} sha256 {was.get('sha256')}, now "
                                                      f"k={now['k']} sha256 {now['sha256']}): restore it, or "
                                                      "force=true re-runs it on this one")


@contextmanager
def claimed(jobs: Sequence[Job], wait: bool) -> Iterator[tuple[list[Job], dict[str, dict]]]:
    """Hold every job's run lock for the block and yield ``(pending, done)``: the jobs still to train, and
    the records of those another process completed while this one waited for their locks (re-checked under
    the lock, so a finished run is never re-opened). Without ``wait`` a held lock raises BusyError."""
    from kdbench.records import run_lock

    with ExitStack() as locks:
        for j in jobs:
            locks.enter_context(run_lock(j.lock_path, j.record_path, j.run_id, wait=wait))
        pending, done = [], {}
        for j in jobs:
            rec = j.complete()
            if rec is None:
                pending.append(j)
            else:
                done[j.run_id] = rec
        yield pending, done


@contextmanager
def living(jobs: Sequence[Job], trap, t0: float, *, fused: int | None = None,
           resumes: str = "the next invocation resumes from the last checkpoint") -> Iterator[None]:
    """The life of ``jobs`` around the driver's fit and test (the block, which calls :func:`finish` for
    each job it completed): ``running`` records written and loggers opened first; whatever ends the block
    early sets each unfinished job's status (diverged, interrupted by a signal, failed) and exit code; the
    records are always written last, with wall time, and the loggers closed (W&B as failed on a non-zero
    exit code). ``fused``: the group size, in each W&B run's config."""
    from kdbench.records import write_record

    for j in jobs:
        write_record(j.record_path, j.record)
    try:
        for j in jobs:
            _open_loggers(j, fused)
        yield
    except BaseException as e:
        for j in jobs:
            if j.record.get("status") not in (*FINISHED, "diverged"):
                _ended(j, e, trap, resumes)
        raise
    finally:
        for j in jobs:
            j.record.update(wall_time_s=round(time.time() - t0, 3), wandb_dir=j.wandb_dir,
                            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            write_record(j.record_path, j.record)
            _close_loggers(j)


def _open_loggers(job: Job, fused: int | None) -> None:
    from kdbench import tracking
    from kdbench.files import abs_path

    c, cfg = job.conf, job.cfg
    wandb_dir = abs_path(cfg.paths.wandb_dir)
    art = tracking.log_teacher(c.get("logger"), job.record["teacher"], wandb_dir)
    config = {**c, **({"teacher_artifact": art} if art else {}), **({"fused": fused} if fused else {})}
    job.loggers = tracking.make_loggers(
        c.get("logger"), run_id=job.run_id, name=tracking.run_name(c["distill"]["variant"], c["seed"], job.overrides),
        config=config, fresh=bool(cfg.force), group_tags=[c["distill"]["variant"], c["dataset"]["name"]],
        wandb_dir=wandb_dir, experiment=cfg.experiment_name,
        csv_dir=abs_path(cfg.logger.csv.save_dir) if (cfg.get("logger") or {}).get("csv") else None)
    job.wandb_dir = tracking.define_summaries(job.loggers)


def _close_loggers(job: Job) -> None:
    from kdbench import tracking

    tracking.finish_loggers(job.loggers, job.exit_code)


def finish(job: Job, res, n_test: int) -> None:
    """A job whose fit and test are done: its record says what they measured (``debug`` for a debug run:
    it ran, but on a few batches, never a result), with the teacher re-measured beside the registry's
    figures (and a drift warning when the two disagree beyond noise); W&B's summary gets both protocols."""
    from kdbench import teachers, tracking

    record = job.record
    record.update(status="debug" if job.conf.get("debug") else "complete",
                  metrics={"last": res.last, "best": res.best}, history=res.history,
                  reliability=res.reliability, deterministic=res.deterministic, resumed_from=res.resumed_from)
    if record["teacher"] is not None and res.teacher_test:
        warning = teachers.drift(record["teacher"].get("test"), res.teacher_test, n_test)
        if warning:
            log.warning("teacher %s: %s", record["teacher"].get("name"), warning)
            record["teacher"]["drift"] = warning
        record["teacher"].update(registry_test=record["teacher"].get("test"), test=res.teacher_test)
    tracking.log_final(job.loggers, res.last, res.best, res.teacher_test, record)


def diverged(job: Job, e: DivergedError) -> None:
    """The job's loss or logits became NaN/Inf: exit code 3."""
    job.record.update(status="diverged", error=str(e), diverged_step=e.step, history=_history(job))
    job.exit_code = 3


def _ended(job: Job, e: BaseException, trap, resumes: str) -> None:
    if isinstance(e, DivergedError):
        diverged(job, e)
    elif trap.signum is not None:  # Ctrl-C / SIGTERM, whatever Lightning turned it into
        from kdbench.interrupts import RunInterrupted

        sig = RunInterrupted(trap.signum)
        hist = _history(job)
        job.record.update(status="interrupted", error=f"{sig} after {len(hist)} epoch(s); {resumes}", history=hist)
        job.exit_code = sig.exit_code
    else:
        job.record.update(status="failed", error=f"{type(e).__name__}: {e}".strip()[:2000],
                          traceback=traceback.format_exc(limit=8)[-4000:], history=_history(job))
        job.exit_code = 1


def _history(job: Job) -> list:
    return list(job.module.history) if job.module is not None else []


def announce(job: Job) -> dict:
    """The job's summary on stdout (a job that did not finish: one line on stderr); its record, with its path."""
    from kdbench.records import summary

    job.record["record_path"] = str(job.record_path)
    if job.record.get("status") in FINISHED:
        print(summary(job.record, job.record_path))
    else:
        print(f"kdbench: {job.run_id} {job.record.get('status')}: {job.record.get('error')}", file=sys.stderr)
    return job.record

