"""``online``: run the frozen teacher on every batch (the default teacher signal)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from kdbench.errors import TeacherError
from kdbench.features import Out, forward_with, probe
from kdbench.signals import SPLITS, register_signal


class NonFiniteWatch:
    """The first non-finite teacher output a signal handed on, kept on the device (no host sync per batch):
    ``(split, dataset row, view)`` of the first bad row. :meth:`check` reads it (one sync) and raises a
    one-line :class:`TeacherError` naming ``who`` and that row: a NaN from the teacher is the teacher's
    (or its file's) fault, said before the student's loss is called diverged."""

    def __init__(self, who: str, why: str):
        self.who, self.why = who, why
        self.first: Tensor | None = None

    def see(self, out: Tensor, batch, split: str) -> None:
        if out.ndim == 0 or out.shape[0] == 0:
            return
        rows = ~torch.isfinite(out.detach()).flatten(1).all(1)
        at = rows.to(torch.uint8).argmax().view(1)  # the first bad row (0 when none: then unused)
        idx = batch.idx.to(rows.device, non_blocking=True).gather(0, at)  # the loader's: on the device already
        view = batch.view.to(rows.device, non_blocking=True).gather(0, at) if split == "train" else torch.zeros_like(idx)
        found = torch.cat([torch.full_like(idx, SPLITS.index(split)), idx, view])
        if self.first is None or self.first.device != found.device:
            self.first = torch.full_like(found, -1)
        self.first = torch.where(rows.any() & (self.first[0] < 0), found, self.first)

    def check(self) -> None:
        if self.first is None:
            return
        split, row, view = (int(v) for v in self.first.tolist())
        if split >= 0:
            where = f"{SPLITS[split]} row {row}" + (f" (view {view})" if SPLITS[split] == "train" else "")
            raise TeacherError("teacher", f"{self.who} gave a non-finite logit (NaN/Inf) for {where}: {self.why}, "
                                          "not the student's training (the run is recorded 'failed', not 'diverged')")


class OnlineSignal:
    """Run the teacher on every batch, in eval mode and under ``inference_mode`` (in the run's precision:
    bf16 autocast on a GPU), its logits handed on in float32.

    Two ablations need the live teacher to differ: ``train_mode`` keeps it in training mode
    (dropout / BatchNorm batch statistics) on training batches, ``grad`` lets the distillation
    gradient reach it (its parameters then join the optimiser and its state the checkpoints).
    """

    kind = "online"

    def __init__(self, teacher: nn.Module, *, train_mode: bool = False, grad: bool = False, name: str | None = None):
        self.teacher = teacher
        self.train_mode, self.grad = bool(train_mode), bool(grad)
        teacher.requires_grad_(self.grad)
        teacher.eval()
        self.watch = NonFiniteWatch(f"the online teacher {name or type(teacher).__name__}",
                                    "its weights or that input are bad")

    def check_finite(self) -> None:
        """Raise TeacherError if a logit it gave so far was not finite (a host read: call it where the
        student's own NaN check reads its flag)."""
        self.watch.check()

    @property
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.teacher.parameters()) if self.grad else []

    def to(self, device: torch.device) -> OnlineSignal:
        self.teacher.to(device)
        return self

    def to_memory_format(self, memory_format: torch.memory_format) -> OnlineSignal:
        self.teacher.to(memory_format=memory_format)
        return self

    #: what a feature method reads of the teacher on training batches (``request``); logits only otherwise
    selectors: tuple[str, ...] = ("logits",)

    def request(self, selectors: tuple[str, ...]) -> None:
        """Give ``selectors`` (:mod:`kdbench.features`) on training batches, from the teacher's one pass."""
        self.selectors = tuple(selectors)

    def probe(self, input_shape: tuple[int, ...], selectors: tuple[str, ...]) -> Out:
        return probe(self.teacher, input_shape, selectors)

    def __call__(self, batch, split: str) -> Tensor | Out:
        training = split == "train"
        self.teacher.train(training and self.train_mode)
        if training and self.selectors != ("logits",):  # a feature method's view, as the features came
            # no_grad, not inference_mode: the features enter the loss's graph as constants (no copies)
            with torch.set_grad_enabled(self.grad):
                out = forward_with(self.teacher, batch.x, self.selectors)
            out.logits = out.logits.float()
            if not self.grad:
                self.watch.see(out.logits, batch, split)
            return out
        if self.grad and training:  # a teacher trained beside the student: its NaN is a divergence of both
            return self.teacher(batch.x)
        with torch.inference_mode():
            out = self.teacher(batch.x)  # under the run's autocast: bf16 on a GPU
        # an inference tensor cannot be saved for backward by the loss: a normal copy (B x C, cheap), in
        # float32 whatever precision the teacher ran in (the loss and the metrics read float32 logits)
        out = out.to(torch.float32, copy=True)
        self.watch.see(out, batch, split)
        return out

    def state_dict(self) -> dict:
        """The teacher's weights, when the ablation trains them (a resumed run must continue from them)."""
        return self.teacher.state_dict() if self.grad else {}

    def load_state_dict(self, state: dict) -> None:
        if self.grad and state:
            self.teacher.load_state_dict(state)


@register_signal("online", gives=("dense", "features", "model"))
def _online(*, teacher: nn.Module | None, conf: dict, teacher_meta: dict | None = None, **_) -> OnlineSignal:
    if teacher is None:
        raise ValueError("teacher_signal=online needs a teacher")
    d = conf.get("distill") or {}
    return OnlineSignal(teacher, train_mode=bool(d.get("teacher_train_mode")), grad=bool(d.get("teacher_grad")),
                        name=(teacher_meta or {}).get("name"))
