"""Evaluation metrics: accuracy, calibration (ECE/MCE, NLL, Brier) and fidelity to the teacher.

Accuracy and calibration error come from torchmetrics (top-1 is *micro* accuracy; ECE is
``MulticlassCalibrationError(n_bins=15, norm="l1")`` as in Guo et al. 2017, MCE the same with
``norm="max"``). torchmetrics has no Brier score or KL-to-teacher, so those are running means of
per-example values computed here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from kdbench.losses import kl_divergence
from kdbench.records import DIRECTIONS  # noqa: F401  (re-exported: which way is better per metric)

N_BINS = 15



def fit_temperature(logits: torch.Tensor, target: torch.Tensor, lo: float = 0.05, hi: float = 20.0,
                    tol: float = 1e-9, max_iter: int = 60) -> float:
    """The temperature ``T`` in ``[lo, hi]`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Post-hoc temperature scaling, fitted on a held-out set, in float64 on the CPU, once per evaluation.
    The NLL is convex in ``β = 1 / T`` (a log-sum-exp of linear functions minus a linear one), with
    ``f'(β) = mean(E_p[z] - z_y)`` and ``f''(β) = mean(Var_p[z]) >= 0``: a Newton iteration on ``β``,
    safeguarded by the bracket ``[1/hi, 1/lo]`` that the sign of ``f'`` shrinks (bisection whenever a
    Newton step would leave it), converges in a handful of passes over the logits. (A golden-section
    search needed ~80 passes: 20 s per validation for 24k tokens x 256 classes on this CPU.)
    """
    z = logits.detach().to("cpu", torch.float64)
    y = target.detach().to("cpu")
    if z.numel() == 0:
        return 1.0
    zy = z.gather(1, y.view(-1, 1)).squeeze(1)

    def derivatives(beta: float) -> tuple[float, float]:
        p = torch.softmax(z * beta, dim=1)
        ez = (p * z).sum(1)
        ez2 = (p * z * z).sum(1)
        return float((ez - zy).mean()), float((ez2 - ez * ez).clamp_min(0).mean())

    a, b = 1.0 / hi, 1.0 / lo
    if derivatives(a)[0] >= 0:  # the NLL rises over the whole bracket: the largest temperature
        return hi
    if derivatives(b)[0] <= 0:  # it falls over the whole bracket: the smallest
        return lo
    beta = min(max(1.0, a), b)
    for _ in range(max_iter):
        g, h = derivatives(beta)
        if g > 0:  # the NLL rises with β here: the minimum is below
            b = beta
        else:
            a = beta
        step = g / h if h > 0 else math.inf
        new = beta - step
        if not (a < new < b) or not math.isfinite(new):
            new = (a + b) / 2
        if abs(new - beta) <= tol * max(1.0, beta) or b - a <= tol:
            beta = new
            break
        beta = new
    return 1.0 / min(max(beta, 1.0 / hi), 1.0 / lo)


class ClassificationMetrics(nn.Module):
    """Accumulates metrics of one model's logits over an evaluation set (and its fidelity to a teacher)."""

    def __init__(self, num_classes: int, with_teacher: bool = False, n_bins: int = N_BINS, per_class: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.with_teacher = with_teacher
        self.n_bins = n_bins
        # validate_args=False: torchmetrics' argument checks read tensor values on the host (a GPU sync
        # per batch); the inputs here are always logits/probabilities and int64 labels in range
        self.acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        #: ``metrics.per_class_acc``: each class's accuracy (recall: the share of its examples classified as
        #: it), as ``acc_class_<c>``; a class with no example in the set is NaN, never a 0 it did not earn
        self.acc_class = (MulticlassAccuracy(num_classes=num_classes, average=None, validate_args=False)
                          if per_class else None)
        # on the metrics' device, not in checkpoints (counted on the device: no host read per batch)
        self.register_buffer("class_count", torch.zeros(num_classes, dtype=torch.long) if per_class else None,
                             persistent=False)
        self.ece = MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm="l1", validate_args=False)
        self.mce = MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm="max", validate_args=False)
        # nan_strategy="disable": a NaN (or Inf) reaches the mean and shows in the record, never silently
        # dropped (torchmetrics' default "warn" drops it, and checks on the host every update)
        self.nll = MeanMetric(nan_strategy="disable")
        self.brier = MeanMetric(nan_strategy="disable")
        #: a temperature fitted on the validation set: when set, ECE and NLL after temperature scaling too
        self.temperature: float | None = None
        #: set by the first update with ``[B, T, V]`` logits: metrics over kept tokens, plus perplexity
        self.tokens = False
        self.ece_ts = MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm="l1",
                                                 validate_args=False)
        self.nll_ts = MeanMetric(nan_strategy="disable")
        if with_teacher:
            self.agreement = MeanMetric(nan_strategy="disable")
            self.kl_teacher = MeanMetric(nan_strategy="disable")

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits=None) -> None:
        """``teacher_logits``: dense teacher logits (agreement and KL to the teacher), or a sparse
        top-k teacher (anything with ``indices`` sorted from the largest, as a captured signal gives:
        agreement with its top-1 class only; the KL needs the full distribution)."""
        if logits.dim() > 2:  # tokens [B, T, V]: the positions whose label is kept, nothing else
            keep = target != -100
            logits, target = logits[keep], target[keep]
            if isinstance(teacher_logits, torch.Tensor):
                teacher_logits = teacher_logits[keep]
            elif teacher_logits is not None:
                teacher_logits = type(teacher_logits)(teacher_logits.indices[keep], teacher_logits.log_probs[keep],
                                                      teacher_logits.tau)
            self.tokens = True
        logits = logits.float()
        probs = logits.softmax(-1)
        self.acc.update(logits, target)
        if self.acc_class is not None:
            self.acc_class.update(logits, target)
            self.class_count += torch.bincount(target, minlength=self.num_classes)
        self.ece.update(probs, target)
        self.mce.update(probs, target)
        self.nll.update(F.cross_entropy(logits, target, reduction="none"))
        if self.temperature is not None:
            scaled = logits / self.temperature
            self.ece_ts.update(scaled.softmax(-1), target)
            self.nll_ts.update(F.cross_entropy(scaled, target, reduction="none"))
        onehot = F.one_hot(target, self.num_classes).to(probs.dtype)
        self.brier.update((probs - onehot).pow(2).sum(-1))
        if self.with_teacher and teacher_logits is not None and not isinstance(teacher_logits, torch.Tensor):
            self.agreement.update((logits.argmax(-1) == teacher_logits.indices[..., 0]).float())
        elif self.with_teacher and teacher_logits is not None:
            teacher_logits = teacher_logits.float()
            self.agreement.update((logits.argmax(-1) == teacher_logits.argmax(-1)).float())
            self.kl_teacher.update(kl_divergence(teacher_logits, logits, tau=1.0))

    def compute(self) -> dict[str, float]:
        out = {
            "acc": self.acc.compute(), "ece": self.ece.compute(), "mce": self.mce.compute(),
            "nll": self.nll.compute(), "brier": self.brier.compute(),
        }
        if self.tokens:
            out["ppl"] = torch.exp(out["nll"])
        if self.acc_class is not None and self.acc.update_count > 0:
            per = self.acc_class.compute().float().cpu()
            seen = self.class_count.cpu() > 0
            for c in range(self.num_classes):
                out[f"acc_class_{c}"] = per[c] if seen[c] else torch.tensor(float("nan"))
        if self.temperature is not None and self.nll_ts.update_count > 0:
            out.update(ece_ts=self.ece_ts.compute(), nll_ts=self.nll_ts.compute(),
                       temperature=torch.tensor(self.temperature))
        if self.with_teacher and self.agreement.update_count > 0:
            out["agreement"] = self.agreement.compute()
        if self.with_teacher and self.kl_teacher.update_count > 0:
            out["kl_teacher"] = self.kl_teacher.compute()
        return {k: float(v) for k, v in out.items()}

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin mean confidence, accuracy and count (15 equal-width bins), for reliability diagrams.

        Read from the calibration metric's own accumulated state, so it bins exactly what ECE binned.
        """
        conf = torch.cat(self.ece.confidences) if isinstance(self.ece.confidences, list) else self.ece.confidences
        accs = torch.cat(self.ece.accuracies) if isinstance(self.ece.accuracies, list) else self.ece.accuracies
        conf, accs = conf.float().cpu(), accs.float().cpu()
        edges = torch.linspace(0, 1, self.n_bins + 1)
        idx = torch.bucketize(conf, edges[1:-1], right=True)
        count = torch.bincount(idx, minlength=self.n_bins).float()
        conf_sum = torch.bincount(idx, weights=conf, minlength=self.n_bins)
        acc_sum = torch.bincount(idx, weights=accs, minlength=self.n_bins)
        safe = count.clamp_min(1)
        return {
            "edges": edges.tolist(),
            "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist(),
            "count": count.tolist(),
        }

    def reset(self) -> None:
        for m in self.children():
            m.reset()
        if self.class_count is not None:
            self.class_count.zero_()
