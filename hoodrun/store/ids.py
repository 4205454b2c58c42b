"""Public row ids: a type prefix and random base58, e.g. ``key_3LqFz8wYpA2mN7tR``."""

from __future__ import annotations

import secrets

import base58

__all__ = ["new_id"]

_ID_BYTES = 12  # 96 bits: collisions are not a concern at any realistic scale


def new_id(prefix: str) -> str:
    return f"{prefix}_{base58.b58encode(secrets.token_bytes(_ID_BYTES)).decode()}"
