"""Errors a user can cause and fix: one clear message naming the problem and the fix."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (paths, configs, data, generators). The message says what to fix.

    Subclasses ``ValueError`` so library callers can catch it as such; the CLI prints it as one line.
    """


class DataError(UserError):
    """An image set, split or audit set is unusable (missing, empty, unreadable, inconsistent)."""


class WeightsError(UserError):
    """Pretrained weights are missing, corrupt or cannot be fetched (e.g. offline)."""


class GeneratorError(UserError):
    """A generator returned the wrong shape, range, dtype or non-finite values."""
