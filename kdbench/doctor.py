"""``kdbench doctor``: probe a user's KD loss and name the common mistakes it makes.

The function is called as the lessons do, ``f(student_logits, teacher_logits, labels, alpha, T)``,
on float64 probe batches of several sizes, class counts and temperatures. Its value at ``alpha`` 1
and 0 splits it into its CE and KD terms (``alpha_swapped`` when they come the other way round);
the KD term's value and student gradient are matched against :func:`kdbench.losses.kd_loss_terms`
under each mistake switch (and the few mistakes kdbench has no switch for), so each mistake leaves
its own signature: ``tau_squared`` scales with 1/tau^2, ``batch_mean`` with B or 1/C, and so on.
Token batches ``[B, T, C]`` with -100 labels then test the masking and the token mean.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.errors import KDBenchError
from kdbench.losses import kd_loss_terms

__all__ = ["MISTAKES", "WARNINGS", "Diagnosis", "diagnose", "load_function", "render", "main_args"]

#: mistake ids and what they mean (docs/doctor.md)
MISTAKES = {
    "kl_direction": "KL(student || teacher) instead of KL(teacher || student)",
    "tau_squared": "the tau^2 factor is missing",
    "probabilities_as_logits": "probabilities or raw logits fed where log-probabilities are expected",
    "temperature_mismatch": "student and teacher softened at different temperatures",
    "unstable": "NaN, inf or a large error at large logits or large tau",
    "batch_mean": "not the mean over the batch (a sum, or a mean over batch x classes)",
    "alpha_swapped": "alpha weights the KL term and 1 - alpha the cross-entropy",
    "mask_ignored": "on a token batch, positions labelled -100 contribute to the KD term",
    "token_mean": "on a token batch, the KD term is divided by the number of sequences",
}
WARNINGS = {"teacher_grad": "gradient reaches teacher_logits when they require grad"}

RTOL = 1e-6
#: classification probes (B, C, tau); distinct B, C and tau so that no two mistakes agree
CLASS_PROBES = ((2, 5, 2.0), (4, 7, 4.0), (3, 3, 1.5), (5, 10, 3.0))
#: token probes (B, T, C, tau, number of -100 prompt positions per sequence)
TOKEN_PROBES = ((2, 4, 6, 2.0, (2, 1)), (3, 3, 5, 3.0, (1, 0, 2)))


@dataclass(frozen=True)
class Model:
    """One hypothesis for the KD term: which mistakes, as switches."""

    reverse: bool = False
    tau_one: bool = False
    soft_input: str = "log_probs"  # or "probs" / "logits" (probabilities_as_logits)
    no_tau_sq: bool = False
    batch: str = "mean"  # or "sum" / "classes" (batch_mean)

    def mistakes(self) -> set[str]:
        out = set()
        if self.reverse:
            out.add("kl_direction")
        if self.tau_one:
            out.add("temperature_mismatch")
        if self.soft_input != "log_probs":
            out.add("probabilities_as_logits")
        if self.no_tau_sq:
            out.add("tau_squared")
        if self.batch != "mean":
            out.add("batch_mean")
        return out


MODELS = [
    Model(r, o, si, n, b)
    for r, o, si, n, b in itertools.product(
        (False, True), (False, True), ("log_probs", "probs", "logits"), (False, True), ("mean", "sum", "classes")
    )
    if not (r and si != "log_probs")
]


@dataclass
class Diagnosis:
    verdict: str
    mistakes: list[str]
    warnings: list[str]
    checks: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "mistakes": self.mistakes, "warnings": self.warnings, "checks": self.checks}


def load_function(spec: str):
    """``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` -> the function (KDBenchError if missing)."""
    if ":" not in spec:
        raise KDBenchError("doctor", f"expected FILE.py:FUNCTION or module:FUNCTION, got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise KDBenchError("doctor", f"no such file: {where}")
        mod_spec = importlib.util.spec_from_file_location(f"_kdbench_doctor_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file; one line
            raise KDBenchError("doctor", f"importing {where} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise KDBenchError("doctor", f"cannot import module {where!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise KDBenchError("doctor", f"{where} has no function {name!r}")
    return fn


def make_caller(fn, signature: str | None = None):
    """``call(s, t, y, alpha, tau)`` for the user's function, positional or mapped by ``--signature``."""
    if not signature:
        return lambda s, t, y, a, tau: fn(s, t, y, a, tau)
    keys = {"s", "t", "y", "alpha", "T"}
    names = {}
    for part in signature.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in keys or not v.strip():
            raise KDBenchError("doctor", f"--signature: expected s=,t=,y=,alpha=,T= names, got {part!r}")
        names[k.strip()] = v.strip()
    if set(names) != keys:
        raise KDBenchError("doctor", f"--signature must name all of s, t, y, alpha, T, got {sorted(names)}")

    def call(s, t, y, a, tau):
        return fn(**{names["s"]: s, names["t"]: t, names["y"]: y, names["alpha"]: a, names["T"]: tau})

    return call


# ---- the hypotheses' KD term --------------------------------------------------------------


def _soft_sum(m: Model, s: Tensor, t: Tensor, y: Tensor, tau: float, all_positions: bool) -> Tensor:
    """Sum over the kept (or all) positions of the per-position soft term of ``m`` (no tau^2)."""
    if all_positions:
        y = torch.zeros_like(y)
    keep = int((y != -100).sum())
    if m.soft_input == "log_probs":
        kl = kd_loss_terms(s, t, y, alpha=0.0, tau=tau, kl="reverse" if m.reverse else "forward",
                           student_tau_one=m.tau_one)["kl"]
        return kl * keep
    # F.kl_div(x, p_t) = sum p_t * (log p_t - x) with x probabilities or raw (tempered) logits
    rows = (y != -100).reshape(-1)
    s2, t2 = s.reshape(-1, s.shape[-1])[rows], t.reshape(-1, t.shape[-1])[rows]
    ss = s2 if m.tau_one else s2 / tau
    x = F.softmax(ss, dim=-1) if m.soft_input == "probs" else ss
    log_pt = F.log_softmax(t2 / tau, dim=-1)
    return (log_pt.exp() * (log_pt - x)).sum()


def _factor(m: Model, tau: float, classes: int) -> float:
    f = 1.0 if m.no_tau_sq else tau * tau
    return f / classes if m.batch == "classes" else f


def _value_grad(fn, s: Tensor) -> tuple[float, Tensor] | None:
    """The value of ``fn(s)`` and its gradient w.r.t. ``s``; None when it raises or is not a scalar."""
    s = s.detach().clone().requires_grad_(True)
    try:
        out = fn(s)
        if not isinstance(out, Tensor) or out.numel() != 1:
            return None
        (g,) = torch.autograd.grad(out.reshape(()), s, allow_unused=True)
    except Exception:  # noqa: BLE001 - the user's function may fail on any probe
        return None
    return float(out.detach()), (torch.zeros_like(s) if g is None else g)


def _scaled(vg: tuple[float, Tensor], k: float) -> tuple[float, Tensor]:
    return vg[0] * k, vg[1] * k


def _user(call, s: Tensor, t: Tensor, y: Tensor, alpha: float, tau: float) -> tuple[float, Tensor] | None:
    """The user's value and student gradient on one probe."""
    return _value_grad(lambda x: call(x, t, y, alpha, tau), s)


def _reference_ce(s: Tensor, t: Tensor, y: Tensor, tau: float) -> tuple[float, Tensor]:
    """kdbench's CE term (masked mean) and its student gradient."""
    return _value_grad(lambda x: kd_loss_terms(x, t, y, alpha=1.0, tau=tau)["ce"], s)


def _close(a: tuple[float, Tensor], b: tuple[float, Tensor], rtol: float = RTOL) -> float:
    """Relative discrepancy of two (value, gradient) pairs."""
    va, ga = a
    vb, gb = b
    if not (math.isfinite(va) and torch.isfinite(ga).all()):
        return math.inf
    dv = abs(va - vb) / max(abs(vb), 1e-12)
    dg = float((ga - gb.to(ga.dtype)).abs().max()) / max(float(gb.abs().max()), 1e-12)
    return max(dv, dg)


# ---- probing ----------------------------------------------------------------------------


def _batch(shape: tuple[int, ...], classes: int, gen: torch.Generator, device: str, scale: float = 2.0,
           dtype=torch.float64):
    s = (torch.randn(*shape, classes, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
    t = (torch.randn(*shape, classes, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
    y = torch.randint(0, classes, shape, generator=gen).to(device)
    return s, t, y


def diagnose(fn, *, device: str = "cpu", signature: str | None = None, classes: int | None = None) -> Diagnosis:
    """Probe ``fn`` and return its :class:`Diagnosis` (KDBenchError if it fails on every probe)."""
    call = make_caller(fn, signature)
    gen = torch.Generator().manual_seed(0)
    probes = [(b, classes or c, tau) for b, c, tau in CLASS_PROBES]
    checks: list[dict] = []
    mistakes: set[str] = set()
    warnings: list[str] = []

    # float64 probes, or float32 for a function that refuses float64
    dtype = torch.float64
    s, t, y = _batch((2,), probes[0][1], torch.Generator().manual_seed(1), device)
    if _user(call, s, t, y, 0.5, 2.0) is None:
        dtype = torch.float32

    # 1. split into CE and KD terms via alpha = 1, 0 (and check linearity at 0.3)
    data = []
    for b, c, tau in probes:
        s, t, y = _batch((b,), c, gen, device, dtype=dtype)
        at1 = _user(call, s, t, y, 1.0, tau)
        at0 = _user(call, s, t, y, 0.0, tau)
        mid = _user(call, s, t, y, 0.3, tau)
        if at1 is None or at0 is None or mid is None:
            raise KDBenchError("doctor", f"the function raised or returned a non-scalar on a [{b}, {c}] batch "
                                         f"(called as f(student_logits, teacher_logits, labels, alpha, T))")
        ce_ref = _reference_ce(s, t, y, tau)
        data.append((s, t, y, tau, at1, at0, mid, ce_ref))
    lin = max(_close((0.3 * a1[0] + 0.7 * a0[0], 0.3 * a1[1] + 0.7 * a0[1]), m)
              for *_, a1, a0, m, _ in data)

    def ce_err(pick, n: bool) -> float:
        """CE-term discrepancy: at alpha=1 (pick=1) or 0, as a mean (n False) or a sum over the batch."""
        return max(_close(row[4 if pick else 5], _scaled(row[7], row[0].shape[0] if n else 1)) for row in data)

    errs_ce = {(pick, n): ce_err(pick, n) for pick in (1, 0) for n in (False, True)}
    (pick, ce_sum), err_ce = min(errs_ce.items(), key=lambda kv: kv[1])
    if lin > 1e-4 or err_ce > 1e-4:
        checks.append({"id": "alpha", "ok": False,
                       "evidence": f"not alpha*CE + (1-alpha)*KD: linearity err {lin:.1e}, "
                                   f"closest CE term off by {err_ce:.1e}"})
        return Diagnosis("unknown", [], warnings, checks)
    swapped = pick == 0
    checks.append({"id": "alpha_swapped", "ok": not swapped,
                   "evidence": f"f at alpha=0 is the cross-entropy (err {err_ce:.1e}): alpha weights the KL"
                   if swapped else f"f at alpha=1 is the cross-entropy (err {err_ce:.1e})"})
    if swapped:
        mistakes.add("alpha_swapped")
    if ce_sum:
        mistakes.add("batch_mean")

    # 2. the KD term against every hypothesis
    def kd_of(row):
        _s, _t, _y, _tau, a1, a0, _m, _ce = row
        return a1 if swapped else a0

    def predict(m: Model, s, t, y, tau, all_pos: bool, denom: str) -> tuple[float, Tensor]:
        c = s.shape[-1]

        def f(x):
            total = _soft_sum(m, x, t, y, tau, all_pos) * _factor(m, tau, c)
            if m.batch == "sum" or denom == "sum":
                return total
            if denom == "seqs":
                return total / s.shape[0]
            n = y.numel() if all_pos else int((y != -100).sum())
            return total / n
        return _value_grad(f, s)

    errs = {}
    for m in MODELS:
        errs[m] = max(_close(kd_of(row), predict(m, row[0], row[1], row[2], row[3], False, "kept")) for row in data)
    fits = [m for m in MODELS if errs[m] < 1e-4]
    best = min(errs, key=errs.get)
    if not fits:
        checks.append({"id": "kd_term", "ok": False,
                       "evidence": f"matches no known mistake: closest {sorted(best.mistakes()) or 'reference'} "
                                   f"off by {errs[best]:.1e}"})
        return Diagnosis("unknown", sorted(mistakes), warnings, checks)
    fewest = min(len(x.mistakes()) for x in fits)
    sets = {frozenset(x.mistakes()) for x in fits if len(x.mistakes()) == fewest}
    if len(sets) > 1:
        checks.append({"id": "kd_term", "ok": False,
                       "evidence": f"ambiguous: {' or '.join(str(sorted(x)) for x in sets)} explain it equally"})
        return Diagnosis("unknown", sorted(mistakes), warnings, checks)
    m = min((x for x in fits if len(x.mistakes()) == fewest), key=errs.get)
    mistakes |= m.mistakes()
    ref = Model()
    ratios = []
    for row in data:
        r = predict(ref, row[0], row[1], row[2], row[3], False, "kept")[0]
        ratios.append(kd_of(row)[0] / r if r else math.nan)
    taus = ", ".join(f"{row[3]:g}" for row in data)
    bs = ", ".join(str(row[0].shape[0]) for row in data)
    cs = ", ".join(str(row[0].shape[-1]) for row in data)
    checks.append({"id": "kd_term", "ok": not m.mistakes(),
                   "evidence": f"KD term ÷ reference = {', '.join(f'{v:.3g}' for v in ratios)} at (B, C, τ) = "
                               + ", ".join(f"({row[0].shape[0]}, {row[0].shape[-1]}, {row[3]:g})" for row in data)
                               + f" ({str(dtype).removeprefix('torch.')}); explained by {', '.join(sorted(m.mistakes())) or 'no mistake'} "
                                 f"to {errs[m]:.1e}"})

    def without(**kw) -> str:
        """How far the hypothesis is once one mistake is taken out of it."""
        other = Model(**{**m.__dict__, **kw})
        return f"(without it off by {errs.get(other, math.inf):.1e})"

    ev = {
        "kl_direction": f"value and gradient match KL(student ‖ teacher) {without(reverse=False)}",
        "tau_squared": f"value ÷ reference ∝ 1/τ² at τ = {taus}: τ² is missing {without(no_tau_sq=False)}",
        "probabilities_as_logits": f"matches F.kl_div given {'probabilities' if m.soft_input == 'probs' else 'raw logits'}"
                                   f" as its input {without(soft_input='log_probs')}",
        "temperature_mismatch": f"matches the student softened at τ = 1 {without(tau_one=False)}",
        "batch_mean": (f"ratio ∝ B at B = {bs}: a sum over the batch {without(batch='mean')}" if m.batch == "sum"
                       else f"ratio ∝ 1/C at C = {cs}: a mean over batch × classes {without(batch='mean')}"
                       if m.batch == "classes" else "cross-entropy summed over the batch"),
    }
    for k in ("kl_direction", "tau_squared", "probabilities_as_logits", "temperature_mismatch", "batch_mean"):
        bad = k in mistakes
        checks.append({"id": k, "ok": not bad, "evidence": ev[k] if bad else "as the reference"})

    # 3. stability: float32, |z| ~ 1e3, and tau = 100
    unstable = []
    for scale, tau in ((1e3, 2.0), (3.0, 100.0)):
        s, t, y = _batch((4,), probes[0][1], gen, device, scale=scale, dtype=torch.float32)
        a = 1.0 if swapped else 0.0
        got = _user(call, s, t, y, a, tau)
        want = predict(m, s.double(), t.double(), y, tau, False, "kept")
        err = math.inf if got is None else _close((got[0], got[1].double()), want)
        if err > 1e-2:
            unstable.append(f"err {err:.1e} at |z|~{scale:g}, τ={tau:g}")
    checks.append({"id": "unstable", "ok": not unstable,
                   "evidence": "; ".join(unstable) or "finite and within 1e-2 at |z|~1e3 and τ=100 (float32)"})
    if unstable:
        mistakes.add("unstable")

    # 4. token batches [B, T, C] with -100 prompt labels
    tok = []
    for b, tt, c, tau, prompt in TOKEN_PROBES:
        c = classes or c
        s, t, y = _batch((b, tt), c, gen, device, dtype=dtype)
        for i, p in enumerate(prompt):
            y[i, :p] = -100
        a = 1.0 if swapped else 0.0
        got = _user(call, s, t, y, a, tau)
        tok.append((s, t, y, tau, got))
    if any(g is None for *_, g in tok):
        for k in ("mask_ignored", "token_mean"):
            checks.append({"id": k, "ok": True, "evidence": "not applicable: the function fails on [B, T, C]"})
    else:
        options = {}
        for all_pos, denom in itertools.product((False, True), ("kept", "seqs", "sum")):
            options[(all_pos, denom)] = max(_close(g, predict(m, s, t, y, tau, all_pos, denom))
                                            for s, t, y, tau, g in tok)
        if m.batch == "sum":
            options = {k: v for k, v in options.items() if k[1] in ("kept", "sum")}
        (all_pos, denom), err = min(options.items(), key=lambda kv: kv[1])
        if err > 1e-4:
            checks.append({"id": "tokens", "ok": False,
                           "evidence": f"token batch matches no known masking (closest off by {err:.1e})"})
            return Diagnosis("unknown", sorted(mistakes), warnings, checks)
        s0, _t0, y0, _tau0, _g0 = tok[0]
        n_all, n_kept, n_seq = y0.numel(), int((y0 != -100).sum()), y0.shape[0]
        ref_err = options[(False, "kept")]
        checks.append({"id": "mask_ignored", "ok": not all_pos,
                       "evidence": (f"the {n_all - n_kept} positions labelled -100 (of {n_all}) count in the KD "
                                    f"term (err {err:.1e}; reference off by {ref_err:.1e})") if all_pos
                       else "positions labelled -100 leave the KD term unchanged"})
        checks.append({"id": "token_mean", "ok": denom != "seqs",
                       "evidence": (f"KD term divided by B = {n_seq} sequences, not by the {n_kept} kept tokens "
                                    f"(err {err:.1e})") if denom == "seqs"
                       else "KD term is the mean over kept tokens" if denom == "kept" else "KD term summed"})
        if all_pos:
            mistakes.add("mask_ignored")
        if denom == "seqs":
            mistakes.add("token_mean")

    # 5. teacher gradient (a warning)
    s, t, y, tau = data[0][:4]
    tg = _value_grad(lambda x: call(s, x, y, 0.5, tau), t)
    leaks = tg is not None and float(tg[1].abs().max()) > 0
    checks.append({"id": "teacher_grad", "ok": not leaks,
                   "evidence": "gradient reaches teacher_logits (fine under no_grad)" if leaks
                   else "no gradient reaches teacher_logits"})
    if leaks:
        warnings.append("teacher_grad")
    return Diagnosis("mistakes" if mistakes else "correct", sorted(mistakes), warnings, checks)


def render(d: Diagnosis) -> str:
    """The text report: one line per check (wrapped to 100 columns), then the verdict."""
    import textwrap

    lines = []
    for c in d.checks:
        mark = "✓" if c["ok"] else ("!" if c["id"] in WARNINGS else "✗")
        lines += textwrap.wrap(f"{mark} {c['id']}: {c['evidence']}", 100, subsequent_indent="    ")
    tail = f"verdict: {d.verdict}"
    if d.mistakes:
        tail += f" ({', '.join(d.mistakes)})"
    if d.warnings:
        tail += f"; note: {', '.join(d.warnings)}"
    lines.append(tail)
    return "\n".join(lines)


def main_args(args) -> int:
    """``kdbench doctor`` from parsed arguments: print the report (or JSON); 0 correct, 1 otherwise."""
    import json

    if args.classes is not None and args.classes < 2:
        raise KDBenchError("doctor", f"--classes must be at least 2, got {args.classes}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KDBenchError("doctor", "--device cuda: CUDA is not available")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    fn = load_function(args.function)
    d = diagnose(fn, device=args.device, signature=args.signature, classes=args.classes)
    print(json.dumps(d.to_json()) if args.json else render(d))
    return 0 if d.verdict == "correct" else 1
