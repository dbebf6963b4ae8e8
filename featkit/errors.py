"""featkit's error hierarchy and the one message template users see.

Every error a user can cause is a :class:`FeatkitError` whose ``str`` is a single line saying what is wrong
and what to do. The CLI prints that line (no traceback unless ``--debug``) and exits with code 1.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable
from typing import Any


class FeatkitError(Exception):
    """Base class of every error featkit raises on purpose."""


class ParameterError(FeatkitError, ValueError):
    """An argument outside what a function or option accepts (also a ValueError, as Python code expects)."""


class UnknownNameError(FeatkitError, KeyError):
    """An unknown model, tap, or other registered name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(FeatkitError):
    """Weights that cannot be found, trusted or loaded."""


class StoreError(FeatkitError):
    """A feature store that cannot be written or read as asked."""


class WriteError(FeatkitError):
    """A file that cannot be written (disk full, quota, permissions); what was written before it is intact."""


class Interrupted(BaseException):
    """The user stopped a run (Ctrl-C); the message says what was saved and how to resume.

    Not an error, and like ``KeyboardInterrupt`` not an ``Exception``: an ``except Exception`` in a caller's code
    does not swallow the user's Ctrl-C.
    """


class InputError(FeatkitError):
    """Inputs (folders, list files) that cannot be read as asked."""


class DeviceError(FeatkitError):
    """A device or precision that this machine cannot provide."""


class SearchIndexError(FeatkitError):
    """A similar-image index that cannot be built, read or extended as asked."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for the closest choice, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def unknown(kind: str, name: str, choices: Iterable[str], *, context: str = "", see: str = "") -> UnknownNameError:
    """Build the standard "Unknown tap 'fc_7' for vgg16. Did you mean 'fc7'? See: featkit taps vgg16" error."""
    where = f" for {context}" if context else ""
    hint = f" See: {see}" if see else ""
    return UnknownNameError(f"Unknown {kind} '{name}'{where}.{did_you_mean(name, choices)}{hint}")


def invalid_parameter(name: str, owner: str, expected: str, got: Any, *,
                      error: type[FeatkitError] = ParameterError) -> FeatkitError:
    """scikit-learn's template for a bad argument, the one wording featkit uses for every parameter.

    ``invalid_parameter("pool", "extract", "one of none, avg, max, gem", "average")`` says:
    "The 'pool' parameter of extract must be one of none, avg, max, gem. Got 'average' instead."
    """
    return error(f"The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead.")


def check_choice(name: str, value: Any, choices: Iterable[str], owner: str, *,
                 error: type[FeatkitError] = ParameterError) -> str:
    """``value`` as a plain string if it is one of ``choices`` (an enum's members count as their values)."""
    allowed = [str(c.value) if hasattr(c, "value") else str(c) for c in choices]
    if isinstance(value, str) and str(value) in allowed:
        return str(value)
    raise invalid_parameter(name, owner, f"one of {', '.join(allowed)}", value, error=error)


def check_int(name: str, value: Any, owner: str, *, minimum: int | None = None,
              error: type[FeatkitError] = ParameterError) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``."""
    # a flag, not a narrowing: typeshed's numbers.Integral types no comparison with an int
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if integral and (minimum is None or value >= minimum):
        return int(value)
    raise invalid_parameter(name, owner, "an int" + (f" >= {minimum}" if minimum is not None else ""), value,
                            error=error)


def check_bool(name: str, value: Any, owner: str, *, error: type[FeatkitError] = ParameterError) -> bool:
    """``value`` if it is a bool (numpy's too); 0 and 1 are not taken for False and True."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise invalid_parameter(name, owner, "a bool", value, error=error)


def check_float(name: str, value: Any, owner: str, *, low: float, high: float, closed: str = "neither",
                error: type[FeatkitError] = ParameterError) -> float:
    """``value`` if it is a real number (not a bool) in the range from ``low`` to ``high``.

    ``closed`` says which ends belong to the range: ``neither``, ``left``, ``right`` or ``both``, written in
    the message as scikit-learn does: "(0, inf)", "[0, 1]".
    """
    left, right = closed in ("left", "both"), closed in ("right", "both")
    # a flag, not a narrowing: typeshed's numbers.Real types no comparison with a float
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = real and (low <= value if left else low < value) and (value <= high if right else value < high)
    if ok:
        return float(value)
    span = f"{'[' if left else '('}{_bound(low)}, {_bound(high)}{']' if right else ')'}"
    raise invalid_parameter(name, owner, f"a float in the range {span}", value, error=error)


def _bound(x: float) -> str:
    return "inf" if x == float("inf") else "-inf" if x == float("-inf") else f"{x:g}"
