"""95 % confidence intervals of the difference between two groups of runs, over seeds.

Two groups that ran the same seeds (each seed once) are *paired*: the interval is the
t-interval of the per-seed differences, ``mean(d) ± t_{0.975, n-1} · sd(d) / √n``. Otherwise the
groups are compared with Welch's interval for the difference of means (unequal variances,
Welch–Satterthwaite degrees of freedom). With fewer than two values on a side that needs a spread,
there is no interval (NaN bounds). Values are whatever the caller passes (fractions in the report).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any, NamedTuple

__all__ = ["CONFIDENCE", "Interval", "t_quantile", "diff_interval", "excludes_zero"]

#: the coverage of every interval kdbench reports
CONFIDENCE = 0.95


class Interval(NamedTuple):
    """``diff`` = mean(a) − mean(b); ``lo``/``hi`` its 95 % bounds (NaN: no interval); ``paired``: the
    two sides ran the same seeds, so the interval is over the per-seed differences; ``n``: the number
    of pairs when paired, else the smaller side."""

    diff: float
    lo: float
    hi: float
    paired: bool
    n: int


_NONE = Interval(math.nan, math.nan, math.nan, False, 0)


def t_quantile(df: float, q: float = 0.5 + CONFIDENCE / 2) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``df`` may be fractional,
    as Welch's is); NaN for ``df <= 0`` or NaN."""
    if not (isinstance(df, (int, float)) and df > 0):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(q, df))


def _clean(values: Iterable[tuple[Any, Any]]) -> list[tuple[Any, float]]:
    out = []
    for seed, v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append((seed, f))
    return out


def _pairs(a: list[tuple[Any, float]], b: list[tuple[Any, float]]) -> list[float] | None:
    """The per-seed differences a − b when both sides hold the same seeds, each once; else None."""
    sa, sb = [s for s, _ in a], [s for s, _ in b]
    if not a or None in sa or len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or set(sa) != set(sb):
        return None
    vb = dict(b)
    return [v - vb[s] for s, v in a]


def diff_interval(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]]) -> Interval:
    """The 95 % interval of mean(a) − mean(b) for ``(seed, value)`` samples (non-finite values dropped).

    Paired (t-interval of the per-seed differences) when both sides hold the same seeds, each once;
    Welch's interval otherwise. No interval (NaN bounds) with fewer than two pairs, or, unpaired,
    fewer than two values on a side; ``diff`` is NaN only when a side has no value.
    A spread of exactly zero gives the zero-width interval ``[diff, diff]``.
    """
    a, b = _clean(a), _clean(b)
    if not a or not b:
        return _NONE
    diff = statistics.fmean(v for _, v in a) - statistics.fmean(v for _, v in b)
    d = _pairs(a, b)
    if d is not None:
        n = len(d)
        if n < 2:
            return Interval(diff, math.nan, math.nan, True, n)
        sd = statistics.stdev(d)
        half = t_quantile(n - 1) * sd / math.sqrt(n) if sd > 0 else 0.0
        mid = statistics.fmean(d)
        return Interval(diff, mid - half, mid + half, True, n)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return Interval(diff, math.nan, math.nan, False, min(na, nb))
    wa = statistics.variance([v for _, v in a]) / na
    wb = statistics.variance([v for _, v in b]) / nb
    se2 = wa + wb
    if se2 <= 0:
        return Interval(diff, diff, diff, False, min(na, nb))
    df = se2 ** 2 / (wa ** 2 / (na - 1) + wb ** 2 / (nb - 1))
    half = t_quantile(df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, False, min(na, nb))


def excludes_zero(iv: Interval) -> bool:
    """Does the interval lie strictly on one side of 0? False when there is none."""
    if math.isnan(iv.lo) or math.isnan(iv.hi):
        return False
    return iv.lo > 0 or iv.hi < 0
