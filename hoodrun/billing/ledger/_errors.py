"""What the ledger raises: ``LedgerError`` and its subclasses, whose docstrings are their
default messages.

Errors::

    LedgerError          root of what this package raises
    ├── InvalidEntry     an entry to append is not valid (kind, lengths, amount, details)
    ├── LedgerBroken     the chain is broken where an export reads it
    ├── DayNotOver       the day to export can still get entries
    ├── ExportConflict   an export of that day exists and differs
    └── SigningKeyError  the signing key cannot be read or made
"""

from __future__ import annotations

__all__ = [
    "DayNotOver",
    "ExportConflict",
    "InvalidEntry",
    "LedgerBroken",
    "LedgerError",
    "SigningKeyError",
]


class LedgerError(Exception):
    """The ledger refused the operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvalidEntry(LedgerError):
    """The entry cannot be written to the ledger."""


class LedgerBroken(LedgerError):
    """The ledger's chain is broken: run `hoodrun ledger verify`."""


class DayNotOver(LedgerError):
    """The day is not over yet (UTC): it can still get entries."""


class ExportConflict(LedgerError):
    """An export of that day exists and differs from what the ledger holds now."""


class SigningKeyError(LedgerError):
    """The ledger's signing key cannot be read or made."""
