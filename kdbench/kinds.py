"""What a setting may be: its kind, range and choices (:class:`Spec`), and the one line that refuses it.

The vocabulary of :mod:`kdbench.schema` (every config key) and of the methods' own parameters
(:mod:`kdbench.methods`): one way to say "a positive integer" or "one of the registered optimizers",
one message for a value that is not. Choices may be a function, read when a value is checked: the
names a registry holds then, plugins included. Imports nothing of kdbench but its errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdbench.errors import ConfigError

#: names that become folder and file names: letters, digits, '.', '_', '-'; not starting with '.'
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_NAME_SAYS = "a plain name (letters, digits, '.', '_', '-'; not starting with '.')"
_PLURAL = {"int": "integers", "number": "numbers", "str": "strings", "bool": "booleans"}


def _show(c: Any) -> str:
    return ("true" if c else "false") if isinstance(c, bool) else str(c)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Spec:
    """One setting: ``kind`` is bool | int | number | str | name | choice | list | map | count_or_fraction | any.

    ``lo``/``hi`` bound numbers (``lo_open``/``hi_open``: the bound itself excluded); ``optional``: null
    allowed; ``also``: other values allowed besides the kind (``auto``); ``choices``: a tuple or a function
    returning the names allowed now (``noun`` names them in the refusal: "unknown optimizer 'adam'");
    ``item``: the spec of a list's items; ``says`` replaces the generated description, ``why`` is added
    after the refused value. ``count_or_fraction``: an integer count >= ``lo``, or a float fraction in
    (0, 1) (``hi_open``) or (0, 1] (or 0.0, where the count 0 is allowed).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    optional: bool = False
    choices: tuple | Callable[[], Sequence] = ()
    item: Spec | None = None
    hi_open: bool = False
    lo_open: bool = False
    also: tuple = ()
    noun: str = "value"
    says: str | None = None
    why: str = ""

    def allowed(self) -> tuple:
        """The choices allowed now (a registry's names are read when asked)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def _range(self) -> str:
        lo = None if self.lo is None else f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is not None and self.hi is not None and not self.lo_open:
            return f"in [{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return " and ".join(p for p in (lo, hi) if p)

    def _what(self) -> str:
        if self.says is not None:
            return self.says
        k = self.kind
        if k == "choice":
            return "one of " + ", ".join(map(_show, self.allowed()))
        if k == "int":
            if self.hi is None and self.lo in (0, 1) and not self.lo_open:
                return "a positive integer" if self.lo == 1 else "a non-negative integer"
            rng = self._range()
            return "an integer" + (f" {rng}" if rng else "")
        if k == "number":
            rng = self._range()
            return "a number" + (f" {rng}" if rng else "")
        if k == "list":
            return f"a list of {_PLURAL.get(self.item.kind, 'values') if self.item else 'values'}"
        if k == "count_or_fraction":
            return f"a count >= {_num(self.lo or 0)} or a fraction in (0, 1{')' if self.hi_open else ']'}"
        return {"bool": "true or false", "str": "a string", "name": _NAME_SAYS, "map": "a mapping",
                "any": "any value"}[k]

    def describe(self) -> str:
        """What the setting may be, in words (``a positive integer or null``)."""
        what = self._what()
        if self.also and self.says is None:
            what = " or ".join(map(_show, self.also)) + " or " + what
        return what + (" or null" if self.optional and self.says is None else "")

    def _in_range(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def refusal(self, v: Any) -> str | None:
        """None when ``v`` is allowed, else what is wrong with it (one line, without the key)."""
        if v is None:
            return None if self.optional or self.kind == "any" else self._must(v)
        if any(v == a and type(v) is type(a) for a in self.also) or self.kind == "any":
            return None
        k = self.kind
        if k == "choice":
            allowed = self.allowed()
            if any(v == c and type(v) is type(c) for c in allowed):
                return None
            return f"unknown {self.noun} {v!r}; allowed: {', '.join(map(_show, allowed))}{self.why}"
        if k == "bool":
            return None if isinstance(v, bool) else self._must(v)
        if k == "str":
            return None if isinstance(v, str) else self._must(v)
        if k == "name":
            return None if isinstance(v, str) and NAME.fullmatch(v) else self._must(v)
        if k == "map":
            return None if hasattr(v, "keys") else self._must(v)
        if k == "list":
            if not isinstance(v, (list, tuple)) or (self.item and any(self.item.refusal(x) for x in v)):
                return self._must(v)
            return None
        is_num = isinstance(v, (int, float)) and not isinstance(v, bool)
        if k == "count_or_fraction":  # a float 0 is the count 0 where that is allowed
            lo = self.lo or 0
            ok = is_num and (v >= lo if isinstance(v, int) else
                             (0 < v or (v == 0 and lo <= 0)) and (v < 1 if self.hi_open else v <= 1))
            return None if ok else self._must(v)
        if not is_num or (k == "int" and not isinstance(v, int)):
            return self._must(v)
        if not math.isfinite(v):
            return f"must be a finite number{' ' + self._range() if self._range() else ''}, got {v!r}{self.why}"
        if self._in_range(v):
            return None
        if k == "number" and self.says is None:  # the right kind, out of range: the range says it
            return f"must be {self._range()}, got {_num(v)}{self.why}"
        return self._must(v)

    def _must(self, v: Any) -> str:
        return f"must be {self.describe()}, got {v!r}{self.why}"

    def check(self, key: str, v: Any) -> Any:
        """``v``, or a one-line :class:`ConfigError` naming ``key`` and what it may be."""
        problem = self.refusal(v)
        if problem is not None:
            raise ConfigError(key, problem)
        return v


B, S, ANY = Spec("bool"), Spec("str"), Spec("any")
S0 = Spec("str", optional=True)


def I(lo: float | None = None, hi: float | None = None, optional: bool = False, **kw: Any) -> Spec:  # noqa: E743
    """An integer (bounds inclusive)."""
    return Spec("int", lo, hi, optional, **kw)


def N(lo: float | None = None, hi: float | None = None, optional: bool = False, **kw: Any) -> Spec:
    """A finite number (bounds inclusive unless ``lo_open``/``hi_open``)."""
    return Spec("number", lo, hi, optional, **kw)


def C(*choices: Any, noun: str = "value") -> Spec:
    """One of fixed ``choices``."""
    return Spec("choice", choices=tuple(choices), noun=noun)


def R(names: Callable[[], Sequence], noun: str) -> Spec:
    """One of the names a registry holds when the value is checked (``names()``)."""
    return Spec("choice", choices=names, noun=noun)


def like(default: Any) -> Spec:
    """The kind of a default value, without a range (an undeclared parameter of a plugin)."""
    if isinstance(default, bool):
        return B
    if isinstance(default, int):
        return I()
    if isinstance(default, float):
        return N()
    if isinstance(default, str):
        return S
    return ANY


def param(default: Any, spec: Spec) -> Any:
    """A dataclass field with its :class:`Spec` (a method's parameter: ``tau: float = param(4.0, N(0, lo_open=True))``)."""
    return field(default=default, metadata={"spec": spec})
