"""Signing webhook deliveries, and checking a signature on the receiving side.

A delivery carries ``HoodRun-Signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256 keyed with the endpoint's secret over ``f"{t}.{body}"`` (the raw body bytes). The
timestamp is signed with the body so a captured delivery cannot be replayed later: receivers
refuse a ``t`` older than a few minutes (``tolerance``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SIGNATURE_HEADER", "InvalidSignature", "sign", "verify_signature"]

SIGNATURE_HEADER = "HoodRun-Signature"


class InvalidSignature(ValueError):
    """The webhook's signature is missing, malformed, stale or wrong."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``HoodRun-Signature`` header value of ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> int:
    """Check a delivery as its receiver: ``header`` is ``HoodRun-Signature``, ``body`` the raw
    request body (before any JSON parsing). Returns the signed timestamp; raises
    ``InvalidSignature`` when the header is missing or malformed, no ``v1`` matches, or the
    timestamp is more than ``tolerance`` seconds from ``now`` (default: the current time)."""
    if not header:
        raise InvalidSignature("no HoodRun-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature("HoodRun-Signature needs t=<unix seconds> and v1=<hex>")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise InvalidSignature("the signature does not match the body and the secret")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature(f"the signature's timestamp is more than {tolerance:g} s off")
    return timestamp
