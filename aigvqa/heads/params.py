"""Hyper-parameters checked in one place: a class-level table per head, checked by ``fit``.

Every head class declares ``PARAMETER_CONSTRAINTS``: parameter name -> the list of things
a value may be (any one suffices)::

    PARAMETER_CONSTRAINTS = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "gamma": [Options("scale", "auto"), Interval(Real, 0, None, closed="neither")],
        "pca": [None, Interval(Integral, 1, None), Interval(Real, 0, 1, closed="neither")],
        "amp": [bool],
    }

An entry is ``None`` (the value may be None), a type (``isinstance``; ``bool`` is not an
int or a real here), an ``Interval``, ``Options`` (exact values) or a ``Check`` (a
predicate with its description). ``check_parameters(head)`` runs at the top of ``fit`` and
raises one ``HeadParameterError`` naming the head, the parameter, the bad value and what is
allowed, so a bad value in a head config ends as one message from ``aigvqa train``, not a
traceback from deep inside the training loop.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aigvqa.errors import HeadParameterError


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``numbers.Integral`` or ``numbers.Real``) between ``low`` and
    ``high`` (None: unbounded); ``closed`` says which ends belong to it."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both" | "left" | "right" | "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if isinstance(value, numbers.Real) and math.isnan(value):
            return False
        if self.low is not None and (
            value < self.low or (value == self.low and self.closed in ("right", "neither"))
        ):
            return False
        return (
            self.high is None
            or value < self.high
            or (value == self.high and self.closed in ("left", "both"))
        )

    def describe(self) -> str:
        kind = "an integer" if self.kind is numbers.Integral else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("left", "both") else "("
            right = "]" if self.closed in ("right", "both") else ")"
            return f"{kind} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{kind} {'>=' if self.closed in ('left', 'both') else '>'} {self.low}"
        if self.high is not None:
            return f"{kind} {'<=' if self.closed in ('right', 'both') else '<'} {self.high}"
        return kind


class Options:
    """One of a fixed set of values (strings, usually)."""

    def __init__(self, *values: Any) -> None:
        self.values = tuple(values)

    def accepts(self, value: Any) -> bool:
        try:
            return value in self.values
        except TypeError:  # e.g. an unhashable value against a set-like
            return False

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Check:
    """A predicate on the value, and what it accepts in words."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.description


def sequence_of(
    kind: type | tuple[type, ...],
    description: str,
    *,
    allowed: Iterable | None = None,
    empty: bool = True,
) -> Check:
    """A list or tuple whose items are ``kind`` (and, given ``allowed``, among those)."""
    pool = None if allowed is None else tuple(allowed)

    def ok(value: Any) -> bool:
        if not isinstance(value, list | tuple) or (not empty and not value):
            return False
        return all(
            isinstance(v, kind) and not isinstance(v, bool) and (pool is None or v in pool)
            for v in value
        )

    return Check(ok, description)


def _describe(entry: Any) -> str:
    if entry is None:
        return "None"
    if isinstance(entry, type):
        return {bool: "True or False", str: "a string", dict: "a dict", list: "a list"}.get(
            entry, f"a {entry.__name__}"
        )
    return entry.describe()


def _accepts(entry: Any, value: Any) -> bool:
    if entry is None:
        return value is None
    if isinstance(entry, type):
        if entry is not bool and isinstance(value, bool):
            return False
        return isinstance(value, entry)
    return entry.accepts(value)


def allowed_text(entries: list) -> str:
    """What a constraint list accepts, in words: "None or an integer >= 1"."""
    words = [_describe(e) for e in entries]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def parameter_error(
    head: Any, name: str, value: Any, allowed: str, where: str = ""
) -> HeadParameterError:
    """The one error of a bad hyper-parameter: head, parameter, value, what is allowed."""
    label = head if isinstance(head, str) else type(head).__name__
    error = HeadParameterError(
        f"{label}: {name}={value!r}{where} is not allowed; {name} must be {allowed}"
    )
    error.head, error.parameter, error.value, error.allowed = label, name, value, allowed
    return error


def check_value(head: Any, name: str, value: Any, where: str = "") -> None:
    """Check one value against ``head``'s table entry for ``name``."""
    entries = type(head).PARAMETER_CONSTRAINTS[name]
    if not any(_accepts(e, value) for e in entries):
        raise parameter_error(head, name, value, allowed_text(entries), where)


def check_parameters(head: Any, params: Mapping[str, Any] | None = None) -> None:
    """Check every parameter of ``head`` (``get_params(deep=False)``, or ``params``) against
    its class's ``PARAMETER_CONSTRAINTS``; a parameter without an entry is a bug of the
    class, not of the user, and raises TypeError."""
    table = type(head).PARAMETER_CONSTRAINTS
    values = head.get_params(deep=False) if params is None else params
    missing = sorted(set(values) - set(table))
    if missing:
        raise TypeError(f"{type(head).__name__}.PARAMETER_CONSTRAINTS has no entry for {missing}")
    for name, value in values.items():
        check_value(head, name, value)


def check_head(head: Any, X: Any = None) -> None:
    """What ``fit`` would refuse about ``head``'s configuration, checked without fitting, so
    a bad config fails before any trial starts: the head's own ``check_config(X)`` when it
    has one (its parameters, a classical head's ``search`` grid, a deep head's feature roles
    against the FeatureSet ``X``, a stack's every base), else its ``PARAMETER_CONSTRAINTS``."""
    own = getattr(head, "check_config", None)
    if callable(own):
        own(X)
    elif hasattr(type(head), "PARAMETER_CONSTRAINTS"):
        check_parameters(head)
