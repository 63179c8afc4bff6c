"""Fit and test a DistillModule on in-memory data with a Lightning Trainer.

Used for both teacher training (no teacher, alpha=1) and student distillation, so both get the
same loaders, precision policy, checkpoints and resumption.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from kdbench.config import resolve_accelerator, resolve_compile, resolve_deterministic, resolve_precision
from kdbench.data import TensorData, TensorLoader
from kdbench.distill import DistillModule
from kdbench.errors import DivergedError
from kdbench.files import atomic_write


@dataclass
class FitSpec:
    """How to run one training job (the parts of ``trainer`` and ``dataset`` config that matter)."""

    max_epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    augment: str = "none"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "auto"
    deterministic: bool | str = "auto"
    channels_last: bool | str = "auto"
    #: torch.compile the student (and an online teacher): ``auto`` = on a GPU only
    compile: bool | str = False
    progress: bool = True
    #: seeds the data order and the augmentation views (``data_seed``; the model's init has its own seed)
    data_seed: int = 0
    limit_train_batches: int | float | None = None
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    extra: dict = field(default_factory=dict)
    #: ``callbacks=`` named dicts (conf/callbacks/): lr_monitor, model_summary, early_stopping
    callbacks: dict = field(default_factory=dict)

    @classmethod
    def from_trainer(cls, trainer: Mapping[str, Any], **fields: Any) -> FitSpec:
        """The hardware and loop settings of a ``trainer`` config, plus ``fields`` (epochs, batch, ...)."""
        keys = ("accelerator", "devices", "strategy", "precision", "deterministic", "channels_last", "progress",
                "limit_train_batches", "gradient_clip_val", "log_every_n_steps", "compile")
        return cls(**{k: trainer[k] for k in keys if k in trainer}, **fields)


def check_every(value: int | str, accelerator: str) -> int:
    """How often (in steps) the host checks for NaN/Inf: every step on CPU, every 50 on a GPU (``auto``)."""
    return (1 if accelerator == "cpu" else 50) if value == "auto" else int(value)


class _EpochSync(Callback):
    """Keep the in-memory loaders on the module's device and their shuffling keyed to the epoch.

    With several processes (DDP), each rank iterates only its shard of every epoch's training
    permutation (padded to equal length, like ``DistributedSampler``); validation and test loaders
    are not sharded: every rank evaluates the whole set and the metrics are not synced across ranks.
    """

    def __init__(self, loaders: list[TensorLoader], train_loader: TensorLoader):
        self.loaders, self.train_loader = loaders, train_loader

    def setup(self, trainer, pl_module, stage):
        dev = pl_module.device if pl_module.device.type != "cpu" else trainer.strategy.root_device
        if dev.type != "cpu":
            for ld in self.loaders:
                ld.to(dev)
        self.train_loader.set_shard(trainer.global_rank, trainer.world_size)

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_loader.set_epoch(trainer.current_epoch)


def make_loaders(data: TensorData, spec: FitSpec, channels_last: bool) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    aug = data.default_augment if spec.augment in ("default", None) else spec.augment
    common = dict(mean=data.mean, std=data.std, channels_last=channels_last)
    train = TensorLoader(data.train_x, data.train_y, spec.batch_size, shuffle=True, augment=aug, seed=spec.data_seed,
                         **common)
    vx, vy = (data.val_x, data.val_y) if data.val_x is not None else (data.test_x, data.test_y)
    val = TensorLoader(vx, vy, spec.eval_batch_size, **common)
    test = TensorLoader(data.test_x, data.test_y, spec.eval_batch_size, **common)
    return train, val, test


log = logging.getLogger("kdbench")


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the checkpoint's own folder, then rename it into place.

    Lightning's writer stages the file in the system temp folder and *moves* it: across file systems
    (local /tmp, results on a network disk) that is a copy, and a job killed during it leaves a
    truncated ``last.ckpt`` that every later resume trips over. A rename within one folder is atomic.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def _usable_checkpoint(path: Path) -> int | None:
    """The number of epochs a readable checkpoint has done; one that cannot be read (a disk fault, a
    copy cut short) is set aside, not resumed from (None)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        return int(ckpt.get("epoch", -1)) + 1
    except Exception as e:  # noqa: BLE001 - truncated zip, unpickling error, ...
        _set_aside(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return None


def _set_aside(path: Path, why: str) -> None:
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    log.warning("cannot resume from %s (%s); moved it to %s and starting from scratch", path, why, aside.name)


def build_trainer(spec: FitSpec, ckpt_dir: Path | None, logger=None, callbacks: list | None = None) -> pl.Trainer:
    acc = resolve_accelerator(spec.accelerator)
    deterministic = resolve_deterministic(spec.deterministic, acc)
    kw = dict(
        max_epochs=spec.max_epochs, accelerator=acc, devices=spec.devices, strategy=spec.strategy,
        precision=resolve_precision(spec.precision, acc), deterministic=deterministic,
        # cuDNN picks its fastest kernels when the run need not be bit-reproducible (GPU only)
        benchmark=(not deterministic) if acc in ("gpu", "cuda") else None,
        enable_progress_bar=spec.progress,
        enable_model_summary=any(type(c).__name__ == "ModelSummary" for c in callbacks or []),
        logger=logger if logger else False,
        num_sanity_val_steps=0, log_every_n_steps=spec.log_every_n_steps, callbacks=callbacks or [],
        gradient_clip_val=spec.gradient_clip_val, default_root_dir=str(ckpt_dir) if ckpt_dir else None,
        enable_checkpointing=ckpt_dir is not None, use_distributed_sampler=False,
        plugins=[_AtomicCheckpointIO()],
    )
    if spec.limit_train_batches is not None:
        kw["limit_train_batches"] = spec.limit_train_batches
    kw.update(spec.extra)
    return pl.Trainer(**kw)


@dataclass
class FitResult:
    last: dict
    best: dict
    teacher_test: dict
    history: list[dict]
    reliability: dict
    resumed_from: str | None
    deterministic: bool


def configured_callbacks(cfg: Mapping[str, Any], has_logger: bool) -> list[Callback]:
    """Lightning's own callbacks from the ``callbacks`` config (named dicts of their arguments). The
    learning rate goes to the loggers whenever there are any (``lr_monitor`` sets its interval)."""
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelSummary

    out: list[Callback] = []
    if has_logger:
        out.append(LearningRateMonitor(**{"logging_interval": "epoch", **dict(cfg.get("lr_monitor") or {})}))
    if cfg.get("model_summary") is not None:
        out.append(ModelSummary(**dict(cfg["model_summary"])))
    if cfg.get("early_stopping") is not None:
        # stops the fit early: the run records the epochs it did (last = the epoch it stopped at)
        out.append(EarlyStopping(**{"mode": "max", "monitor": "val/acc", **dict(cfg["early_stopping"])}))
    return out


class _Eta(Callback):
    """After every training epoch: ``progress.json`` in the run's checkpoint folder (epoch, epochs,
    seconds per epoch, ETA; what a sweep shows for its running jobs) and, when Lightning's progress
    bar is off, one line ``<label>: epoch 3/20, 12.1 s/epoch, about 3.4 min left``."""

    def __init__(self, label: str, ckpt_dir: Path | None, echo: bool):
        self.label, self.ckpt_dir, self.echo = label, ckpt_dir, echo
        self.t0: float | None = None
        self.first_epoch = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0, self.first_epoch = time.time(), trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.t0 is None or not trainer.is_global_zero:
            return
        done = trainer.current_epoch + 1
        per = (time.time() - self.t0) / max(1, done - self.first_epoch)
        total = trainer.max_epochs or done
        left = max(0, total - done) * per
        info = {"epoch": done, "epochs": total, "s_per_epoch": round(per, 2), "eta_s": round(left, 1),
                "updated": time.time()}
        if self.ckpt_dir is not None:
            try:
                from kdbench.files import atomic_write_text

                atomic_write_text(self.ckpt_dir / "progress.json", json.dumps(info) + "\n")
            except OSError:
                pass
        if self.echo:
            print(f"{self.label}: epoch {done}/{total}, {per:.1f} s/epoch, about {left / 60:.1f} min left", flush=True)


def fit_and_test(module: DistillModule, data: TensorData, spec: FitSpec, ckpt_dir: Path | None = None,
                 logger=None, resume: bool = True, extra_callbacks: list | None = None) -> FitResult:
    """Train ``module`` for ``spec.max_epochs``, then test the last and the best (by val accuracy) weights.

    With ``ckpt_dir``, ``last.ckpt`` is saved after every epoch and a later call with the same
    directory resumes from it.
    """
    acc = resolve_accelerator(spec.accelerator)
    if acc == "cpu":
        # confident softmaxes produce subnormal floats in the backward pass, which run ~100x slower on x86
        torch.set_flush_denormal(True)
    channels_last = (acc in ("gpu", "cuda")) if spec.channels_last == "auto" else bool(spec.channels_last)
    if channels_last and data.is_image:
        module = module.to(memory_format=torch.channels_last)
        if hasattr(module.signal, "to_memory_format"):
            module.signal.to_memory_format(torch.channels_last)
    if resolve_compile(spec.compile, acc):
        compile_models(module)
    train, val, test = make_loaders(data, spec, channels_last)
    label = f"kdbench {ckpt_dir.parent.name}/{ckpt_dir.name}" if ckpt_dir is not None else "kdbench"
    callbacks = [_EpochSync([train, val, test], train), _Eta(label, ckpt_dir, echo=not spec.progress)]
    callbacks += list(extra_callbacks or [])
    ckpt_cb = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_cb = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                                  save_top_k=1, enable_version_counter=False)
        # its own callback: ModelCheckpoint(save_last=True) writes last.ckpt only in epochs where the
        # monitored metric improved, and resumption needs the latest epoch
        last_cb = ModelCheckpoint(dirpath=str(ckpt_dir), filename="last", monitor=None, save_top_k=1,
                                  enable_version_counter=False)
        callbacks += [ckpt_cb, last_cb]  # best first: trainer.checkpoint_callback is the best one
    callbacks += configured_callbacks(spec.callbacks, has_logger=bool(logger))
    trainer = build_trainer(spec, ckpt_dir, logger, callbacks)
    last_ckpt = ckpt_dir / "last.ckpt" if ckpt_dir is not None else None
    done = _usable_checkpoint(last_ckpt) if (resume and last_ckpt is not None and last_ckpt.exists()) else None
    resume_from = str(last_ckpt) if done is not None else None
    best_ckpt = ckpt_dir / "best.ckpt" if ckpt_dir is not None else None
    if resume_from and best_ckpt.exists() and _usable_checkpoint(best_ckpt) is None:
        # the best epoch's weights are lost: a resumed run could not test them, so it starts over
        _set_aside(last_ckpt, "its best.ckpt is unreadable")
        resume_from = None
    if resume_from:
        print(f"kdbench: resuming {ckpt_dir.name} from epoch {done} of {spec.max_epochs} ({last_ckpt})", flush=True)
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=resume_from)
    except torch.multiprocessing.ProcessRaisedException as e:  # ddp_spawn: a child's exception, as text
        m = re.search(r"DivergedError: training diverged at step (\d+)", str(e))
        if m:
            raise DivergedError(int(m.group(1)), "the loss or the student logits") from None
        raise
    tester = trainer
    if _fits_in_child_processes(trainer):
        # ddp_spawn: fit ran in child processes; the main process got rank 0's final weights (and the best
        # checkpoint's path) but none of the module's attributes. The history comes from rank 0's last
        # checkpoint; testing runs here, on one device, on the whole test set.
        if last_ckpt is None or not last_ckpt.exists():
            raise RuntimeError("a multi-process fit needs a checkpoint directory to bring its history back")
        module.history, temps = _history_in(last_ckpt)
        module.val_temperature, module.teacher_temperature = temps.get("student"), temps.get("teacher")
        tester = build_trainer(replace(spec, devices=1, strategy="auto"), None, logger,
                               [_EpochSync([test], train)])
    history = copy.deepcopy(module.history)

    tester.test(module, dataloaders=test, verbose=False)
    last = {"epoch": history[-1]["epoch"] if history else trainer.current_epoch - 1,
            "val": _val_of(history[-1]) if history else {}, "test": dict(module.last_test)}
    reliability = {"last": module.last_reliability}
    teacher_test = dict(module.last_teacher_test)
    best = last
    if ckpt_cb is not None and ckpt_cb.best_model_path and Path(ckpt_cb.best_model_path).exists():
        # testing the best checkpoint loads its weights; put the final weights back afterwards, so the
        # caller (e.g. the teacher registry) keeps the model whose "last" metrics it records
        final_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        # weights_only: a file planted in a shared results folder cannot run code when read back
        tester.test(module, dataloaders=test, ckpt_path=ckpt_cb.best_model_path, verbose=False, weights_only=True)
        best_i = max(range(len(history)), key=lambda i: (history[i].get("val_acc", -1), -i)) if history else None
        best = {"epoch": history[best_i]["epoch"] if best_i is not None else None,
                "val": _val_of(history[best_i]) if best_i is not None else {}, "test": dict(module.last_test)}
        reliability["best"] = module.last_reliability
        module.load_state_dict(final_state)
    module.history = history
    return FitResult(last=last, best=best, teacher_test=teacher_test, history=history, reliability=reliability,
                     resumed_from=resume_from, deterministic=torch.are_deterministic_algorithms_enabled())


def compile_models(module: DistillModule) -> None:
    """``torch.compile`` the student in place (its state-dict keys, hence checkpoints, are unchanged)
    and the teacher of an online signal that is not being trained."""
    module.student.compile()
    teacher = getattr(module.signal, "teacher", None)
    if isinstance(teacher, torch.nn.Module) and not getattr(module.signal, "grad", False):
        teacher.compile()


def _fits_in_child_processes(trainer: pl.Trainer) -> bool:
    from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def _history_in(ckpt: Path) -> tuple[list[dict], dict]:
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    return list(state.get("kdbench_history", [])), dict(state.get("kdbench_temperature") or {})


def _val_of(row: dict) -> dict:
    return {k[4:]: v for k, v in row.items() if k.startswith("val_")}


#: public names for the pieces :mod:`kdbench.fused` builds its own fit from
EpochSync, Eta, usable_checkpoint = _EpochSync, _Eta, _usable_checkpoint
