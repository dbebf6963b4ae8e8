"""featkit's error hierarchy and the one message template users see.

Every error a user can cause is a :class:`FeatkitError` whose ``str`` is a single line saying what is wrong
and what to do. The CLI prints that line (no traceback unless ``--debug``) and exits with code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatkitError(Exception):
    """Base class of every error featkit raises on purpose."""


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
