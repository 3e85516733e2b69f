"""Errors a user can fix.

Every module raises :class:`UserError` (or a subclass) for bad input; the CLI turns it into one
line on stderr and exit code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the file or field, what is wrong and what to do next."""

    exit_code = 2


class SpecError(UserError):
    """A spec file or a command-line override is invalid."""


class DataError(UserError):
    """The dataset folder is missing pieces or holds bad files."""
