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


class InfeasibleError(SpecError):
    """A candidate that cannot be built or trained as asked (too deep for the image size, too many parameters).

    ``kind`` names the rule it breaks, so that searches can count rejected draws by reason.
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class DataError(UserError):
    """The dataset folder is missing pieces or holds bad files."""
