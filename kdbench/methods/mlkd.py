"""MLKD (Jin et al., CVPR 2023, multi-level logit distillation): KD's instance term at several temperatures
plus the alignment of the batch's Gram matrix (``P P^T``) and of the classes' (``P^T P``) of the predictions,
on a weak and a strong view of every image (student and teacher see both), with masks from the teacher's
confidence on the weak view (:func:`~kdbench.losses.mlkd_loss`).

``loss = ce_weight * (CE(weak) + CE(strong)) + kd_weight * instance + batch_weight * batch + class_weight * class``.

The method declares ``views = ("weak", "strong")``: the training loader adds a strong view of the same images
to each batch (:mod:`kdbench.data.randaugment`), the online teacher runs on both, and the method is called with
one :class:`~kdbench.features.Out` per view on each side. A cached or captured teacher (one view per
``(index, view code)``) is refused before any work, and so is data that is not images.

Defaults: MLKD's released code (``KD_ours`` / the LS repository's ``MLKD``): CE 0.1, every distillation term
0.9, temperatures 4, 3, 5, 2, 6 (the strong view's instance term at 4, 3, 5 and the weak view's again at 2, 6,
unmasked), masks at the batch's median confidence applied as that code's arithmetic does (``mask: released``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.features import Needs
from kdbench.kinds import B, C, N, Spec, param
from kdbench.losses.logit_2024 import (
    MLKD_MASKS,
    MLKD_STRONG_TEMPERATURES,
    MLKD_TEMPERATURES,
    MLKD_WEAK_EXTRA_TEMPERATURES,
    mlkd_loss,
)
from kdbench.methods import TAU, register_method
from kdbench.methods.ttm import dense_teacher, label_ce

#: a list of softmax temperatures (each > 0; empty: that term is off)
TEMPERATURES = Spec("list", item=TAU, says="a list of numbers > 0")


@register_method("mlkd")
@dataclass(frozen=True)
class MLKD:
    ce_weight: float = param(0.1, N(0))
    kd_weight: float = param(0.9, N(0))
    batch_weight: float = param(0.9, N(0))
    class_weight: float = param(0.9, N(0))
    temperatures: tuple = param(MLKD_TEMPERATURES, TEMPERATURES)
    strong_temperatures: tuple = param(MLKD_STRONG_TEMPERATURES, TEMPERATURES)
    weak_extra_temperatures: tuple = param(MLKD_WEAK_EXTRA_TEMPERATURES, TEMPERATURES)
    percentile: float = param(50.0, N(0, 100))
    mask: str = param("released", C(*MLKD_MASKS))
    standardize: bool = param(False, B)

    needs_teacher = True
    needs = Needs(student=("logits",), teacher=("logits",))
    #: the views of each training image the method reads, ``batch.x`` first (:data:`kdbench.data.core.VIEWS`)
    views = ("weak", "strong")

    def __post_init__(self):
        for k in ("temperatures", "strong_temperatures", "weak_extra_temperatures"):
            object.__setattr__(self, k, tuple(float(t) for t in getattr(self, k)))

    def __call__(self, student, teacher, batch, parts) -> dict:
        (sw, ss), (tw, ts) = (o.logits for o in student), (dense_teacher("MLKD", o.logits) for o in teacher)
        terms = mlkd_loss(sw, tw, ss, ts, self.temperatures,
                          strong_temperatures=self.strong_temperatures,
                          weak_extra_temperatures=self.weak_extra_temperatures, percentile=self.percentile,
                          mask=self.mask, standardize=self.standardize)
        ce, ce_strong = label_ce(sw, batch), label_ce(ss, batch)
        loss = (self.ce_weight * (ce + ce_strong) + self.kd_weight * terms["instance"]
                + self.batch_weight * terms["batch"] + self.class_weight * terms["class"])
        return {"loss": loss, "ce": ce, "ce_strong": ce_strong, **terms}
