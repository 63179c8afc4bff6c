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
from collections.abc import Mapping, Sequence
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


class EpochSync(Callback):
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


def make_loaders(data: TensorData, spec: FitSpec, channels_last: bool,
                 views: tuple[str, ...] = ("weak",)) -> tuple[TensorLoader, TensorLoader, TensorLoader]:
    """The train (shuffled, augmented; with the extra ``views`` a method declares), val and test loaders."""
    from kdbench.data.augment import family_of

    aug = family_of(spec.augment, data)
    common = dict(mean=data.mean, std=data.std, channels_last=channels_last)
    train = TensorLoader(data.train_x, data.train_y, spec.batch_size, shuffle=True, augment=aug, seed=spec.data_seed,
                         views=views, **common)
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


def usable_checkpoint(path: Path) -> int | None:
    """The number of epochs a readable checkpoint has done; one that cannot be read (a disk fault, a
    copy cut short) is set aside, not resumed from (None)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        return int(ckpt.get("epoch", -1)) + 1
    except Exception as e:  # noqa: BLE001 - truncated zip, unpickling error, ...
        set_aside(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return None


def set_aside(path: Path, why: str, doing: str = "resuming") -> None:
    """Move an unreadable checkpoint out of the way (``<name>.unreadable``), with a warning."""
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    if doing == "resuming":
        log.warning("cannot resume from %s (%s); moved it to %s and starting from scratch", path, why, aside.name)
    else:
        log.warning("cannot read %s (%s); moved it to %s: its run reports its last weights as best", path, why,
                    aside.name)


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


class Eta(Callback):
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


def prepare(modules: Sequence[DistillModule], signal, spec: FitSpec, data: TensorData) -> bool:
    """The hardware settings of a fit, applied in one place for a single run and for every member of a
    fused group: flush-to-zero on CPU, channels-last memory format (``auto``: on a GPU, for images) for the
    students and the signal's teacher, and ``torch.compile`` (``auto``: on a GPU). Returns channels_last."""
    acc = resolve_accelerator(spec.accelerator)
    if acc == "cpu":
        # confident softmaxes produce subnormal floats in the backward pass, which run ~100x slower on x86
        torch.set_flush_denormal(True)
    channels_last = (acc in ("gpu", "cuda")) if spec.channels_last == "auto" else bool(spec.channels_last)
    if channels_last and data.is_image:
        for m in modules:
            m.to(memory_format=torch.channels_last)
        if hasattr(signal, "to_memory_format"):
            signal.to_memory_format(torch.channels_last)
    if resolve_compile(spec.compile, acc):
        compile_models(modules, signal)
    return channels_last


def resume_point(last_ckpt: Path | None, best_ckpts: Sequence[Path], resume: bool, what: str,
                 max_epochs: int) -> str | None:
    """The ``last.ckpt`` to resume from, or None to start from scratch: none asked for or none there, one
    that cannot be read (set aside), or one whose best weights (``best_ckpts``) are lost (a resumed run
    could not test them, so it starts over). Says so when it resumes."""
    if not resume or last_ckpt is None or not last_ckpt.exists():
        return None
    done = usable_checkpoint(last_ckpt)
    if done is None:
        return None
    if any(b.exists() and usable_checkpoint(b) is None for b in best_ckpts):
        set_aside(last_ckpt, "its best.ckpt is unreadable")
        return None
    print(f"kdbench: resuming {what} from epoch {done} of {max_epochs} ({last_ckpt})", flush=True)
    return str(last_ckpt)


def fit_and_test(module: DistillModule, data: TensorData, spec: FitSpec, ckpt_dir: Path | None = None,
                 logger=None, resume: bool = True, extra_callbacks: list | None = None) -> FitResult:
    """Train ``module`` for ``spec.max_epochs``, then test the last and the best (by val accuracy) weights.

    With ``ckpt_dir``, ``last.ckpt`` is saved after every epoch and a later call with the same
    directory resumes from it.
    """
    channels_last = prepare([module], module.signal, spec, data)
    train, val, test = make_loaders(data, spec, channels_last, views=getattr(module.method, "views", ("weak",)))
    label = f"kdbench {ckpt_dir.parent.name}/{ckpt_dir.name}" if ckpt_dir is not None else "kdbench"
    callbacks = [EpochSync([train, val, test], train), Eta(label, ckpt_dir, echo=not spec.progress)]
    callbacks += list(extra_callbacks or [])
    ckpt_cb = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_cb = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/acc", mode="max",
                                  save_top_k=1, enable_version_counter=False)
        # its own callback: ModelCheckpoint(save_last=True) writes last.ckpt only in epochs where the
        # monitored metric improved, and resumption needs the latest epoch
        callbacks += [ckpt_cb, last_checkpoint(ckpt_dir)]  # best first: trainer.checkpoint_callback is the best one
    callbacks += configured_callbacks(spec.callbacks, has_logger=bool(logger))
    trainer = build_trainer(spec, ckpt_dir, logger, callbacks)
    last_ckpt = ckpt_dir / "last.ckpt" if ckpt_dir is not None else None
    resume_from = resume_point(last_ckpt, [ckpt_dir / "best.ckpt"] if ckpt_dir is not None else [], resume,
                               ckpt_dir.name if ckpt_dir is not None else "", spec.max_epochs)
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
                               [EpochSync([test], train)])
    best = Path(ckpt_cb.best_model_path) if ckpt_cb is not None and ckpt_cb.best_model_path else None
    (res,) = test_last_and_best(tester, module, [module], [best], test, resumed_from=resume_from)
    return res


