"""Published numbers the studies set their results beside: one place, each with its source.

Taken from ``../shared/REFERENCE.md`` (the project's reference sheet), which quotes the papers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hinton2015:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", section 3: MNIST,
    test errors of a 784-1200-1200-10 teacher, a 784-800-800-10 student from scratch and the same
    student distilled with soft targets at T = 20."""

    source: str = "Hinton, Vinyals & Dean (2015), arXiv 1503.02531, §3"
    #: the test set the errors are counted on
    n_test: int = 10_000
    teacher_errors: int = 67
    scratch_errors: int = 146
    kd_errors: int = 74
    #: the temperature of the distilled student's published row
    kd_tau: float = 20.0
    #: what the paper says of the other temperatures
    tau_note: str = "with ≥ 300 units per layer all T above 8 worked about equally"

    @property
    def gap_closed(self) -> float:
        """(scratch − distilled) / (scratch − teacher) in published errors: 72 / 79."""
        return (self.scratch_errors - self.kd_errors) / (self.scratch_errors - self.teacher_errors)


HINTON_2015 = Hinton2015()
