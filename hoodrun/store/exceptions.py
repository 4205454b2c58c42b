"""Errors of the business store.

::

    StoreError                 root of everything the store raises
    ├── StoreUnavailable       the database cannot be reached (down, refused, locked, timed out)
    └── StoreClosed            the Store was used before ``open()`` or after ``aclose()``
"""

from __future__ import annotations

__all__ = ["StoreClosed", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """The business store failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


class StoreClosed(StoreError):
    """The store is not open: use it inside ``async with Store(url)``."""