def last_checkpoint(folder: Path) -> ModelCheckpoint:
    """The callback that writes ``last.ckpt`` (the latest epoch, what a resumed fit starts from) into ``folder``."""
    return ModelCheckpoint(dirpath=str(folder), filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)


def test_last_and_best(tester: pl.Trainer, target: pl.LightningModule, members: Sequence[DistillModule],
                       best_ckpts: Sequence[Path | None], test: TensorLoader, *,
                       resumed_from: str | None) -> list[FitResult]:
    """Test the last weights of every member of ``target`` (one DistillModule, or a fused group of them),
    then each one's best (its ``best_ckpts`` entry, by val accuracy) in one more pass; put the final
    weights and histories back afterwards, so a caller (e.g. the teacher registry) keeps the model whose
    ``last`` metrics it records. A member without a readable best checkpoint reports its last weights as best."""
    histories = [copy.deepcopy(m.history) for m in members]
    tester.test(target, dataloaders=test, verbose=False)
    lasts = [dict(m.last_test) for m in members]
    rel = [{"last": m.last_reliability} for m in members]
    teacher_tests = [dict(m.last_teacher_test) for m in members]
    finals: dict[int, dict] = {}
    for i, (m, path) in enumerate(zip(members, best_ckpts, strict=True)):
        if path is None or not path.exists():
            continue
        final = {k: v.detach().clone() for k, v in m.state_dict().items()}
        if load_weights(m, path):
            finals[i] = final
    bests: dict[int, dict] = {}
    if finals:
        tester.test(target, dataloaders=test, verbose=False)
        for i in finals:
            bests[i] = dict(members[i].last_test)
            rel[i]["best"] = members[i].last_reliability
    out = []
    for i, m in enumerate(members):
        if i in finals:
            m.load_state_dict(finals[i])
        m.history = hist = histories[i]
        last = {"epoch": hist[-1]["epoch"] if hist else tester.current_epoch - 1,
                "val": val_of(hist[-1]) if hist else {}, "test": lasts[i]}
        best = last
        if i in bests:
            b = max(range(len(hist)), key=lambda k: (hist[k].get("val_acc", -1), -k)) if hist else None
            best = {"epoch": hist[b]["epoch"] if b is not None else None,
                    "val": val_of(hist[b]) if b is not None else {}, "test": bests[i]}
        out.append(FitResult(last=last, best=best, teacher_test=teacher_tests[i], history=hist, reliability=rel[i],
                             resumed_from=resumed_from, deterministic=torch.are_deterministic_algorithms_enabled()))
    return out


def load_weights(module: DistillModule, path: Path) -> bool:
    """Load a checkpoint's weights (and its fitted temperatures) into ``module`` for testing; a file that
    cannot be read is set aside (False). weights_only: a file planted in a shared results folder cannot
    run code when read back."""
    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, unpickling error, ...
        set_aside(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", "testing")
        return False
    module.load_state_dict(ck["state_dict"])
    module.on_load_checkpoint(ck)  # temperatures (and a trained teacher's weights); not the RNG outside a fit
    return True


def compile_models(modules: Sequence[DistillModule], signal) -> None:
    """``torch.compile`` each student in place (its state-dict keys, hence checkpoints, are unchanged)
    and, once, the teacher of an online signal that is not being trained."""
    for m in modules:
        m.student.compile()
    teacher = getattr(signal, "teacher", None)
    if isinstance(teacher, torch.nn.Module) and not getattr(signal, "grad", False):
        teacher.compile()


def _fits_in_child_processes(trainer: pl.Trainer) -> bool:
    from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def _history_in(ckpt: Path) -> tuple[list[dict], dict]:
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    return list(state.get("kdbench_history", [])), dict(state.get("kdbench_temperature") or {})


def val_of(row: dict) -> dict:
    """A history row's validation metrics, without their ``val_`` prefix."""
    return {k[4:]: v for k, v in row.items() if k.startswith("val_")}
