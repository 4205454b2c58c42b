"""The admin API's error: rendered as ``{"error": {"code": ..., "message": ...}}`` (or, on
OpenMeter's routes, as a problem) with its HTTP status."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
