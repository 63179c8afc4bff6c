"""DistillModule: the LightningModule that ties a student, a teacher signal, a method and metrics.

The teacher is not a submodule: the :mod:`kdbench.signals` object that produces its outputs is a
plain attribute, so Lightning never switches it to train mode, never moves it (the module's
``setup`` hook does, once) and never writes it into the student's checkpoints. ``method=None``
trains on the labels alone (cross-entropy): teacher training and students from scratch.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import pytorch_lightning as pl
import torch
import torch.nn as nn

from kdbench.errors import DivergedError
from kdbench.features import Out, forward_with
from kdbench.losses import kd_loss_terms
from kdbench.metrics import ClassificationMetrics
from kdbench.optim import Steps, build_optimizer, build_schedule
from kdbench.signals import NoSignal


@dataclass
class OptimSpec:
    """The ``optim`` config section; ``name``: a registered optimizer (:mod:`kdbench.optim`)."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class SchedSpec:
    """The ``sched`` config section; ``name``: a registered schedule (:mod:`kdbench.optim`)."""

    name: str = "none"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    pct_start: float = 0.25
    warmup_epochs: int = 0


def rng_state() -> dict:
    """The global RNG states that training consumes (dropout draws from torch's), as plain data.

    Lightning's checkpoints do not hold them; without them a resumed run draws different dropout
    masks from an uninterrupted one. Plain tensors/ints only, so ``weights_only`` loading accepts it.
    """
    import numpy as np

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype("int64")),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state.get("python")
    if py is not None:
        random.setstate((py[0], tuple(py[1]), py[2]))
    n = state.get("numpy")
    if n is not None:
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _no_cross_rank_sync(metrics: nn.Module | None) -> None:
    """Every rank evaluates the whole (unsharded) eval set, so metrics are complete per rank: no gather.

    With several devices (DDP) the validation loader is not sharded; each rank computes the same
    metrics on the same data, and a cross-rank sync would only count every example once per rank.
    """
    if metrics is None:
        return
    from torchmetrics import Metric

    for m in metrics.modules():
        if isinstance(m, Metric):
            m.sync_on_compute = False
            m._to_sync = False


