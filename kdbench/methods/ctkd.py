"""CTKD (Li et al., AAAI 2023, curriculum temperature for KD): KD (or DKD) at a learned temperature
``T = t_start + t_range * sigmoid(theta)``, trained adversarially: a gradient-reversal layer between the
temperature module and the loss makes the optimizer's step *raise* the distillation loss with respect to
``T``, with a reversal strength that a cosine curriculum raises from ``lambda_min`` to ``lambda_max`` over
the first ``curriculum_epochs`` (1-based) epochs (:func:`~kdbench.losses.ctkd_lambda`).

``temperature: global`` is one learned value (``theta`` starts at 1, as CTKD's code); ``instance`` predicts
one per sample with a two-layer MLP over the concatenated [teacher, student] logits (inputs detached, so
the reversed gradient trains the MLP only; ``mlp_hidden`` is kdbench's choice: CTKD's repository does not
hold the instance-wise module). ``wraps: dkd`` is CTKD+DKD (global temperature; DKD's term without its
warm-up, as CTKD's code). The temperature module is a trainable part (the feature seam, logits only: any
teacher signal works), optimised with the student, checkpointed, and counted as ``params.training_only``.

Defaults: CTKD's code (scripts/run_cifar_distill.sh): CE 0.1, KD 0.9, global T in [1, 21], lambda 0 -> 1
over 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from kdbench.errors import ConfigError
from kdbench.features import Needs
from kdbench.kinds import B, C, I, N, param
from kdbench.losses import ctkd_kd_loss, ctkd_lambda, dkd_terms, reverse_gradient
from kdbench.methods import register_method
from kdbench.methods.ttm import dense_teacher, label_ce


class LearnableTemperature(nn.Module):
    """``t_start + t_range * sigmoid(raw)`` with ``raw`` one parameter ``theta`` (global) or an MLP of the
    [teacher, student] logits (instance-wise), passed through the gradient reversal of the given strength."""

    def __init__(self, classes: int, *, instance: bool, t_start: float, t_range: float, hidden: int):
        super().__init__()
        self.t_start, self.t_range = float(t_start), float(t_range)
        if instance:
            self.mlp = nn.Sequential(nn.Linear(2 * classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.theta = nn.Parameter(torch.ones(1))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, strength: float) -> Tensor:
        """The temperature: shape ``[1]`` (global) or ``student_logits.shape[:-1]`` (instance); float32 (float64
        for a float64 module)."""
        if hasattr(self, "mlp"):
            x = torch.cat([teacher_logits.detach(), student_logits.detach()], dim=-1).to(self.mlp[0].weight.dtype)
            raw = self.mlp(x).squeeze(-1)
        else:
            raw = self.theta
        raw = raw if raw.dtype == torch.float64 else raw.float()
        return self.t_start + self.t_range * torch.sigmoid(reverse_gradient(raw, strength))


@register_method("ctkd")
@dataclass(frozen=True)
class CTKD:
    ce_weight: float = param(0.1, N(0))
    kd_weight: float = param(0.9, N(0))
    wraps: str = param("kd", C("kd", "dkd"))
    temperature: str = param("global", C("global", "instance"))
    t_start: float = param(1.0, N(0, lo_open=True))
    t_range: float = param(20.0, N(0))
    lambda_min: float = param(0.0, N(0))
    lambda_max: float = param(1.0, N(0))
    curriculum_epochs: int = param(10, I(1))
    mlp_hidden: int = param(256, I(1))
    standardize: bool = param(False, B)
    dkd_alpha: float = param(1.0, N(0))
    dkd_beta: float = param(8.0, N(0))
    _epoch: int = field(default=0, init=False, repr=False, compare=False)

    needs_teacher = True
    needs = Needs(student=("logits",), teacher=("logits",))

    def __post_init__(self):
        if self.wraps == "dkd" and self.temperature == "instance":
            raise ConfigError("distill.temperature", "CTKD+DKD learns a global temperature (CTKD's code); "
                                                     "temperature=instance wraps KD only")

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (0-based)."""
        object.__setattr__(self, "_epoch", int(epoch))

    @property
    def strength(self) -> float:
        """The gradient-reversal strength of this epoch (the curriculum at the 1-based epoch)."""
        return ctkd_lambda(self._epoch + 1, epochs=self.curriculum_epochs, lambda_min=self.lambda_min,
                           lambda_max=self.lambda_max)

    def build(self, student, teacher, n_train: int) -> nn.Module:
        classes = student.logits.shape[-1]
        if teacher.logits.shape[-1] != classes:
            raise ValueError(f"CTKD needs the same classes on both sides, got {classes} and {teacher.logits.shape[-1]}")
        return LearnableTemperature(classes, instance=self.temperature == "instance", t_start=self.t_start,
                                    t_range=self.t_range, hidden=self.mlp_hidden)

    def __call__(self, student, teacher, batch, parts) -> dict:
        s, t = student.logits, dense_teacher("CTKD", teacher.logits)
        temp = parts(s, t, self.strength)
        ce = label_ce(s, batch)
        if self.wraps == "kd":
            name, term = "kd", ctkd_kd_loss(s, t, temp, labels=batch.y, standardize=self.standardize)
        else:
            name, term = "dkd", dkd_terms(s, t, batch.y, alpha=self.dkd_alpha, beta=self.dkd_beta,
                                          tau=temp.reshape(()), standardize=self.standardize)["loss"]
        return {"loss": self.ce_weight * ce + self.kd_weight * term, "ce": ce, name: term,
                "temperature": temp.detach().mean()}
