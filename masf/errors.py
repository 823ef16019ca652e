"""Errors that the ``masf`` command reports in one line instead of a traceback (torch- and xarray-free)."""

from __future__ import annotations


class CorruptFileError(ValueError):
    """A file exists but cannot be read (truncated, corrupt or foreign); the message names it and the fix."""