def kl_to_reference(true_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over kept positions (``labels != -100``; every row for class labels) of KL(p_true ‖ p_model) in
    float32, and the number of positions: the exact divergence from the data's true law, not an estimate
    from sampled labels."""
    keep = labels != -100
    p_log = torch.log_softmax(true_logits.float(), -1)[keep]
    q_log = torch.log_softmax(logits.float(), -1)[keep]
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)
    return kl.sum(), keep.sum().to(kl.dtype)


class DistillModule(pl.LightningModule):
    """Train ``student`` with ``method`` on the outputs of ``signal``; ``method=None`` is plain cross-entropy."""

    def __init__(self, student: nn.Module, num_classes: int, optim: OptimSpec, sched: SchedSpec, *,
                 method=None, signal=None, check_finite_every: int = 1, reference: nn.Module | None = None,
                 parts: nn.Module | None = None, per_class_acc: bool = False):
        super().__init__()
        #: a feature method's trainable modules and per-sample state (regressors, embeddings, memory banks):
        #: optimised with the student and checkpointed with it, never part of the deployed student
        self.parts = parts
        needs = getattr(method, "needs", None)
        #: what a method of the feature seam reads of each side (None: a logit method, called with the
        #: student's logits and the signal's output as they are)
        self.needs = needs
        # the data's true law (dataset=markov), for the test metric kl_to_true; not a submodule, so it is
        # neither trained nor written into checkpoints
        object.__setattr__(self, "_reference", reference)
        self._kl_true: dict[str, list[torch.Tensor]] = {}
        self.student = student
        self.method = method
        self.signal = signal if signal is not None else NoSignal()
        self.optim_spec, self.sched_spec = optim, sched
        self.num_classes = num_classes
        self.check_finite_every = max(1, int(check_finite_every))
        with_t = self.signal.kind != "none"
        self.val_metrics = ClassificationMetrics(num_classes, with_teacher=with_t)
        self.test_metrics = ClassificationMetrics(num_classes, with_teacher=with_t, per_class=per_class_acc)
        self.teacher_test_metrics = ClassificationMetrics(num_classes) if with_t else None
        for m in (self.val_metrics, self.test_metrics, self.teacher_test_metrics):
            _no_cross_rank_sync(m)
        self.history: list[dict] = []
        self._train_loss_sum: torch.Tensor | None = None
        self._train_batches = 0
        self._first_bad_step: torch.Tensor | None = None
        self.last_test: dict[str, float] = {}
        self.last_teacher_test: dict[str, float] = {}
        self.last_reliability: dict = {}
        #: temperatures fitted on the validation set at every validation (student and teacher), for the
        #: temperature-scaled test metrics; a checkpoint keeps the student's of its own epoch
        self.val_temperature: float | None = None
        self.teacher_temperature: float | None = None
        self._val_logits: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        #: a frozen online teacher's eval logits, per split: (the loader they came from, {batch_idx: logits})
        self._eval_teacher: dict[str, tuple[object, dict[int, torch.Tensor]]] = {}
        self._eval_teacher_bytes = 0
        self.save_hyperparameters({"method": repr(method), "signal": self.signal.kind, "optim": asdict(optim),
                                   "sched": asdict(sched), "num_classes": num_classes},
                                  ignore=["student", "method", "signal", "parts"])

    def setup(self, stage: str) -> None:
        # the teacher lives outside the module: follow the student onto its device
        self.signal.to(self.device)
        if self._reference is not None:
            self._reference.to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if self.needs is not None and len(getattr(self.method, "views", ())) > 1:
            # a method that declares views (MLKD: weak, strong): one Out per view and side, in its order
            xs = [batch.x] + [batch.x_views[v] for v in self.method.views[1:]]
            outs = [forward_with(self.student, x, self.needs.student) for x in xs]
            ts = [self.signal(batch._replace(x=x), "train") for x in xs]
            s = outs[0].logits
            terms = self.method(outs, [t if isinstance(t, Out) else Out(t) for t in ts], batch, self.parts)
        elif self.needs is not None:  # a feature method: what it asked for, from the step's one forward pass
            out = forward_with(self.student, batch.x, self.needs.student)
            s, t = out.logits, self.signal(batch, "train")
            terms = self.method(out, t if isinstance(t, Out) else Out(t), batch, self.parts)
        elif self.method is None:
            s = self.student(batch.x)
            terms = kd_loss_terms(s, None, batch.y, alpha=1.0)
        else:
            s = self.student(batch.x)
            terms = self.method(s, self.signal(batch, "train"), batch)
        loss = terms["loss"]
        self._watch_finite(loss, s)
        detached = loss.detach()
        self._train_loss_sum = detached if self._train_loss_sum is None else self._train_loss_sum + detached
        self._train_batches += 1
        return loss

    def _watch_finite(self, loss: torch.Tensor, logits: torch.Tensor) -> None:
        """Record the first step whose loss or logits are not finite; check on the host every few steps.

        The flag stays on the device, so on a GPU the host syncs only every ``check_finite_every`` steps.
        """
        step = self.global_step
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(logits.detach()).all())
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        # a Python scalar operand: no per-step host-to-device copy, no sync
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if (step + 1) % self.check_finite_every == 0:
            self._raise_if_bad()

    def _raise_if_bad(self) -> None:
        self._check_teacher()  # a non-finite teacher output is the teacher's fault: raised first
        if self._first_bad_step is not None:
            first = int(self._first_bad_step)
            if first >= 0:
                raise DivergedError(first, "the loss or the student logits")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        apply = getattr(self.student, "apply_max_norm", None)
        if callable(apply):
            apply()

    def on_train_epoch_start(self) -> None:
        set_epoch = getattr(self.method, "set_epoch", None)  # methods with a schedule (DKD's warm-up)
        if callable(set_epoch):
            set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self._raise_if_bad()
        mean = float(self._train_loss_sum / max(1, self._train_batches)) if self._train_loss_sum is not None \
            else math.nan
        self.log("train/loss", mean, prog_bar=True, sync_dist=True)  # DDP: the mean over the ranks' shards
        self._train_loss_sum, self._train_batches = None, 0

    # ---- evaluation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        # a NaN flagged but not yet checked (check_finite_every > 1) stops the run before it is
        # evaluated and checkpointed, so last.ckpt never holds diverged weights
        if not self.trainer.sanity_checking:
            self._raise_if_bad()

    #: at most this much device memory for cached eval teacher logits (CIFAR-100's 10k test images: 4 MB)
    EVAL_TEACHER_CACHE_BYTES = 256 * 2**20

    def _eval_signal(self, batch, batch_idx: int, split: str):
        """The teacher's output for an evaluation batch, computed once per (eval loader, batch) and reused
        at every later validation and test: eval loaders are neither shuffled nor augmented, and a frozen
        online teacher in eval mode gives the same logits each time. A teacher being trained
        (``teacher_grad``) and the other signals (already look-ups) are asked every time."""
        if getattr(self.signal, "kind", None) != "online" or getattr(self.signal, "grad", False):
            return self.signal(batch, split)
        loader = self.trainer.val_dataloaders if split == "val" else self.trainer.test_dataloaders
        held = self._eval_teacher.get(split)
        if held is None or held[0] is not loader:  # another eval set: start over
            if held is not None:
                self._eval_teacher_bytes -= sum(t.numel() * t.element_size() for t in held[1].values())
            held = self._eval_teacher[split] = (loader, {})
        t = held[1].get(batch_idx)
        if t is not None and t.shape[0] == batch.y.shape[0]:
            return t
        t = self.signal(batch, split)
        size = t.numel() * t.element_size() if isinstance(t, torch.Tensor) else None
        if size is not None and self._eval_teacher_bytes + size <= self.EVAL_TEACHER_CACHE_BYTES:
            held[1][batch_idx] = t
            self._eval_teacher_bytes += size
        return t

    def validation_step(self, batch, batch_idx):
        s, t = self.student(batch.x), self._eval_signal(batch, batch_idx, "val")
        self.val_metrics.update(s, batch.y, t)  # a top-k teacher: agreement with its top-1 only
        dense = t if isinstance(t, torch.Tensor) else None
        y = batch.y
        if s.dim() > 2:  # tokens: the temperature is fitted on the kept positions
            keep = y != -100
            s, y, dense = s[keep], y[keep], dense[keep] if dense is not None else None
        if not self.trainer.sanity_checking:
            self._val_logits.append((s.detach().float(), y, dense.detach().float() if dense is not None else None))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        m = self.val_metrics.compute()
        self.val_metrics.reset()
        if self._val_logits:
            from kdbench.metrics import fit_temperature

            y = torch.cat([v[1] for v in self._val_logits])
            self.val_temperature = fit_temperature(torch.cat([v[0] for v in self._val_logits]), y)
            if self._val_logits[0][2] is not None:
                self.teacher_temperature = fit_temperature(torch.cat([v[2] for v in self._val_logits]), y)
            self._val_logits = []
        # identical on every rank (each evaluates the whole set), so syncing them changes nothing
        self.log_dict({f"val/{k}": v for k, v in m.items() if k != "acc"}, sync_dist=True)
        self.log("val/acc", m["acc"], prog_bar=True, sync_dist=True)
        train_loss = float(self._train_loss_sum / self._train_batches) if self._train_batches else math.nan
        row = {"epoch": self.current_epoch, "train_loss": train_loss}
        row.update({f"val_{k}": v for k, v in m.items()})
        if self.val_temperature is not None:
            row["val_temperature"] = self.val_temperature
        row["lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else math.nan
        self.history.append(row)

    def on_test_epoch_start(self) -> None:
        self.test_metrics.temperature = self.val_temperature
        if self.teacher_test_metrics is not None:
            self.teacher_test_metrics.temperature = self.teacher_temperature

    def test_step(self, batch, batch_idx):
        t = self._eval_signal(batch, batch_idx, "test")
        s = self.student(batch.x)
        self.test_metrics.update(s, batch.y, t)
        if self.teacher_test_metrics is not None and isinstance(t, torch.Tensor):
            self.teacher_test_metrics.update(t, batch.y)
        if self._reference is not None:
            true = self._reference(batch.x)
            for who, logits in (("student", s), ("teacher", t if isinstance(t, torch.Tensor) else None)):
                if logits is not None:
                    total, n = kl_to_reference(true, logits, batch.y)
                    acc = self._kl_true.setdefault(who, [torch.zeros((), device=s.device), torch.zeros((), device=s.device)])
                    acc[0] += total
                    acc[1] += n

    def _check_teacher(self) -> None:
        check = getattr(self.signal, "check_finite", None)  # TeacherError for a NaN the teacher gave (a host read)
        if callable(check):
            check()

    def on_test_epoch_end(self) -> None:
        self._check_teacher()  # a teacher's NaN on a test row, too
        self.last_test = self.test_metrics.compute()
        self.last_reliability = self.test_metrics.reliability()
        self.test_metrics.reset()
        kl_true = {who: float(v[0] / v[1]) for who, v in self._kl_true.items() if float(v[1]) > 0}
        self._kl_true = {}
        if "student" in kl_true:
            self.last_test["kl_to_true"] = kl_true["student"]
        self.log_dict({f"test/{k}": v for k, v in self.last_test.items()}, sync_dist=True)
        if self.teacher_test_metrics is not None:
            # a sparse (top-k) teacher gives no dense logits to measure: no teacher metrics then
            if self.teacher_test_metrics.nll.update_count > 0:
                self.last_teacher_test = self.teacher_test_metrics.compute()
                if "teacher" in kl_true:
                    self.last_teacher_test["kl_to_true"] = kl_true["teacher"]
            self.teacher_test_metrics.reset()

    # ---- checkpoints keep the history and the RNG state (exact resumption) ---------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._raise_if_bad()
        checkpoint["kdbench_history"] = list(self.history)
        checkpoint["kdbench_rng"] = rng_state()
        checkpoint["kdbench_temperature"] = {"student": self.val_temperature, "teacher": self.teacher_temperature}
        teacher_state = self.signal.state_dict() if hasattr(self.signal, "state_dict") else {}
        if teacher_state:  # only the teacher_grad ablation changes the teacher's weights
            checkpoint["kdbench_teacher"] = {k: v.detach().cpu() for k, v in teacher_state.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("kdbench_history", []))
        temps = checkpoint.get("kdbench_temperature") or {}
        self.val_temperature = temps.get("student", self.val_temperature)
        self.teacher_temperature = temps.get("teacher", self.teacher_temperature)
        if "kdbench_teacher" in checkpoint and hasattr(self.signal, "load_state_dict"):
            self.signal.load_state_dict(checkpoint["kdbench_teacher"])
        trainer = getattr(self, "_trainer", None)
        # only when resuming a fit: loading the best weights for testing must not rewind the RNG
        if "kdbench_rng" in checkpoint and trainer is not None and trainer.state.fn == "fit":
            set_rng_state(checkpoint["kdbench_rng"])

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        params = list(self.student.parameters()) + list(getattr(self.signal, "trainable_parameters", []))
        params += list(self.parts.parameters()) if self.parts is not None else []
        opt = build_optimizer(params, self.optim_spec)
        epochs = max(1, int(self.trainer.max_epochs))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // epochs)
        return build_schedule(opt, self.sched_spec, Steps(total, per_epoch, int(self.sched_spec.warmup_epochs * per_epoch)))
